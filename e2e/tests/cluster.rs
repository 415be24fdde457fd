//! The master as a local supervisor, end to end: real binaries, a shared
//! HTTP listener on an ephemeral port, crashes, replacements, scaling and
//! shutdown, each checking that no process of the cluster is left behind.

use cohort_e2e::{
    Load, Master, alive, bin, control, eventually_async, http, http_addr, members, next_event,
    wait_ready, watch, workspace,
};
use cohort_proto::pb;
use std::time::{Duration, Instant};

const READY: i32 = pb::MemberState::Ready as i32;

fn config_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("cohort.toml");
    std::fs::write(&path, text).expect("write config");
    path.to_string_lossy().into_owned()
}

fn toml_str(p: &std::path::Path) -> String {
    format!("{:?}", p.to_string_lossy())
}

/// Stops the master with SIGTERM and checks it exits 0 in time and that
/// every listed pid is gone.
fn stop_cleanly(master: &mut Master, pids: &[u32]) {
    master.stop();
    cohort_e2e::eventually("every cluster process to end", || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_agent_then_workers_serves_http_and_stops_cleanly() {
    let mut master = Master::start(&["--worker-count", "2"]);
    let addr = master.addr.clone();
    let mut events = watch(&addr).await;
    let listed = wait_ready(&addr, &["agent", "worker-1", "worker-2"]).await;
    assert!(listed.iter().all(|m| m.local), "{listed:?}");
    let ready_at = |name: &str, seen: &[(i32, String)]| {
        seen.iter().position(|(k, n)| {
            (*k == pb::EventKind::Ready as i32 || *k == pb::EventKind::Current as i32) && n == name
        })
    };
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|(k, _)| *k == pb::EventKind::ClusterReady as i32)
    {
        let ev = next_event(&mut events).await;
        seen.push((ev.kind, ev.member.map(|m| m.name).unwrap_or_default()));
    }
    // The agent was ready before any worker (start order).
    if let (Some(a), Some(w)) = (ready_at("agent", &seen), ready_at("worker-1", &seen)) {
        assert!(a < w, "{seen:?}");
    }

    let web = http_addr(&addr).await;
    let master_pid = master.proc.child.id();
    let mut answered = std::collections::HashSet::new();
    for _ in 0..20 {
        let (code, body) = http(&web, "GET", "/").expect("GET /");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            v["ppid"], master_pid,
            "served by a child of the master: {body}"
        );
        answered.insert(v["name"].as_str().unwrap_or_default().to_string());
    }
    assert!(
        answered.iter().all(|n| n.starts_with("worker-")),
        "{answered:?}"
    );
    let pids: Vec<u32> = listed.iter().map(|m| m.pid).collect();
    stop_cleanly(&mut master, &pids);
    // Whoever watched saw the shutdown: each child stopped, the workers
    // before the agent.
    let mut stopped = Vec::new();
    while let Ok(Ok(Some(ev))) = tokio::time::timeout(cohort_e2e::WAIT, events.message()).await {
        if ev.kind == pb::EventKind::Exited as i32 && ev.reason.starts_with("stopped at shutdown") {
            stopped.push(ev.member.map(|m| m.name).unwrap_or_default());
        }
    }
    assert_eq!(stopped.len(), 3, "{stopped:?}");
    assert_eq!(
        stopped.last().map(String::as_str),
        Some("agent"),
        "{stopped:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_is_respawned_and_the_port_keeps_answering() {
    let mut master = Master::start(&["--worker-count", "2", "--agent-count", "0"]);
    let addr = master.addr.clone();
    let before = wait_ready(&addr, &["worker-1", "worker-2"]).await;
    let web = http_addr(&addr).await;
    let load = Load::start(&web);
    let victim = before[0].clone();
    cohort_e2e::kill(victim.pid, "KILL");
    let after = eventually_async("worker-1 respawned and READY", || async {
        let m = members(&addr).await;
        let w1 = m.into_iter().find(|m| m.name == "worker-1")?;
        (w1.state == READY && w1.pid != victim.pid).then_some(w1)
    })
    .await;
    // Requests keep being answered after the kill: only a connection the
    // victim held at the instant of SIGKILL can be lost.
    let after_kill = Load::start(&web);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok_after, failures_after) = after_kill.stop();
    let (ok, failures) = load.stop();
    assert!(
        failures.len() <= 1,
        "{} failed of {}: {failures:?}",
        failures.len(),
        ok + failures.len() as u32
    );
    assert!(
        failures_after.is_empty() && ok_after > 0,
        "{failures_after:?}"
    );
    assert_ne!(after.instance_id, victim.instance_id);
    assert_eq!(after.restarts, 1);
    let pids: Vec<u32> = members(&addr).await.iter().map(|m| m.pid).collect();
    stop_cleanly(&mut master, &pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_exits_at_once_backs_off_and_disturbs_nobody() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config_file(
        &dir,
        &format!(
            "[agent]\ncommand = [{}]\n[worker]\ncount = 1\ncommand = [\"sh\", \"-c\", \"exit 3\"]\n[restart]\nbackoff_initial = \"100ms\"\n",
            toml_str(&bin("cohort-agent"))
        ),
    );
    let mut master = Master::start(&["--config", &cfg]);
    let addr = master.addr.clone();
    let mut events = watch(&addr).await;
    let mut delays = Vec::new();
    while delays.len() < 4 {
        let ev = next_event(&mut events).await;
        if ev.kind == pb::EventKind::Backoff as i32 {
            assert!(ev.reason.contains("exited with status 3"), "{}", ev.reason);
            let ms: u64 = ev
                .reason
                .split("next attempt in ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .and_then(|n| n.parse().ok())
                .expect("delay in reason");
            delays.push(ms);
        }
    }
    assert_eq!(delays, [100, 200, 400, 800]);
    let m = members(&addr).await;
    let agent = m.iter().find(|m| m.name == "agent").expect("agent listed");
    assert_eq!(agent.state, READY, "the agent stays healthy");
    let w = m
        .iter()
        .find(|m| m.name == "worker-1")
        .expect("slot listed");
    assert!(
        w.state == pb::MemberState::Backoff as i32 || w.state == pb::MemberState::Starting as i32,
        "{w:?}"
    );
    assert!(w.restarts >= 4 && w.last_exit.contains("status 3"), "{w:?}");
    stop_cleanly(&mut master, &[agent.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_that_dies_before_ready_is_replaced_again() {
    let dir = tempfile::tempdir().expect("dir");
    let marker = dir.path().join("second-try");
    // The first instance dies before it is ready; its replacement works.
    let script = format!(
        "if [ -e {m} ]; then exec {w}; else touch {m}; exit 1; fi",
        m = marker.display(),
        w = bin("cohort-worker").display()
    );
    let cfg = config_file(
        &dir,
        &format!(
            "[agent]\ncount = 0\n[worker]\ncount = 1\ncommand = [\"sh\", \"-c\", {script:?}]\n"
        ),
    );
    let mut master = Master::start(&["--config", &cfg]);
    let listed = wait_ready(&master.addr, &["worker-1"]).await;
    assert_eq!(listed[0].restarts, 1);
    stop_cleanly(&mut master, &[listed[0].pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_error_replacement_is_ready_before_the_old_instance_exits() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config_file(
        &dir,
        &format!(
            "[agent]\ncount = 0\n[worker]\ncount = 2\ncommand = [{}, \"--demo-faults\"]\n",
            toml_str(&bin("cohort-worker"))
        ),
    );
    let mut master = Master::start(&["--config", &cfg]);
    let addr = master.addr.clone();
    wait_ready(&addr, &["worker-1", "worker-2"]).await;
    let mut events = watch(&addr).await;
    let web = http_addr(&addr).await;
    let load = Load::start(&web);
    let (code, body) = http(&web, "POST", "/crash").expect("POST /crash");
    assert_eq!(code, 202, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let (old_pid, name) = (
        v["pid"].as_u64().expect("pid") as u32,
        v["name"].as_str().expect("name").to_string(),
    );
    // The replacement's READY comes before the old instance's exit, in the
    // master's own event order.
    let mut order = Vec::new();
    while !order
        .iter()
        .any(|(k, _): &(i32, u32)| *k == pb::EventKind::Exited as i32)
    {
        let ev = next_event(&mut events).await;
        let Some(m) = ev.member.filter(|m| m.name == name) else {
            continue;
        };
        let gone_old = ev.kind == pb::EventKind::Exited as i32
            && m.pid == old_pid
            && ev.reason.contains("replaced instance exited");
        let ready_new = ev.kind == pb::EventKind::Ready as i32 && m.pid != old_pid;
        if gone_old || ready_new {
            order.push((ev.kind, m.pid));
        }
    }
    assert_eq!(
        order.first().map(|(k, _)| *k),
        Some(pb::EventKind::Ready as i32),
        "{order:?}"
    );
    cohort_e2e::eventually("the old instance to exit", || {
        (!alive(old_pid)).then_some(())
    });
    let (ok, failures) = load.stop();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {failures:?}",
        failures.len(),
        ok + failures.len() as u32
    );
    let pids: Vec<u32> = members(&addr).await.iter().map(|m| m.pid).collect();
    stop_cleanly(&mut master, &pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_load_drops_no_request() {
    let mut master = Master::start(&["--worker-count", "2", "--agent-count", "0"]);
    let addr = master.addr.clone();
    let before = wait_ready(&addr, &["worker-1", "worker-2"]).await;
    let web = http_addr(&addr).await;
    let load = Load::start(&web);
    tokio::time::sleep(Duration::from_millis(200)).await;
    control(&addr)
        .await
        .restart(pb::RestartRequest {
            which: Some(pb::restart_request::Which::Role(pb::Role::Worker as i32)),
            rolling: true,
        })
        .await
        .expect("rolling restart");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ok, failures) = load.stop();
    assert!(
        failures.is_empty(),
        "{} failed of {}: {failures:?}",
        failures.len(),
        ok + failures.len() as u32
    );
    assert!(ok > 10, "the client loop ran ({ok} requests)");
    let after = wait_ready(&addr, &["worker-1", "worker-2"]).await;
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(
            b.instance_id, a.instance_id,
            "{} has a new instance",
            a.name
        );
        assert_ne!(b.pid, a.pid);
    }
    let mut pids: Vec<u32> = after.iter().map(|m| m.pid).collect();
    pids.extend(before.iter().map(|m| m.pid));
    stop_cleanly(&mut master, &pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_and_down() {
    let mut master = Master::start(&["--worker-count", "1", "--agent-count", "0"]);
    let addr = master.addr.clone();
    wait_ready(&addr, &["worker-1"]).await;
    let scale = |count| pb::ScaleRequest {
        role: pb::Role::Worker as i32,
        count,
        ..Default::default()
    };
    control(&addr)
        .await
        .scale(scale(3))
        .await
        .expect("scale up");
    let three = wait_ready(&addr, &["worker-1", "worker-2", "worker-3"]).await;
    control(&addr)
        .await
        .scale(scale(1))
        .await
        .expect("scale down");
    let one = wait_ready(&addr, &["worker-1"]).await;
    assert_eq!(
        one[0].pid, three[0].pid,
        "scaling down keeps the lowest slots"
    );
    cohort_e2e::eventually("removed workers to exit", || {
        (!alive(three[1].pid) && !alive(three[2].pid)).then_some(())
    });
    let err = control(&addr)
        .await
        .scale(pb::ScaleRequest {
            role: pb::Role::Agent as i32,
            count: 2,
            ..Default::default()
        })
        .await
        .expect_err("two agents");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    stop_cleanly(&mut master, &[one[0].pid]);
}

/// Starts a master whose one worker runs the Python payload through
/// `--exec`; returns the master and the payload's and grandchild's pids.
async fn exec_cluster(dir: &tempfile::TempDir) -> Option<(Master, Vec<u32>)> {
    let python = cohort_e2e::venv_tool("python")?;
    let pids_file = dir.path().join("payload.pids");
    let cfg = config_file(
        dir,
        &format!(
            "[worker]\ncount = 1\ncommand = [{}, \"--exec\", \"--\", {}, {}]\n",
            toml_str(&bin("cohort-worker")),
            toml_str(&python),
            toml_str(&workspace().join("e2e/python/payload.py")),
        ),
    );
    let mut cmd = std::process::Command::new(bin("cohort-master"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--listener",
        "http=127.0.0.1:0",
        "--config",
        &cfg,
    ])
    .env("PAYLOAD_PIDS", &pids_file);
    let mut proc = cohort_e2e::Proc::spawn("cohort-master", cmd);
    let line = proc.wait_line("READY master", |l| l.starts_with("READY master "));
    let master = Master {
        addr: line.trim_start_matches("READY master ").to_string(),
        proc,
    };
    let listed = wait_ready(&master.addr, &["agent", "worker-1"]).await;
    let payload: Vec<u32> = std::fs::read_to_string(&pids_file)
        .expect("payload wrote its pids")
        .split_whitespace()
        .map(|p| p.parse().expect("pid"))
        .collect();
    let mut pids: Vec<u32> = listed.iter().map(|m| m.pid).collect();
    pids.extend(payload);
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?}");
    Some((master, pids))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_payload_answers_a_request_and_sigterm_ends_even_its_grandchild() {
    let dir = tempfile::tempdir().expect("dir");
    let Some((mut master, pids)) = exec_cluster(&dir).await else {
        return;
    };
    let json = Some(prost_types_value(r#"{"a": 20, "b": 22}"#));
    let resp = control(&master.addr)
        .await
        .send(pb::SendRequest {
            action: "add".into(),
            json,
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::Member("worker-1".into())),
            }),
            expect_reply: true,
            ..Default::default()
        })
        .await
        .expect("request through the bridge")
        .into_inner();
    let reply = String::from_utf8_lossy(&resp.reply.expect("reply").data).into_owned();
    let v: serde_json::Value = serde_json::from_str(&reply).expect("json");
    assert_eq!(v["sum"], 42, "{reply}");
    assert_eq!(v["by"], "payload");
    stop_cleanly(&mut master, &pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_master_leaves_no_process_behind() {
    let dir = tempfile::tempdir().expect("dir");
    let Some((mut master, pids)) = exec_cluster(&dir).await else {
        return;
    };
    master.proc.signal("KILL");
    master
        .proc
        .wait_exit(Duration::from_secs(5))
        .expect("master died");
    let start = Instant::now();
    cohort_e2e::eventually("every cluster process to end", || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
    eprintln!(
        "cluster gone {} ms after kill -9 of the master",
        start.elapsed().as_millis()
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

fn prost_types_value(json: &str) -> prost_types::Value {
    use prost_types::value::Kind;
    fn conv(v: &serde_json::Value) -> prost_types::Value {
        let kind = match v {
            serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
            serde_json::Value::String(s) => Kind::StringValue(s.clone()),
            serde_json::Value::Object(o) => Kind::StructValue(prost_types::Struct {
                fields: o.iter().map(|(k, v)| (k.clone(), conv(v))).collect(),
            }),
            _ => Kind::NullValue(0),
        };
        prost_types::Value { kind: Some(kind) }
    }
    conv(&serde_json::from_str(json).expect("json"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_pushes_file_changes_and_schedules_to_the_workers_caches() {
    let dir = tempfile::tempdir().expect("dir");
    let watched = dir.path().join("feature-flags.json");
    std::fs::write(&watched, r#"{"version": 1}"#).expect("write");
    let agent_cfg = dir.path().join("agent.toml");
    std::fs::write(
        &agent_cfg,
        "[[schedule]]\ninterval = \"100ms\"\ntype = \"worker\"\naction = \"tick\"\ndata = \"{}\"\n",
    )
    .expect("write");
    let cfg = config_file(
        &dir,
        &format!(
            "[agent]\ncommand = [{}, \"--config\", {}, \"--watch\", {}]\n[worker]\ncount = 2\n",
            toml_str(&bin("cohort-agent")),
            toml_str(&agent_cfg),
            toml_str(&watched),
        ),
    );
    let mut master = Master::start(&["--config", &cfg]);
    let addr = master.addr.clone();
    let listed = wait_ready(&addr, &["agent", "worker-1", "worker-2"]).await;
    let web = http_addr(&addr).await;
    let cache_version = |web: &str| {
        let (_, body) = http(web, "GET", "/cache").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["version"].as_u64()
    };
    cohort_e2e::eventually("the first push", || {
        (cache_version(&web) == Some(1)).then_some(())
    });
    std::fs::write(&watched, r#"{"version": 2, "note": "changed"}"#).expect("rewrite");
    // Both workers' caches (connections alternate between them).
    cohort_e2e::eventually("the change in every worker", || {
        (0..6).all(|_| cache_version(&web) == Some(2)).then_some(())
    });
    // Scheduled sends reach the workers too.
    cohort_e2e::eventually("scheduled ticks", || {
        let (_, body) = http(&web, "GET", "/cache").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (v["messages"]["tick"].as_u64()? >= 1).then_some(())
    });
    // The master captured the children's output under their names.
    let stderr = master.proc.stderr();
    assert!(
        stderr.contains("pushed refresh") && stderr.contains("member.name=agent"),
        "{stderr}"
    );
    let pids: Vec<u32> = listed.iter().map(|m| m.pid).collect();
    stop_cleanly(&mut master, &pids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tells_systemd_ready_as_soon_as_it_serves_then_watchdog_and_stopping() {
    let dir = tempfile::tempdir().expect("dir");
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(cohort_e2e::WAIT))
        .expect("timeout");
    let recv = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // A remote worker is expected and never comes: `systemctl start` must
    // return all the same (READY=1 as soon as the master serves), with the
    // progress in STATUS=.
    // systemd names the pid the watchdog is for: `exec` keeps the shell's.
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "WATCHDOG_PID=$$ exec \"$0\" \"$@\""])
        .arg(bin("cohort-master"))
        .args(["--listen", "127.0.0.1:0", "--agent-count", "0"])
        .args(["--worker-count", "0", "--expect-workers", "1"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000");
    let mut proc = cohort_e2e::Proc::spawn("cohort-master", cmd);
    let line = proc.wait_line("READY master", |l| l.starts_with("READY master "));
    let first = recv();
    assert!(first.contains("READY=1"), "{first:?}");
    assert!(
        first.contains("STATUS=serving; waiting for 0 agents and 1 worker"),
        "{first:?}"
    );
    let mut master = Master {
        addr: line.trim_start_matches("READY master ").to_string(),
        proc,
    };
    let info = control(&master.addr)
        .await
        .cluster_info(pb::ClusterInfoRequest {})
        .await
        .expect("info")
        .into_inner();
    assert!(!info.cluster_ready, "the expected worker never joined");
    // WatchdogSec=200ms: pings at half the interval.
    for _ in 0..3 {
        let ping = recv();
        assert_eq!(ping.trim_end(), "WATCHDOG=1");
    }
    stop_cleanly(&mut master, &[]);
    let mut last = recv();
    while last.trim_end() == "WATCHDOG=1" {
        last = recv();
    }
    assert!(last.contains("STOPPING=1"), "{last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_only_master_writes_nothing_and_binds_only_its_grpc_port() {
    // As on Kubernetes: a read-only root (no usable temp directory) and a
    // shared-listener address it must not take when it runs no workers.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let mut cmd = std::process::Command::new(bin("cohort-master"));
    cmd.args(["--listen", "127.0.0.1:0", "--agent-count", "0"])
        .args(["--worker-count", "0", "--expect-workers", "1"])
        .args(["--listener", &format!("http={taken_addr}")])
        .env("TMPDIR", "/nonexistent/read-only-root");
    let mut proc = cohort_e2e::Proc::spawn("cohort-master", cmd);
    let line = proc.wait_line("READY master", |l| l.starts_with("READY master "));
    let mut master = Master {
        addr: line.trim_start_matches("READY master ").to_string(),
        proc,
    };
    let err = control(&master.addr)
        .await
        .scale(pb::ScaleRequest {
            role: pb::Role::Worker as i32,
            count: 1,
            ..Default::default()
        })
        .await
        .expect_err("no local members on this master");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.message().contains("no local members"), "{err:?}");
    stop_cleanly(&mut master, &[]);
    drop(taken);
}

#[test]
fn members_stop_at_sigterm_even_before_they_joined() {
    // Nothing listens on port 1: the members keep retrying their join. As
    // PID 1 in a container a SIGTERM they ignored would mean waiting for
    // SIGKILL (`podman stop`, a pod's grace period).
    for binary in ["cohort-worker", "cohort-agent"] {
        let mut cmd = std::process::Command::new(bin(binary));
        cmd.env("COHORT_MASTER", "http://127.0.0.1:1")
            .env("COHORT_HTTP_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "cohort=debug");
        let mut proc = cohort_e2e::Proc::spawn(binary, cmd);
        // Once it has failed a join and waits to retry, it is in the loop
        // a SIGTERM must end.
        cohort_e2e::eventually("a join retry", || {
            proc.stderr()
                .contains("reconnecting after delay")
                .then_some(())
        });
        proc.signal("TERM");
        let status = proc
            .wait_exit(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{binary} ignored SIGTERM while joining"));
        assert_eq!(status.code(), Some(0), "{binary}: {}", proc.stderr());
    }
}

#[test]
fn shutdown_gives_local_members_their_drain_before_sigkill() {
    // A member that needs 2 s to finish after SIGTERM: within
    // drain_timeout (3 s), so it must not be killed at kill_timeout (1 s).
    let dir = tempfile::tempdir().expect("dir");
    let done = dir.path().join("drained");
    let started = dir.path().join("started");
    let script = format!(
        "trap 'sleep 2; echo drained > {}; exit 0' TERM; touch {}; while :; do sleep 0.1; done",
        done.display(),
        started.display()
    );
    let cfg = config_file(
        &dir,
        &format!(
            "[agent]\ncount = 0\n[worker]\ncount = 1\ncommand = [\"sh\", \"-c\", {}]\n[restart]\ndrain_timeout = \"3s\"\nkill_timeout = \"1s\"\n",
            toml_str(std::path::Path::new(&script))
        ),
    );
    let mut master = Master::start(&["--config", &cfg]);
    // The member's trap is set once it has touched its file.
    cohort_e2e::eventually("the member started", || started.exists().then_some(()));
    master.proc.signal("TERM");
    let status = master
        .proc
        .wait_exit(Duration::from_secs(15))
        .expect("master exits");
    assert_eq!(status.code(), Some(0), "{}", master.proc.stderr());
    let text = std::fs::read_to_string(&done).unwrap_or_default();
    assert_eq!(text.trim(), "drained", "the member was killed mid-drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_still_reach_each_other_while_the_master_drains_its_workers() {
    use cohort::{MemberBuilder, Role, Target};
    // A local worker that takes 3 s to finish after SIGTERM holds the
    // master in its drain; meanwhile the cluster must still route, or a
    // draining worker could not finish work that needs another member
    // (the agent is stopped last for exactly that).
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config_file(
        &dir,
        "[agent]\ncount = 0\n[worker]\ncount = 1\ncommand = [\"sh\", \"-c\", \"trap 'sleep 3; exit 0' TERM; while :; do sleep 0.1; done\"]\n[restart]\ndrain_timeout = \"10s\"\n",
    );
    let mut master = Master::start(&["--config", &cfg]);
    let url = master.url();
    let join = |name: &'static str| {
        MemberBuilder::new(url.clone(), Role::Worker)
            .name(name)
            .join()
    };
    let a = join("a").await.expect("a joins");
    let b = join("b").await.expect("b joins");
    let mut pings = b.on("ping");
    a.ready().await.expect("a ready");
    b.ready().await.expect("b ready");
    let mut events = watch(&master.addr).await;
    master.proc.signal("TERM");
    // The drain has begun once the master says so; the worker's trap holds
    // it there for 3 s.
    cohort_e2e::eventually("the drain", || {
        master
            .proc
            .stderr()
            .contains("stopping local members")
            .then_some(())
    });
    assert!(
        master.proc.child.try_wait().expect("wait").is_none(),
        "still draining"
    );
    let sent = tokio::time::timeout(
        Duration::from_secs(2),
        a.send(Target::Member("b".into()), "ping", "during the drain"),
    )
    .await;
    assert!(
        matches!(sent, Ok(Ok(1))),
        "routed during the drain: {sent:?}"
    );
    let got = tokio::time::timeout(Duration::from_secs(2), pings.recv())
        .await
        .ok()
        .flatten()
        .expect("b has it");
    assert_eq!(&got.data[..], b"during the drain");
    // No one new joins a master on its way out.
    let late = MemberBuilder::new(url.clone(), Role::Worker)
        .name("late")
        .join_timeout(Duration::ZERO)
        .join()
        .await;
    let Err(err) = late else {
        panic!("a join during the drain was accepted");
    };
    assert!(err.to_string().contains("shutting down"), "{err}");
    // The worker's end is told as what it is, not as a replacement.
    loop {
        let ev = next_event(&mut events).await;
        if ev.kind == pb::EventKind::Exited as i32
            && ev.member.as_ref().is_some_and(|m| m.name == "worker-1")
        {
            assert!(
                ev.reason.starts_with("stopped at shutdown: "),
                "{}",
                ev.reason
            );
            break;
        }
    }
    let status = master
        .proc
        .wait_exit(Duration::from_secs(15))
        .expect("master exits");
    assert_eq!(status.code(), Some(0), "{}", master.proc.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_max_rss_is_drained_and_replaced_without_a_gap() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config_file(
        &dir,
        &format!(
            "[agent]\ncount = 0\n[worker]\ncount = 1\nmax_rss = \"48MiB\"\ncommand = [{}, \"--demo-faults\"]\n",
            toml_str(&bin("cohort-worker"))
        ),
    );
    let mut master = Master::start(&["--config", &cfg]);
    let addr = master.addr.clone();
    let first = wait_ready(&addr, &["worker-1"]).await;
    let old_pid = first[0].pid;
    let mut events = watch(&addr).await;
    let web = http_addr(&addr).await;
    let (code, body) = http(&web, "POST", "/grow?mib=96").expect("POST /grow");
    assert_eq!(code, 200, "{body}");
    // Three heartbeats over the limit: DRAINING with the reason, then the
    // replacement READY while the old one finishes.
    let mut drained = false;
    loop {
        let ev = next_event(&mut events).await;
        let Some(m) = ev.member else { continue };
        if ev.kind == pb::EventKind::Draining as i32 && m.pid == old_pid {
            assert!(ev.reason.contains("above max_rss 48 MiB"), "{}", ev.reason);
            drained = true;
        }
        if ev.kind == pb::EventKind::Ready as i32 && m.name == "worker-1" && m.pid != old_pid {
            assert!(drained, "the replacement came after the drain");
            break;
        }
    }
    cohort_e2e::eventually("the old instance to exit", || {
        (!alive(old_pid)).then_some(())
    });
    let listed = members(&addr).await;
    let w = listed
        .iter()
        .find(|m| m.name == "worker-1")
        .expect("worker-1");
    assert!(w.last_exit.contains("max_rss"), "{w:?}");
    let pids: Vec<u32> = listed.iter().map(|m| m.pid).collect();
    stop_cleanly(&mut master, &pids);
}
