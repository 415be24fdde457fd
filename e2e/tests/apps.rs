//! Apps in the protocol and the tools (issue 21, first part): a remote
//! member joins an app with `COHORT_APP` (or the SDK's `app`), a worker
//! without one is in app `worker`; `MemberInfo.app`, `cohortctl ls` (an APP
//! column, grouped) and `--json`; `app:APP` reaches every member of the
//! app and only them, `random:app:APP` one of them.

use cohort::{Code, MemberBuilder, Role, Target};
use cohort_e2e::{Master, Proc, bin, eventually_async, wait_ready};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// An SDK member of `app` (empty: none given) counting what it receives.
async fn member(url: &str, name: &str, app: &str) -> (cohort::Member, Arc<AtomicUsize>) {
    let mut b = MemberBuilder::new(url, Role::Worker).name(name);
    if !app.is_empty() {
        b = b.app(app);
    }
    let m = b.join().await.expect("join");
    m.ready().await.expect("ready");
    let got = Arc::new(AtomicUsize::new(0));
    let mut all = m.incoming(1024);
    let count = got.clone();
    tokio::spawn(async move {
        while all.recv().await.is_some() {
            count.fetch_add(1, Ordering::SeqCst);
        }
    });
    (m, got)
}

fn ctl(addr: &str, args: &[&str]) -> String {
    let out = Command::new(bin("cohortctl"))
        .env(cohort::env::MASTER, addr)
        .args(args)
        .output()
        .expect("cohortctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_apps_and_app_targets_reach_only_their_members() {
    let master = Master::start(&["--agent-count", "0", "--worker-count", "0"]);
    let url = master.url();
    let _web3 = Proc::spawn("cohort-worker web-3", {
        let mut cmd = Command::new(bin("cohort-worker"));
        cmd.env(cohort::env::MASTER, &url)
            .env(cohort::env::NAME, "web-3")
            .env(cohort::env::APP, "web");
        cmd
    });
    let (_w1, web1) = member(&url, "web-1", "web").await;
    let (_w2, web2) = member(&url, "web-2", "web").await;
    let (_q1, queue1) = member(&url, "queue-1", "queue").await;
    let (plain, plain_got) = member(&url, "plain", "").await;
    let members = wait_ready(
        &master.addr,
        &["plain", "queue-1", "web-1", "web-2", "web-3"],
    )
    .await;
    let app_of = |name: &str| {
        members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.app.clone())
            .unwrap_or_default()
    };
    assert_eq!(app_of("web-3"), "web", "COHORT_APP");
    assert_eq!(app_of("web-1"), "web");
    assert_eq!(app_of("queue-1"), "queue");
    assert_eq!(
        app_of("plain"),
        "worker",
        "a worker without an app is in app worker"
    );

    // cohortctl: the APP column, grouped, and `app` in --json.
    let table = ctl(&master.addr, &["ls"]);
    let apps: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(apps, ["queue", "web", "web", "web", "worker"], "{table}");
    let json: serde_json::Value =
        serde_json::from_str(&ctl(&master.addr, &["ls", "--json"])).expect("json");
    let web3 = json
        .as_array()
        .expect("array")
        .iter()
        .find(|m| m["name"] == "web-3")
        .expect("web-3");
    assert_eq!(web3["app"], "web");

    // app:web reaches web's three members and nobody else.
    let sent = ctl(&master.addr, &["send", "app:web", "hello"]);
    assert_eq!(sent.trim(), "delivered to 3");
    eventually_async("web-1 and web-2 got it", || async {
        (web1.load(Ordering::SeqCst) == 1 && web2.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    // random:app:queue is always queue-1; random:app:web never leaves web.
    for _ in 0..6 {
        plain
            .send(Target::RandomApp("queue".into()), "job", "x")
            .await
            .expect("to a queue member");
        plain
            .send(Target::RandomApp("web".into()), "job", "x")
            .await
            .expect("to a web member");
    }
    eventually_async("the six jobs reached queue-1", || async {
        (queue1.load(Ordering::SeqCst) == 6).then_some(())
    })
    .await;
    // web-1 and web-2 each had the broadcast; round-robin over web-1..3
    // gives each of them two of the six.
    eventually_async("web's jobs stayed in web", || async {
        (web1.load(Ordering::SeqCst) == 3 && web2.load(Ordering::SeqCst) == 3).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        plain_got.load(Ordering::SeqCst),
        0,
        "app targets never reach app worker"
    );
    let none = plain
        .send(Target::RandomApp("nobody".into()), "job", "x")
        .await
        .expect_err("no such app");
    assert_eq!(none.code(), Code::Unavailable, "{none}");
    assert!(none.to_string().contains("app nobody"), "{none}");

    // An agent is in no app; an app name must be one.
    let agent = MemberBuilder::new(&url, Role::Agent)
        .app("web")
        .join()
        .await
        .expect_err("an agent in an app");
    assert_eq!(agent.code(), Code::InvalidArgument, "{agent}");
    let bad = MemberBuilder::new(&url, Role::Worker)
        .app("has space")
        .join()
        .await
        .expect_err("a bad app name");
    assert!(bad.to_string().contains("letters, digits"), "{bad}");
}
