//! Several apps under one master from one file, as a PM2 ecosystem file
//! (issue 21): each app's command, env, env_file, cwd and listeners; start
//! order with a one-shot job, a failure that blocks its dependants, reverse
//! shutdown; reload (and SIGHUP) touching only what changed, refusing a
//! broken file or a key that cannot change. Apps are shell one-liners run
//! with `join = "wrap"` (under `cohort-worker --exec`) and the demo worker.

use cohort_e2e::{
    Load, Master, Proc, alive, bin, cohortctl, cohortctl_raw, control, eventually_async, http,
    http_addr, kill, members, next_event, wait_ready, watch,
};
use cohort_proto::pb;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// A wrapped payload that writes its environment (and working directory)
/// to `$D/NAME.env`, then every message it is delivered to `$D/NAME.msgs`.
const DUMP: &str = r#"env > "$D/$COHORT_NAME.env.tmp"; echo "CWD=$(pwd)" >> "$D/$COHORT_NAME.env.tmp"; mv "$D/$COHORT_NAME.env.tmp" "$D/$COHORT_NAME.env"; exec cat <&$COHORT_CHANNEL_FD >> "$D/$COHORT_NAME.msgs""#;

/// A wrapped payload that notes its start and its SIGTERM in `$D/order`.
fn noting(what: &str) -> String {
    format!(
        r#"trap 'echo "stop {what}" >> "$D/order"; exit 0' TERM; echo "start {what}" >> "$D/order"; while :; do sleep 0.1; done"#
    )
}

/// The part of every file here: the gRPC and HTTP addresses.
const HEAD: &str = r#"
listen = "127.0.0.1:0"
[[listener]]
name = "http"
addr = "127.0.0.1:0"
"#;

/// A test's directory: the config file, the payloads' output (`$D`), the
/// master's temp directory.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("tmp")).expect("tmp");
        Setup { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> PathBuf {
        self.path("cohort.toml")
    }

    /// Writes the config file: [`HEAD`] and `apps`.
    fn write(&self, apps: &str) {
        std::fs::write(self.config(), format!("{HEAD}{apps}")).expect("write config");
    }

    /// Starts `cohort-master --config FILE` with `D`, `MASTER_SAYS` and
    /// `SHARED` in its environment.
    fn master(&self) -> Master {
        let mut cmd = Command::new(bin("cohort-master"));
        cmd.arg("--config")
            .arg(self.config())
            .env("TMPDIR", self.path("tmp"))
            .env("D", self.dir.path())
            .env("MASTER_SAYS", "hello")
            .env("SHARED", "master");
        let mut proc = Proc::spawn("cohort-master", cmd);
        let line = proc.wait_line("READY master", |l| l.starts_with("READY master "));
        let addr = line.trim_start_matches("READY master ").to_string();
        Master { proc, addr }
    }

    /// What payload `name` wrote to `$D/name.env`, once it did.
    async fn env_of(&self, name: &str) -> HashMap<String, String> {
        let path = self.path(&format!("{name}.env"));
        let text = eventually_async(&format!("{name} writes its env"), || async {
            std::fs::read_to_string(&path).ok()
        })
        .await;
        text.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The messages payload `name` got, with action `action`.
    fn got(&self, name: &str, action: &str) -> usize {
        let text = std::fs::read_to_string(self.path(&format!("{name}.msgs"))).unwrap_or_default();
        let want = format!("\"action\":\"{action}\"");
        text.lines().filter(|l| l.contains(&want)).count()
    }
}

/// A TOML multi-line literal string: the payloads hold quotes of both kinds.
fn lit(s: &str) -> String {
    assert!(!s.contains("'''"));
    format!("'''{s}'''")
}

async fn send(addr: &str, target: pb::target::Kind, action: &str) -> u32 {
    control(addr)
        .await
        .send(pb::SendRequest {
            action: action.into(),
            target: Some(pb::Target { kind: Some(target) }),
            ..Default::default()
        })
        .await
        .expect("Send")
        .into_inner()
        .delivered
}

/// The member list once exactly `n` members are in `state`.
async fn in_state(addr: &str, state: pb::MemberState, n: usize) -> Vec<pb::MemberInfo> {
    let what = format!("{n} members {}", state.as_str_name());
    eventually_async(&what, || async {
        let ms = members(addr).await;
        let count = ms.iter().filter(|m| m.state == state as i32).count();
        (count == n).then_some(ms)
    })
    .await
}

/// Pids by member name.
async fn pids(addr: &str) -> HashMap<String, u32> {
    members(addr)
        .await
        .into_iter()
        .map(|m| (m.name, m.pid))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_app_gets_its_own_env_cwd_and_listeners_and_app_targets_stay_inside() {
    let s = Setup::new();
    std::fs::write(
        s.path("web.env"),
        "# web's\nGREETING=from-file\nFROM_FILE=yes\n",
    )
    .expect("env file");
    std::fs::create_dir(s.path("cron")).expect("cron dir");
    s.write(&format!(
        r#"
[[app]]
name = "web"
command = ["sh", "-c", {dump}]
join = "wrap"
count = 2
env_file = {env_file:?}
env = {{ GREETING = "from-table", SHARED = "web" }}
listeners = ["http"]

[[app]]
name = "queue"
command = ["sh", "-c", {dump}]
join = "wrap"
count = 2
env = {{ QUEUE = "1" }}
listeners = []

[[app]]
name = "cron"
command = ["sh", "-c", {dump}]
join = "wrap"
cwd = {cron:?}
"#,
        dump = lit(DUMP),
        env_file = s.path("web.env"),
        cron = s.path("cron"),
    ));
    let mut master = s.master();
    let names = ["cron-1", "queue-1", "queue-2", "web-1", "web-2"];
    let listed = wait_ready(&master.addr, &names).await;
    for m in &listed {
        let app = m.name.split('-').next().unwrap_or_default();
        assert_eq!((m.app.as_str(), m.local), (app, true), "{}", m.name);
    }
    let json: serde_json::Value =
        serde_json::from_str(&cohortctl(&master.addr, &["ls", "--json"])).expect("ls --json");
    let apps: Vec<(&str, &str)> = json
        .as_array()
        .expect("array")
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap_or(""),
                m["app"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        apps,
        [
            ("cron-1", "cron"),
            ("queue-1", "queue"),
            ("queue-2", "queue"),
            ("web-1", "web"),
            ("web-2", "web")
        ]
    );

    // The child's environment: the master's, then env_file, then env, then
    // COHORT_*; listeners only those named; the app's working directory.
    let web = s.env_of("web-1").await;
    let get = |env: &HashMap<String, String>, k: &str| env.get(k).cloned().unwrap_or_default();
    assert_eq!(get(&web, "GREETING"), "from-table");
    assert_eq!(get(&web, "FROM_FILE"), "yes");
    assert_eq!(get(&web, "SHARED"), "web");
    assert_eq!(get(&web, "MASTER_SAYS"), "hello");
    assert_eq!(
        (get(&web, "COHORT_APP"), get(&web, "COHORT_NAME")),
        ("web".into(), "web-1".into())
    );
    assert_eq!(get(&web, "LISTEN_FDNAMES"), "http");
    let queue = s.env_of("queue-2").await;
    assert_eq!(get(&queue, "QUEUE"), "1");
    assert_eq!(get(&queue, "SHARED"), "master");
    assert_eq!(get(&queue, "COHORT_APP"), "queue");
    for k in ["GREETING", "FROM_FILE", "LISTEN_FDS"] {
        assert!(!queue.contains_key(k), "queue-2 has {k}");
    }
    let cron = s.env_of("cron-1").await;
    assert_eq!(get(&cron, "CWD"), s.path("cron").to_string_lossy());
    assert!(!cron.contains_key("QUEUE") && !cron.contains_key("GREETING"));
    assert_eq!(get(&cron, "MASTER_SAYS"), "hello");

    // app:web reaches web's two members and no one else; random within
    // queue alternates between its two.
    assert_eq!(
        send(&master.addr, pb::target::Kind::App("web".into()), "hello").await,
        2
    );
    for _ in 0..6 {
        assert_eq!(
            send(
                &master.addr,
                pb::target::Kind::RandomApp("queue".into()),
                "job"
            )
            .await,
            1
        );
    }
    eventually_async("web's members and queue's get their messages", || async {
        let got = (
            s.got("web-1", "hello"),
            s.got("web-2", "hello"),
            s.got("queue-1", "job"),
            s.got("queue-2", "job"),
        );
        (got == (1, 1, 3, 3)).then_some(())
    })
    .await;
    for name in ["queue-1", "queue-2", "cron-1"] {
        assert_eq!(s.got(name, "hello"), 0, "{name}");
    }
    for name in ["web-1", "web-2", "cron-1"] {
        assert_eq!(s.got(name, "job"), 0, "{name}");
    }
    // Scale by app; a count no host can run and an unknown app are refused
    // with a reason, and nothing else changes.
    for (app, count, code, want) in [
        (
            "cron",
            4_000_000_000,
            tonic::Code::InvalidArgument,
            "at most 4096 local members",
        ),
        (
            "nope",
            1,
            tonic::Code::NotFound,
            "no app named nope on this master (apps: agent, worker, web, queue, cron)",
        ),
    ] {
        let refused = control(&master.addr)
            .await
            .scale(pb::ScaleRequest {
                app: app.into(),
                count,
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), code);
        assert!(refused.message().contains(want), "{}", refused.message());
    }
    cohortctl(&master.addr, &["scale", "cron", "2"]);
    let listed = wait_ready(
        &master.addr,
        &["cron-1", "cron-2", "queue-1", "queue-2", "web-1", "web-2"],
    )
    .await;
    let pids: Vec<u32> = listed.iter().map(|m| m.pid).collect();
    master.stop();
    for pid in pids {
        assert!(!alive(pid), "pid {pid} outlived the master");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_job_goes_first_its_failure_blocks_what_depends_on_it_and_shutdown_reverses() {
    let s = Setup::new();
    let order = || std::fs::read_to_string(s.path("order")).unwrap_or_default();
    // migrate exits with the status in $D/status, after a second.
    let migrate = r#"echo "start migrate" >> "$D/order"; sleep 1; echo "end migrate" >> "$D/order"; exit $(cat "$D/status")"#;
    std::fs::write(s.path("status"), "3").expect("status");
    s.write(&format!(
        r#"
[[app]]
name = "api"
command = ["sh", "-c", {api}]
join = "wrap"
depends_on = ["web"]

[[app]]
name = "web"
command = ["sh", "-c", {web}]
join = "wrap"
depends_on = ["migrate"]

[[app]]
name = "migrate"
command = ["sh", "-c", {migrate}]
restart = "never"
"#,
        api = lit(&noting("api")),
        web = lit(&noting("web")),
        migrate = lit(migrate),
    ));
    let mut master = s.master();
    // migrate exits 3: it is FAILED, and web and api never start.
    let state = |m: &pb::MemberInfo| pb::MemberState::try_from(m.state).unwrap_or_default();
    let listed = in_state(&master.addr, pb::MemberState::Failed, 3).await;
    let why: HashMap<&str, &str> = listed
        .iter()
        .map(|m| (m.name.as_str(), m.last_exit.as_str()))
        .collect();
    assert_eq!(why["migrate-1"], "exited with status 3 (restart = never)");
    assert!(
        why["web-1"].starts_with("not started: migrate, which it depends on, FAILED"),
        "{}",
        why["web-1"]
    );
    assert!(
        why["api-1"].starts_with("not started: web, which it depends on, cannot start"),
        "{}",
        why["api-1"]
    );
    assert_eq!(order(), "start migrate\nend migrate\n");
    let ls = cohortctl(&master.addr, &["ls"]);
    assert!(ls.contains("web-1: not started: migrate"), "{ls}");
    // Fixed, and run again: then web starts, then api.
    std::fs::write(s.path("status"), "0").expect("status");
    cohortctl(&master.addr, &["restart", "migrate-1"]);
    let after = in_state(&master.addr, pb::MemberState::Ready, 2).await;
    let migrate1 = after
        .iter()
        .find(|m| m.name == "migrate-1")
        .expect("migrate-1 listed");
    assert_eq!(
        (state(migrate1), migrate1.last_exit.as_str()),
        (pb::MemberState::Gone, "exited with status 0")
    );
    assert_eq!(
        order(),
        "start migrate\nend migrate\nstart migrate\nend migrate\nstart web\nstart api\n"
    );
    // Shutdown: api (which depends on web) stops before web does.
    let pids: Vec<u32> = after.iter().map(|m| m.pid).filter(|p| *p > 0).collect();
    master.stop();
    assert!(
        order().ends_with("start api\nstop api\nstop web\n"),
        "{}",
        order()
    );
    for pid in pids {
        assert!(!alive(pid), "pid {pid} outlived the master");
    }
}

/// web (the demo worker on the shared listener), queue and cron.
fn three_apps(web_version: &str, extra: &str) -> String {
    format!(
        r#"
[[app]]
name = "web"
command = ["cohort-worker"]
count = 2
env = {{ VERSION = "{web_version}" }}

[[app]]
name = "queue"
command = ["sh", "-c", "exec sleep 600"]
join = "wrap"
listeners = []
{extra}
"#
    )
}

const CRON: &str = r#"
[[app]]
name = "cron"
command = ["sh", "-c", "exec sleep 600"]
join = "wrap"
listeners = []
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rolls_only_what_changed_and_refuses_a_broken_file_without_touching_anything() {
    let s = Setup::new();
    s.write(&three_apps("1", CRON));
    let mut master = s.master();
    let addr = master.addr.clone();
    wait_ready(&addr, &["cron-1", "queue-1", "web-1", "web-2"]).await;
    let before = pids(&addr).await;

    // web's env changes: only web rolls, with no failed HTTP request.
    s.write(&three_apps("2", CRON));
    let load = Load::start(&http_addr(&addr).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = cohortctl(&addr, &["reload"]);
    let (ok, failures) = load.stop();
    assert!(
        failures.is_empty() && ok > 0,
        "{} failed of {}: {failures:?}",
        failures.len(),
        ok + failures.len() as u32
    );
    for line in [
        "web    restarted  env changed",
        "queue  unchanged",
        "cron   unchanged",
    ] {
        assert!(
            out.lines().any(|l| l.trim_end() == line),
            "{line:?} in\n{out}"
        );
    }
    let after = pids(&addr).await;
    for name in ["web-1", "web-2"] {
        assert_ne!(before[name], after[name], "{name} kept its pid");
        assert!(!alive(before[name]), "{name}'s old instance still runs");
    }
    for name in ["queue-1", "cron-1"] {
        assert_eq!(before[name], after[name], "{name} was touched");
    }

    // An app added, one removed, a count changed.
    s.write(&three_apps(
        "2",
        "count = 2\n[[app]]\nname = \"extra\"\ncommand = [\"cohort-worker\"]\nlisteners = []\n",
    ));
    let out = cohortctl(&addr, &["reload"]);
    for want in [
        "cron   stopped",
        "extra  started",
        "queue  scaled     count 1 → 2",
        "web    unchanged",
    ] {
        assert!(out.contains(want), "{want:?} in\n{out}");
    }
    let now = {
        wait_ready(&addr, &["extra-1", "queue-1", "queue-2", "web-1", "web-2"]).await;
        pids(&addr).await
    };
    assert!(!alive(before["cron-1"]), "cron-1 still runs");
    for name in ["web-1", "web-2"] {
        assert_eq!(after[name], now[name], "{name} was touched");
    }
    assert_eq!(before["queue-1"], now["queue-1"]);

    // Broken files: nothing changes, and the error says why.
    let valid = std::fs::read_to_string(s.config()).expect("read");
    let broken = [
        (
            format!("{valid}\n[[app]\n"),
            "nothing changed: the configuration is refused",
        ),
        (
            format!(
                "{valid}\n[[app]]\nname = \"a\"\ncommand = [\"x\"]\ndepends_on = [\"b\"]\n[[app]]\nname = \"b\"\ncommand = [\"x\"]\ndepends_on = [\"a\"]\n"
            ),
            "is a cycle: a → b → a",
        ),
        (
            valid.replace("127.0.0.1:0\"\n[[listener]]", "127.0.0.1:1\"\n[[listener]]"),
            "listen cannot change while the master runs",
        ),
    ];
    for (text, want) in broken {
        std::fs::write(s.config(), &text).expect("write");
        let (code, _, err) = cohortctl_raw(&addr, &["reload"]);
        assert!(code == Some(1) && err.contains(want), "{want:?} in {err}");
        assert_eq!(pids(&addr).await, now, "a refused reload changed something");
    }
    // SIGHUP: a broken file is a log line; a good one applies.
    master.proc.signal("HUP");
    eventually_async("the master logs the refused SIGHUP", || async {
        let err = master.proc.stderr();
        err.lines()
            .any(|l| l.contains("reload refused") && l.contains("listen cannot change"))
            .then_some(())
    })
    .await;
    std::fs::write(
        s.config(),
        valid.replace("name = \"extra\"", "name = \"extra\"\ncount = 2"),
    )
    .expect("write");
    master.proc.signal("HUP");
    wait_ready(
        &addr,
        &["extra-1", "extra-2", "queue-1", "queue-2", "web-1", "web-2"],
    )
    .await;
    let last = pids(&addr).await;
    master.stop();
    for (name, pid) in last {
        assert!(!alive(pid), "{name} outlived the master");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_failing_its_health_probe_is_replaced_while_the_shared_port_fails_no_request() {
    let s = Setup::new();
    s.write(
        r#"
[[app]]
name = "web"
command = ["cohort-worker", "--http", "127.0.0.1:0", "--demo-faults"]
count = 2
listeners = ["http"]
health = { http = "/healthz", interval = "200ms", timeout = "1s", failures = 3 }
"#,
    );
    let mut master = s.master();
    let addr = master.addr.clone();
    let before = wait_ready(&addr, &["web-1", "web-2"]).await;
    let own = before[0]
        .labels
        .get("http")
        .cloned()
        .expect("web-1 reports its address");
    let mut events = watch(&addr).await;
    let load = Load::start(&http_addr(&addr).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // web-1's own /healthz fails from now on: after 3 probes it is
    // drained and replaced; web-2 and the shared port carry on.
    let (code, _) = http(&own, "POST", "/sick").expect("POST /sick");
    assert_eq!(code, 200);
    let reason = loop {
        let e = next_event(&mut events).await;
        let name = e
            .member
            .as_ref()
            .map(|m| m.name.as_str())
            .unwrap_or_default();
        if e.kind == pb::EventKind::Draining as i32 && name == "web-1" {
            break e.reason;
        }
    };
    assert!(
        reason.starts_with("health probe failed 3 times in a row: GET http://")
            && reason.ends_with("/healthz: HTTP 503"),
        "{reason}"
    );
    let after = eventually_async("web-1 is replaced and ready", || async {
        let ms = members(&addr).await;
        let web1 = ms.iter().find(|m| m.name == "web-1")?;
        (web1.pid != before[0].pid && web1.state == pb::MemberState::Ready as i32)
            .then(|| ms.clone())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failures) = load.stop();
    assert!(
        failures.is_empty() && ok > 0,
        "{} failed of {}: {failures:?}",
        failures.len(),
        ok + failures.len() as u32
    );
    let web1 = after.iter().find(|m| m.name == "web-1").expect("web-1");
    assert!(
        web1.last_exit.contains("health probe failed 3 times"),
        "{}",
        web1.last_exit
    );
    let ls = cohortctl(&addr, &["ls", "--json"]);
    assert!(ls.contains("health probe failed 3 times"), "{ls}");
    let web2 = after.iter().find(|m| m.name == "web-2").expect("web-2");
    assert_eq!(web2.pid, before[1].pid, "web-2 was touched");
    eventually_async("the sick instance exits", || async {
        (!alive(before[0].pid)).then_some(())
    })
    .await;
    master.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_never_passes_its_probe_is_not_ready_and_holds_cluster_ready() {
    let s = Setup::new();
    let apps = |stuck: &str| {
        format!(
            r#"
[[app]]
name = "fine"
command = ["cohort-worker"]
listeners = []
health = {{ exec = ["sh", "-c", "test -n \"$COHORT_PID\" && test \"$COHORT_APP\" = fine"], interval = "100ms" }}

[[app]]
name = "stuck"
command = ["cohort-worker"]
listeners = []
health = {{ exec = ["sh", "-c", "exit {stuck}"], interval = "100ms" }}
"#
        )
    };
    s.write(&apps("1"));
    let mut master = s.master();
    let addr = master.addr.clone();
    let state_of = |ms: &[pb::MemberInfo], name: &str| {
        ms.iter()
            .find(|m| m.name == name)
            .and_then(|m| pb::MemberState::try_from(m.state).ok())
    };
    eventually_async("fine-1 passes its probe", || async {
        let ms = members(&addr).await;
        (state_of(&ms, "fine-1") == Some(pb::MemberState::Ready)).then_some(())
    })
    .await;
    // stuck-1 joined and said it is ready; its probe says otherwise.
    eventually_async("the master names the member whose probe fails", || async {
        let err = master.proc.stderr();
        err.lines()
            .any(|l| {
                l.contains("stuck-1")
                    && l.contains("not ready: its health probe fails: sh exited with status 1")
            })
            .then_some(())
    })
    .await;
    let ms = members(&addr).await;
    assert_eq!(state_of(&ms, "stuck-1"), Some(pb::MemberState::Joined));
    let info = |a: String| async move {
        control(&a)
            .await
            .cluster_info(pb::ClusterInfoRequest {})
            .await
            .expect("ClusterInfo")
            .into_inner()
    };
    assert!(
        !info(addr.clone()).await.cluster_ready,
        "ClusterReady without stuck-1"
    );
    // Its probe fixed by a reload: it rolls, passes, and the cluster is ready.
    s.write(&apps("0"));
    let out = cohortctl(&addr, &["reload"]);
    assert!(out.contains("stuck  restarted  health changed"), "{out}");
    assert!(out.contains("fine   unchanged"), "{out}");
    eventually_async("ClusterReady once stuck-1 passes", || {
        let a = addr.clone();
        async move { info(a).await.cluster_ready.then_some(()) }
    })
    .await;
    master.stop();
}

/// A wrapped Python program with its own health address, told on its
/// channel as it becomes ready; unhealthy while `$D/NAME.sick` exists (a
/// new instance removes it as it starts).
const PY_HEALTH: &str = r#"
import http.server, json, os, socket
sick = os.path.join(os.environ["D"], os.environ["COHORT_NAME"] + ".sick")
if os.path.exists(sick):
    os.remove(sick)
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(503 if os.path.exists(sick) else 200)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Health)
channel = socket.socket(fileno=int(os.environ["COHORT_CHANNEL_FD"]))
ready = {"type": "ready", "labels": {"http": "127.0.0.1:%d" % server.server_port}}
channel.sendall((json.dumps(ready) + "\n").encode())
server.serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapped_program_tells_its_own_address_on_ready_and_its_http_probe_goes_there() {
    let s = Setup::new();
    s.write(&format!(
        r#"
[[app]]
name = "py"
command = ["python3", "-c", {script}]
join = "wrap"
count = 2
listeners = []
health = {{ http = "/healthz", interval = "100ms" }}
"#,
        script = lit(PY_HEALTH),
    ));
    let mut master = s.master();
    let addr = master.addr.clone();
    let before = wait_ready(&addr, &["py-1", "py-2"]).await;
    for m in &before {
        let own = m.labels.get("http").cloned().unwrap_or_default();
        assert!(
            own.starts_with("127.0.0.1:"),
            "{}: label http {own:?}",
            m.name
        );
        assert_eq!(http(&own, "GET", "/healthz").map(|r| r.0).ok(), Some(200));
    }
    std::fs::write(s.path("py-1.sick"), "").expect("sick");
    let after = eventually_async("py-1 is replaced after its probe failed", || async {
        let ms = members(&addr).await;
        let py1 = ms.iter().find(|m| m.name == "py-1")?;
        (py1.pid != before[0].pid && py1.state == pb::MemberState::Ready as i32).then(|| ms.clone())
    })
    .await;
    let py1 = after.iter().find(|m| m.name == "py-1").expect("py-1");
    assert!(
        py1.last_exit
            .contains("health probe failed 3 times in a row"),
        "{}",
        py1.last_exit
    );
    assert_ne!(
        py1.labels.get("http"),
        before[0].labels.get("http"),
        "the new instance told its own address"
    );
    let py2 = after.iter().find(|m| m.name == "py-2").expect("py-2");
    assert_eq!(py2.pid, before[1].pid, "py-2 was touched");
    master.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_ecosystem_file_runs() {
    let file = cohort_e2e::workspace().join("examples/ecosystem/cohort.toml");
    let tmp = tempfile::tempdir().expect("tmp");
    let mut master = Master::start_env(
        &["--config", file.to_str().expect("path")],
        &[("TMPDIR", tmp.path().as_os_str())],
    );
    let addr = master.addr.clone();
    let ready = in_state(&addr, pb::MemberState::Ready, 4).await;
    let names: Vec<&str> = ready
        .iter()
        .filter(|m| m.state == pb::MemberState::Ready as i32)
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(names, ["queue-1", "queue-2", "web-1", "web-2"]);
    let migrate = ready
        .iter()
        .find(|m| m.name == "migrate-1")
        .expect("migrate-1");
    assert_eq!(migrate.last_exit, "exited with status 0");
    let (code, body) = http(&http_addr(&addr).await, "GET", "/").expect("GET /");
    assert!(
        code == 200 && body.contains("\"name\":\"web-"),
        "{code} {body}"
    );
    assert_eq!(
        send(&addr, pb::target::Kind::App("queue".into()), "job").await,
        2
    );
    eventually_async("the queue's consumers print what they got", || async {
        let logs = cohortctl(&addr, &["logs", "app:queue"]);
        (logs.matches("\"action\":\"job\"").count() == 2).then_some(())
    })
    .await;
    master.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_remote_member_fails_its_probe_by_timeout_and_is_drained_alone() {
    let s = Setup::new();
    s.write(
        r#"
[[app]]
name = "web"
command = ["cohort-worker", "--http", "127.0.0.1:0"]
listeners = ["http"]
health = { http = "/healthz", interval = "100ms", timeout = "200ms", failures = 3 }
"#,
    );
    let mut master = s.master();
    let addr = master.addr.clone();
    // A remote member of web, on its own address, probed like the local one.
    let remote = Proc::spawn("cohort-worker web-remote", {
        let mut cmd = Command::new(bin("cohort-worker"));
        cmd.args(["--http", "127.0.0.1:0"])
            .env(cohort::env::MASTER, master.url())
            .env(cohort::env::NAME, "web-remote")
            .env(cohort::env::APP, "web");
        cmd
    });
    let before = wait_ready(&addr, &["web-1", "web-remote"]).await;
    let mut events = watch(&addr).await;
    // Alive but silent: it takes the probe's connection and never answers.
    kill(remote.id(), "STOP");
    let reason = loop {
        let e = next_event(&mut events).await;
        let name = e
            .member
            .as_ref()
            .map(|m| m.name.as_str())
            .unwrap_or_default();
        if e.kind == pb::EventKind::Draining as i32 && name == "web-remote" {
            break e.reason;
        }
    };
    assert!(
        reason
            .starts_with("health probe failed 3 times in a row: no answer within 200 ms (timeout)"),
        "{reason}"
    );
    let now = members(&addr).await;
    let web1 = now.iter().find(|m| m.name == "web-1").expect("web-1");
    assert_eq!(
        (web1.pid, web1.state),
        (before[0].pid, pb::MemberState::Ready as i32),
        "web-1 was touched"
    );
    kill(remote.id(), "CONT");
    master.stop();
}
