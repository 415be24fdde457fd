//! `cohortctl` against a real cluster: a local agent and workers plus a
//! remote worker, with a token.

use cohort_e2e::{Master, bin, wait_ready_with};
use std::process::Command;

const TOKEN: &str = "ctl-token-0123456789abcdef0123";

/// Runs cohortctl with `args` against `addr`: (exit code, stdout, stderr).
fn ctl(addr: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(bin("cohortctl"));
    cmd.env("COHORT_MASTER", format!("http://{addr}"))
        .env_remove("COHORT_TOKEN")
        .env_remove("COHORT_TOKEN_FILE")
        .args(args);
    if let Some(t) = token {
        cmd.env("COHORT_TOKEN", t);
    }
    let out = cmd.output().expect("run cohortctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(addr: &str, args: &[&str]) -> String {
    let (code, out, err) = ctl(addr, Some(TOKEN), args);
    assert_eq!(code, 0, "cohortctl {args:?}: {err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohortctl_lists_messages_scales_restarts_and_refuses_without_a_token() {
    let dir = tempfile::tempdir().expect("dir");
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).expect("token");
    let mut master = Master::start(&[
        "--worker-count",
        "2",
        "--token-file",
        token.to_str().expect("path"),
    ]);
    let addr = master.addr.clone();
    let mut remote = Command::new(bin("cohort-worker"));
    remote
        .env("COHORT_MASTER", master.url())
        .env("COHORT_NAME", "remote-1")
        .env("COHORT_TOKEN", TOKEN)
        .env("COHORT_HTTP_ADDR", "127.0.0.1:0");
    let mut remote = cohort_e2e::Proc::spawn("remote-1", remote);
    // The whole list, in name order.
    wait_ready_with(
        &addr,
        &["agent", "remote-1", "worker-1", "worker-2"],
        Some(TOKEN),
    )
    .await;

    // ls: every member with its state, local and remote; piped, so plain.
    let table = ok(&addr, &["ls"]);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"))
            .to_string()
    };
    assert!(row("worker-1").contains("ready") && row("worker-1").contains("local"));
    assert!(row("remote-1").contains("ready") && row("remote-1").contains("remote"));
    assert!(!table.contains('\x1b'), "no colour when piped");
    // --json parses, and says the same.
    let json: serde_json::Value =
        serde_json::from_str(&ok(&addr, &["ls", "--json"])).expect("json");
    let names: Vec<&str> = json
        .as_array()
        .expect("array")
        .iter()
        .filter(|m| m["state"] == "ready")
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert_eq!(names, ["agent", "remote-1", "worker-1", "worker-2"]);
    let info: serde_json::Value =
        serde_json::from_str(&ok(&addr, &["info", "--json"])).expect("json");
    assert_eq!(info["cluster_ready"], true);
    assert_eq!(ok(&addr, &["health"]).trim(), "SERVING; cluster ready");

    // send and request, as grpcurl's Control/Send would.
    assert_eq!(
        ok(&addr, &["send", "workers", "hello"]).trim(),
        "delivered to 3"
    );
    let reply = ok(&addr, &["request", "remote-1", "ping", "--timeout", "5s"]);
    assert!(reply.contains("\"name\":\"remote-1\""), "{reply}");
    let (code, _, err) = ctl(&addr, Some(TOKEN), &["request", "nobody", "ping"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("NotFound") && err.contains("nobody"), "{err}");

    // scale and a rolling restart: new pids, all ready again.
    ok(&addr, &["scale", "worker", "3"]);
    let all = ["agent", "remote-1", "worker-1", "worker-2", "worker-3"];
    wait_ready_with(&addr, &all, Some(TOKEN)).await;
    let before = cohort_e2e::members_with(&addr, Some(TOKEN)).await;
    ok(&addr, &["restart", "worker", "--rolling"]);
    let after = cohort_e2e::members_with(&addr, Some(TOKEN)).await;
    for name in ["worker-1", "worker-2", "worker-3"] {
        let pid =
            |ms: &[cohort_proto::pb::MemberInfo]| ms.iter().find(|m| m.name == name).map(|m| m.pid);
        assert_ne!(pid(&before), pid(&after), "{name} was replaced");
    }

    // Without the token: a clear message and exit 77; unreachable: 69;
    // bad usage: 2.
    let (code, _, err) = ctl(&addr, None, &["ls"]);
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("COHORT_TOKEN"), "{err}");
    assert_eq!(ctl("127.0.0.1:1", Some(TOKEN), &["ls"]).0, 69);
    assert_eq!(ctl(&addr, Some(TOKEN), &["send", "random:cook", "x"]).0, 2);
    assert_eq!(ctl(&addr, Some(TOKEN), &["frobnicate"]).0, 2);
    // Completions for a shell.
    assert!(ok(&addr, &["completions", "bash"]).contains("cohortctl"));
    // A stopped master keeps its port open and answers nothing: unreachable
    // (69) after 10 s, not a wait without end.
    master.proc.signal("STOP");
    let (code, _, err) = ctl(&addr, Some(TOKEN), &["ls"]);
    master.proc.signal("CONT");
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("no answer within 10 s"), "{err}");

    ok(&addr, &["shutdown"]);
    let status = master
        .proc
        .wait_exit(std::time::Duration::from_secs(30))
        .expect("the master stops");
    assert_eq!(status.code(), Some(0));
    remote.signal("TERM");
    let _ = remote.wait_exit(std::time::Duration::from_secs(15));
}

/// A tmux session ended when dropped (the test's terminal).
struct Tmux(String);

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohortctl_top_draws_the_cluster_in_a_real_terminal() {
    if Command::new("tmux").arg("-V").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "tmux is needed (apt-get install tmux)"
        );
        return;
    }
    let mut master = Master::start(&["--worker-count", "2"]);
    let addr = master.addr.clone();
    cohort_e2e::wait_ready(&addr, &["agent", "worker-1", "worker-2"]).await;
    let session = Tmux(format!("cohortctl-top-{}", std::process::id()));
    let command = format!("{} --master http://{addr} top", bin("cohortctl").display());
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session.0,
        "-x",
        "120",
        "-y",
        "40",
        &command,
    ]);
    let screen = cohort_e2e::eventually("top to draw the members", || {
        let pane = tmux(&["capture-pane", "-p", "-t", &session.0]);
        (pane.contains("worker-2") && pane.contains("ready") && pane.contains("events"))
            .then_some(pane)
    });
    assert!(
        screen.contains("worker-1") && screen.contains("agent"),
        "{screen}"
    );
    // q quits: the session (whose only program is cohortctl) ends.
    tmux(&["send-keys", "-t", &session.0, "q"]);
    cohort_e2e::eventually("cohortctl top to quit on q", || {
        let alive = Command::new("tmux")
            .args(["has-session", "-t", &session.0])
            .status()
            .is_ok_and(|s| s.success());
        (!alive).then_some(())
    });
    master.proc.signal("TERM");
    let _ = master.proc.wait_exit(std::time::Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohortctl_logs_follows_local_and_remote_members_lines() {
    let mut master = Master::start(&["--worker-count", "1"]);
    let addr = master.addr.clone();
    let mut remote = Command::new(bin("cohort-worker"));
    remote
        .env("COHORT_MASTER", master.url())
        .env("COHORT_NAME", "remote-1")
        .env("COHORT_HTTP_ADDR", "127.0.0.1:0");
    let mut remote = cohort_e2e::Proc::spawn("remote-1", remote);
    cohort_e2e::wait_ready(&addr, &["agent", "remote-1", "worker-1"]).await;

    // The kept lines first: both members' startup, under their names.
    let mut logs = Command::new(bin("cohortctl"));
    logs.args([
        "--master",
        &format!("http://{addr}"),
        "logs",
        "workers",
        "-f",
    ]);
    let mut logs = cohort_e2e::Proc::spawn("cohortctl logs", logs);
    let mut kept: Vec<String> = Vec::new();
    while !["worker-1 ", "remote-1 "]
        .iter()
        .all(|n| kept.iter().any(|l| l.starts_with(n)))
    {
        kept.push(logs.wait_line("kept lines of both workers", |l| l.contains(" | ")));
    }
    for line in &kept {
        // Logged once: no second timestamp inside the text.
        let text = line.split_once(" | ").map_or("", |(_, t)| t);
        assert!(!text.contains("Z ") && !text.contains("Z\""), "{line}");
    }

    // Lines printed after the command started arrive as they are written.
    let started = std::time::Instant::now();
    let sent = ok(&addr, &["send", "workers", "refresh"]);
    assert_eq!(sent.trim(), "delivered to 2");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let line = logs.wait_line("the workers' refresh lines", |l| {
            l.contains("cache refreshed")
        });
        let name = line.split_whitespace().next().unwrap_or("").to_string();
        if !seen.contains(&name) {
            seen.push(name);
        }
    }
    seen.sort();
    assert_eq!(seen, ["remote-1", "worker-1"]);
    eprintln!(
        "both refresh lines reached `cohortctl logs -f` in {:?}",
        started.elapsed()
    );

    // Filters: one member's kept lines, as JSON; the agent is not a worker.
    let one = ok(&addr, &["logs", "remote-1", "-n", "5", "--json"]);
    let lines: Vec<serde_json::Value> = one
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(!lines.is_empty() && lines.len() <= 5, "{one}");
    assert!(
        lines
            .iter()
            .all(|l| l["member"] == "remote-1" && l["source"] == "member")
    );
    assert!(
        !ok(&addr, &["logs", "workers"])
            .lines()
            .any(|l| l.starts_with("agent "))
    );
    assert!(
        ok(&addr, &["logs", "agent"])
            .lines()
            .all(|l| l.starts_with("agent "))
    );
    // A remote `--exec` payload's own output (any language) is forwarded
    // too, and still printed by the worker where its host reads it.
    let mut exec = Command::new(bin("cohort-worker"));
    exec.env("COHORT_MASTER", master.url())
        .env("COHORT_NAME", "remote-exec")
        .args(["--exec", "--", "sh", "-c"])
        .arg(r#"echo '{"type":"ready"}' >&"$COHORT_CHANNEL_FD"; echo payload-says-hello; exec sleep 60"#);
    let mut exec = cohort_e2e::Proc::spawn("remote-exec", exec);
    exec.wait_line("the payload's line on the worker's stdout", |l| {
        l == "payload-says-hello"
    });
    cohort_e2e::eventually("the payload's line in cohortctl logs", || {
        let out = ok(&addr, &["logs", "remote-exec"]);
        out.lines()
            .any(|l| l.starts_with("remote-exec ") && l.ends_with(" payload-says-hello"))
            .then_some(())
    });
    let (code, _, err) = ctl(&addr, None, &["logs", "nobody", "-f"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("NotFound") && err.contains("nobody"), "{err}");

    master.proc.signal("TERM");
    let _ = master.proc.wait_exit(std::time::Duration::from_secs(15));
    remote.signal("TERM");
    let _ = remote.wait_exit(std::time::Duration::from_secs(15));
}
