//! Apps in the protocol and the tools (issue 21, first part): a remote
//! member joins an app with `COHORT_APP` (or the SDK's `app`), a worker
//! without one is in app `worker`; `MemberInfo.app`, `cohortctl ls` (an APP
//! column, grouped) and `--json`; `app:APP` reaches every member of the
//! app and only them, `random:app:APP` one of them.

use cohort::{Code, MemberBuilder, Role, Target};
use cohort_e2e::{Master, Proc, bin, cohortctl, cohortctl_raw, eventually_async, wait_ready};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_join_apps_and_app_targets_reach_only_their_members() {
    // ClusterReady waits for web's three members, whatever else joins.
    let master = Master::start(&[
        "--agent-count",
        "0",
        "--worker-count",
        "0",
        "--expect-app",
        "web=3",
    ]);
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
    // A cohort-worker in no app given (app worker): it forwards its log
    // lines, as web-3 does.
    let _other = Proc::spawn("cohort-worker other-1", {
        let mut cmd = Command::new(bin("cohort-worker"));
        cmd.env(cohort::env::MASTER, &url)
            .env(cohort::env::NAME, "other-1");
        cmd
    });
    let members = wait_ready(
        &master.addr,
        &["other-1", "plain", "queue-1", "web-1", "web-2", "web-3"],
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
    assert_eq!(app_of("other-1"), "worker");

    let info: serde_json::Value =
        serde_json::from_str(&cohortctl(&master.addr, &["info", "--json"])).expect("json");
    assert_eq!(info["cluster_ready"], true, "web's three are ready: {info}");

    // cohortctl: the APP column, grouped, and `app` in --json.
    let table = cohortctl(&master.addr, &["ls"]);
    let apps: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        apps,
        ["queue", "web", "web", "web", "worker", "worker"],
        "{table}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&cohortctl(&master.addr, &["ls", "--json"])).expect("json");
    let web3 = json
        .as_array()
        .expect("array")
        .iter()
        .find(|m| m["name"] == "web-3")
        .expect("web-3");
    assert_eq!(web3["app"], "web");

    // app:web reaches web's three members and nobody else.
    let sent = cohortctl(&master.addr, &["send", "app:web", "hello"]);
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

    // A request goes to one member: a whole app is refused.
    let many = plain
        .request(
            Target::App("web".into()),
            "ping",
            "{}",
            Duration::from_secs(5),
        )
        .await
        .expect_err("a request to a whole app");
    assert_eq!(many.code(), Code::InvalidArgument, "{many}");

    // cohortctl logs app:APP: the lines of that app's members only (web-3
    // and other-1 are the cohort-workers, which forward theirs).
    for (app, only) in [("web", "web-3 "), ("worker", "other-1 ")] {
        let which = format!("app:{app}");
        let lines = cohort_e2e::eventually(&format!("lines under {which}"), || {
            let out = cohortctl(&master.addr, &["logs", &which]);
            (!out.trim().is_empty()).then_some(out)
        });
        assert!(
            lines.lines().all(|l| l.starts_with(only)),
            "{which}: {lines}"
        );
    }

    // An agent is in no app; an app name must be one.
    let agent = MemberBuilder::new(&url, Role::Agent)
        .app("web")
        .join()
        .await
        .expect_err("an agent in an app");
    assert_eq!(agent.code(), Code::InvalidArgument, "{agent}");
    for app in ["has space".to_string(), "a".repeat(64)] {
        let bad = MemberBuilder::new(&url, Role::Worker)
            .app(app.clone())
            .join()
            .await
            .expect_err("a bad app name");
        assert_eq!(bad.code(), Code::InvalidArgument, "{app}: {bad}");
        assert!(bad.to_string().contains("letters, digits"), "{bad}");
    }
}

/// A remote member under a supervisor of its own (systemd's
/// `Restart=always`, a Kubernetes Deployment): started again under the
/// same name whenever it exits, while `respawn` holds.
struct Supervised {
    respawn: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    pids: Arc<std::sync::Mutex<Vec<u32>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Supervised {
    fn start(url: &str, name: &str, app: &str) -> Supervised {
        use std::sync::atomic::AtomicBool;
        let (respawn, stop) = (
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicBool::new(false)),
        );
        let pids = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (url, name, app) = (url.to_string(), name.to_string(), app.to_string());
        let (r, s, p) = (respawn.clone(), stop.clone(), pids.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let mut cmd = Command::new(bin("cohort-worker"));
                cmd.env(cohort::env::MASTER, &url)
                    .env(cohort::env::NAME, &name)
                    .env(cohort::env::APP, &app);
                let mut proc = Proc::spawn(&name, cmd);
                p.lock().expect("pids").push(proc.child.id());
                while !s.load(Ordering::SeqCst)
                    && proc.wait_exit(Duration::from_millis(50)).is_none()
                {}
                if !r.load(Ordering::SeqCst) {
                    while !s.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                // The Proc is killed and reaped on drop.
            }
        });
        Supervised {
            respawn,
            stop,
            pids,
            thread: Some(thread),
        }
    }

    fn pids(&self) -> Vec<u32> {
        self.pids.lock().expect("pids").clone()
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_an_app_waits_for_each_remote_member_to_come_back() {
    let master = Master::start(&[
        "--agent-count",
        "0",
        "--worker-count",
        "0",
        "--start-timeout",
        "5s",
    ]);
    let url = master.url();
    let web: Vec<Supervised> = ["web-1", "web-2", "web-3"]
        .iter()
        .map(|n| Supervised::start(&url, n, "web"))
        .collect();
    let (_other, _) = member(&url, "queue-1", "queue").await;
    wait_ready(&master.addr, &["queue-1", "web-1", "web-2", "web-3"]).await;
    let queue_before = cohort_e2e::members(&master.addr).await;

    // While it rolls, at most one web member is missing at any moment.
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let fewest = Arc::new(AtomicUsize::new(3));
    let sampler = {
        let (addr, watching, fewest) = (master.addr.clone(), watching.clone(), fewest.clone());
        tokio::spawn(async move {
            let ready = cohort_proto::pb::MemberState::Ready as i32;
            while watching.load(Ordering::SeqCst) {
                let n = cohort_e2e::members(&addr)
                    .await
                    .iter()
                    .filter(|m| m.app == "web" && m.state == ready)
                    .count();
                fewest.fetch_min(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let addr = master.addr.clone();
    let rolled =
        tokio::task::spawn_blocking(move || cohortctl(&addr, &["restart", "app:web", "--rolling"]))
            .await
            .expect("cohortctl");
    assert!(rolled.contains("restarted"), "{rolled}");
    watching.store(false, Ordering::SeqCst);
    sampler.await.expect("sampler");
    assert!(
        fewest.load(Ordering::SeqCst) >= 2,
        "two web members were down at once"
    );
    for w in &web {
        assert_eq!(
            w.pids().len(),
            2,
            "each web member restarted once: {:?}",
            w.pids()
        );
    }
    let after = wait_ready(&master.addr, &["queue-1", "web-1", "web-2", "web-3"]).await;
    let instance = |ms: &[cohort_proto::pb::MemberInfo], n: &str| {
        ms.iter()
            .find(|m| m.name == n)
            .map(|m| m.instance_id.clone())
    };
    assert_eq!(
        instance(&queue_before, "queue-1"),
        instance(&after, "queue-1"),
        "another app is not touched"
    );

    // web-2's supervisor gives up: the roll stops there, naming it, and
    // web-3 is not touched.
    web[1].respawn.store(false, Ordering::SeqCst);
    let web3 = web[2].pids();
    let (code, _, err) = cohortctl_raw(&master.addr, &["restart", "app:web", "--rolling"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("stopped at web-2") && err.contains("1 of 3 restarted"),
        "{err}"
    );
    assert_eq!(web[2].pids(), web3, "the roll stopped before web-3");

    // Drain by app: every member of the app, no other.
    cohortctl(&master.addr, &["drain", "app:queue"]);
    eventually_async("queue-1 drained", || async {
        let ms = cohort_e2e::members(&master.addr).await;
        let draining = cohort_proto::pb::MemberState::Draining as i32;
        ms.iter()
            .any(|m| m.name == "queue-1" && m.state == draining)
            .then_some(())
    })
    .await;
}
