//! Members that misbehave against the real supervising `cohort-master`:
//! hung (SIGSTOPped) children, children that never join, and clients that
//! try to take the agent's role or reuse a child's one-time secret.

use cohort_e2e::{
    Master, alive, children_of, eventually_async, kill, members, next_event, rss_mib, wait_ready,
    watch,
};
use cohort_proto::pb::{self, member_frame::Kind as Frame};
use std::time::Duration;

const READY: i32 = pb::MemberState::Ready as i32;

/// Opens a Join stream over TCP with `hello`; returns the master's answer.
async fn raw_join(addr: &str, hello: pb::Hello) -> Result<(), tonic::Status> {
    let mut client = pb::membership_client::MembershipClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let frames = vec![pb::MemberFrame {
        kind: Some(Frame::Hello(hello)),
    }];
    let outbound =
        tokio_stream::StreamExt::chain(tokio_stream::iter(frames), tokio_stream::pending());
    let mut inbound = client.join(outbound).await?.into_inner();
    // The welcome, or the refusal.
    inbound.message().await.map(|_| ())
}

fn env_of(pid: u32, key: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|b| *b == 0).find_map(|kv| {
        let kv = std::str::from_utf8(kv).ok()?;
        kv.strip_prefix(key)?.strip_prefix('=').map(str::to_string)
    })
}

/// Waits for an event of `kind` about `name` and returns its reason.
async fn reason_of(
    events: &mut tonic::Streaming<pb::ClusterEvent>,
    kind: pb::EventKind,
    name: &str,
) -> String {
    loop {
        let ev = next_event(events).await;
        if ev.kind == kind as i32 && ev.member.as_ref().is_some_and(|m| m.name == name) {
            return ev.reason;
        }
    }
}

/// Waits until `name` is READY again with a pid other than `old`.
async fn replacement(addr: &str, name: &str, old: u32) -> pb::MemberInfo {
    eventually_async(&format!("{name} READY with a new pid"), || async {
        members(addr)
            .await
            .into_iter()
            .find(|m| m.name == name && m.state == READY && m.pid != old)
    })
    .await
}

fn stop(master: &mut Master, pids: &[u32]) {
    master.stop();
    cohort_e2e::eventually("every cluster process to end", || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_local_worker_is_killed_and_replaced() {
    let mut master = Master::start(&[
        "--worker-count",
        "1",
        "--heartbeat-interval",
        "100ms",
        "--suspect-after",
        "300ms",
        "--dead-after",
        "1s",
    ]);
    let addr = master.addr.clone();
    let listed = wait_ready(&addr, &["agent", "worker-1"]).await;
    let agent = listed[0].pid;
    let hung = listed[1].pid;
    let mut events = watch(&addr).await;
    kill(hung, "STOP");

    let why = reason_of(&mut events, pb::EventKind::Respawned, "worker-1").await;
    assert!(why.contains("alive but silent"), "{why}");
    let replaced = replacement(&addr, "worker-1", hung).await;
    assert!(!replaced.instance_id.is_empty());
    cohort_e2e::eventually("the hung process to be gone", || {
        (!alive(hung)).then_some(())
    });
    stop(&mut master, &[agent, replaced.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_that_never_joins_is_killed_and_retried_with_backoff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("cohort.toml");
    std::fs::write(
        &cfg,
        "[agent]\ncount = 0\n[worker]\ncount = 1\ncommand = [\"sleep\", \"1000\"]\n\
         [restart]\nstart_timeout = \"1s\"\n",
    )
    .expect("config");
    let mut master = Master::start(&["--config", cfg.to_str().expect("path")]);
    let mut events = watch(&master.addr).await;
    let why = reason_of(&mut events, pb::EventKind::Backoff, "worker-1").await;
    assert!(why.contains("not ready 1000 ms after it started"), "{why}");
    // The silent `sleep` was killed, not left behind: one attempt at a time.
    let master_pid = master.proc.child.id();
    let children = || children_of(master_pid);
    let seen = children();
    assert!(seen.len() <= 1, "{seen:?}");
    let why = reason_of(&mut events, pb::EventKind::Backoff, "worker-1").await;
    assert!(why.contains("not ready"), "{why}");
    let mut seen2 = children();
    assert!(seen2.len() <= 1, "{seen2:?}");
    seen2.extend(seen);
    stop(&mut master, &seen2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_else_can_take_the_agent_role_or_a_childs_secret() {
    let mut master = Master::start(&["--worker-count", "0"]);
    let addr = master.addr.clone();
    let first = wait_ready(&addr, &["agent"]).await[0].pid;
    kill(first, "KILL");
    // Right after the local agent died, a stranger asks to be the agent.
    let rogue = raw_join(
        &addr,
        pb::Hello {
            role: pb::Role::Agent as i32,
            name: "rogue-agent".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("refused");
    assert_eq!(rogue.code(), tonic::Code::PermissionDenied, "{rogue:?}");
    assert!(rogue.message().contains("runs its own agent"), "{rogue:?}");
    let agent = replacement(&addr, "agent", first).await;

    // The new agent's one-time secret, used over TCP by someone else.
    let secret = env_of(agent.pid, "COHORT_SECRET").expect("the agent has a secret");
    let stolen = raw_join(
        &addr,
        pb::Hello {
            role: pb::Role::Worker as i32,
            name: "agent".into(),
            secret,
            ..Default::default()
        },
    )
    .await
    .expect_err("refused");
    assert_eq!(stolen.code(), tonic::Code::PermissionDenied, "{stolen:?}");
    assert!(stolen.message().contains("private socket"), "{stolen:?}");
    let now = wait_ready(&addr, &["agent"]).await;
    assert_eq!(now[0].pid, agent.pid, "the real agent kept its place");
    stop(&mut master, &[agent.pid]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_mistakes_get_clear_answers() {
    let mut first = Master::start(&["--agent-count", "0", "--worker-count", "0"]);
    // A master without members, listening on `listen`.
    let bare = |listen: &str| {
        let mut cmd = std::process::Command::new(cohort_e2e::bin("cohort-master"));
        cmd.args([
            "--agent-count",
            "0",
            "--worker-count",
            "0",
            "--listen",
            listen,
        ]);
        cmd
    };
    // The same address again: a configuration problem, named.
    let mut second = cohort_e2e::Proc::spawn("second master", bare(&first.addr));
    let status = second.wait_exit(Duration::from_secs(15)).expect("exits");
    assert_eq!(status.code(), Some(64), "{}", second.stderr());
    let err = second.stderr();
    assert!(err.contains(&first.addr) && err.contains("in use"), "{err}");

    // An empty COHORT_TOKEN turns auth off: said out loud.
    let mut cmd = bare("127.0.0.1:0");
    cmd.env("COHORT_TOKEN", "");
    let mut open = cohort_e2e::Proc::spawn("open master", cmd);
    open.wait_line("READY master", |l| l.starts_with("READY master "));
    cohort_e2e::eventually("the empty-token warning", || {
        open.stderr()
            .contains("COHORT_TOKEN is set but empty")
            .then_some(())
    });
    open.signal("TERM");
    assert_eq!(
        open.wait_exit(Duration::from_secs(15))
            .and_then(|s| s.code()),
        Some(0)
    );
    stop(&mut first, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_speak_are_bounded_and_closed() {
    use std::io::Read;
    let mut master = Master::start(&[
        "--agent-count",
        "0",
        "--worker-count",
        "0",
        "--max-connections",
        "50",
        "--handshake-timeout",
        "500ms",
    ]);
    // 120 sockets that never send a byte: 50 are taken, 70 refused at once,
    // more than the master answers with a status at a time (32): the rest
    // are closed unanswered.
    let silent: Vec<std::net::TcpStream> = (0..120)
        .map(|_| std::net::TcpStream::connect(&master.addr).expect("connect"))
        .collect();
    cohort_e2e::eventually("the limit's log line", || {
        master
            .proc
            .stderr()
            .contains("connection limit reached")
            .then_some(())
    });
    // Every one of them is closed by the master before long (the refused
    // ones after an HTTP/2 greeting they never answer).
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut greeting = Vec::new();
        let end = s.read_to_end(&mut greeting);
        let timed_out = end
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock);
        assert!(!timed_out, "closed by the master: {end:?}");
    }
    // And the master serves as before.
    assert!(members(&master.addr).await.is_empty());
    stop(&mut master, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_past_max_connections_is_told_why_and_counted() {
    use cohort::{Code, MemberBuilder, Role};
    let mut master = Master::start(&[
        "--agent-count",
        "0",
        "--worker-count",
        "0",
        "--max-connections",
        "2",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let metrics = cohort_e2e::metrics::address(&mut master);
    // Two members, a connection each: the limit.
    let (_a, _b, _sub) = pair(&master.url()).await;
    let err = MemberBuilder::new(master.url(), Role::Worker)
        .name("third")
        .join_timeout(Duration::from_secs(1))
        .join()
        .await
        .expect_err("no room for a third connection");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.to_string().contains("max_connections"), "{err}");
    let text = cohort_e2e::metrics::scrape(&metrics);
    let refused = cohort_e2e::metrics::value(&text, "cohort_connections_refused_total");
    assert!(refused.is_some_and(|n| n >= 1.0), "{text}");
    // It says what descriptors it may use (raised to the hard limit).
    assert!(master.proc.stderr().contains("open-files limit"));
    stop(&mut master, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_storm_of_silent_members_costs_little_and_leaves_nothing() {
    use cohort::Target;
    const STORM: usize = 2_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("cohort.toml");
    std::fs::write(&cfg, "[restart]\nstart_timeout = \"4s\"\n").expect("config");
    let mut master = Master::start(&[
        "--config",
        cfg.to_str().expect("path"),
        "--agent-count",
        "0",
        "--worker-count",
        "0",
        "--heartbeat-interval",
        "200ms",
        "--suspect-after",
        "1s",
        "--dead-after",
        "30s",
    ]);
    let pid = master.proc.child.id();
    let addr = master.addr.clone();
    // Two members with real traffic throughout.
    let (a, _b, mut b_sub) = pair(&master.url()).await;
    let before = rss_mib(pid);

    // STORM streams over 4 connections: a hello each, then silence; nobody
    // reads what the master sends.
    let mut held = Vec::new();
    for _ in 0..4 {
        let channel = tonic::transport::Endpoint::from_shared(master.url())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        for _ in 0..STORM / 4 {
            let mut client = pb::membership_client::MembershipClient::new(channel.clone());
            let frames = vec![pb::MemberFrame {
                kind: Some(Frame::Hello(pb::Hello {
                    role: pb::Role::Worker as i32,
                    ..Default::default()
                })),
            }];
            let outbound =
                tokio_stream::StreamExt::chain(tokio_stream::iter(frames), tokio_stream::pending());
            held.push(tokio::spawn(async move { client.join(outbound).await }));
        }
    }
    let mut peak = before;
    let mut sent = 0u32;
    let listed = eventually_async("the storm joined", || {
        let (addr, a) = (addr.clone(), a.clone());
        peak = peak.max(rss_mib(pid));
        sent += 1;
        async move {
            // Traffic between the real members goes on meanwhile.
            a.send_to("b", "ping", "x").await.expect("a reaches b");
            let info = cohort_e2e::control(&addr)
                .await
                .cluster_info(pb::ClusterInfoRequest {})
                .await
                .expect("ClusterInfo")
                .into_inner();
            let n: usize = info.counts.iter().map(|c| c.count as usize).sum();
            (n == STORM + 2).then_some(n)
        }
    })
    .await;
    assert_eq!(listed, STORM + 2);
    for _ in 0..sent {
        recv_ping(&mut b_sub).await;
    }
    peak = peak.max(rss_mib(pid));
    let mut joined = Vec::new();
    for h in held {
        joined.push(h.await.expect("join task").expect("joined"));
    }
    // None reports ready within start_timeout: the master drops them all,
    // though their streams stay open.
    let left = eventually_async("the storm gone", || async {
        let m = members(&addr).await;
        (m.len() == 2).then_some(m)
    })
    .await;
    assert!(left.iter().all(|m| m.dropped_messages == 0), "{left:?}");
    let after = rss_mib(pid);
    println!(
        "master RSS: {before:.1} MiB before, {peak:.1} at peak, {after:.1} after {STORM} silent joins"
    );
    // Generous: 2,000 silent members cost well under 100 KiB each.
    assert!(peak < before + 200.0, "peak {peak:.0} MiB from {before:.0}");
    a.send(Target::Member("b".into()), "ping", "x")
        .await
        .expect("a still reaches b");
    drop(joined);
    stop(&mut master, &[]);
}

/// Two ready remote members, `a` and `b`, and `b`'s subscription to
/// "ping": the traffic that must go on while something misbehaves.
async fn pair(url: &str) -> (cohort::Member, cohort::Member, cohort::Subscription) {
    use cohort::{MemberBuilder, Role};
    let join = |name: &'static str| {
        MemberBuilder::new(url.to_string(), Role::Worker)
            .name(name)
            .join()
    };
    let a = join("a").await.expect("a");
    let b = join("b").await.expect("b");
    let b_sub = b.on("ping");
    a.ready().await.expect("ready");
    b.ready().await.expect("ready");
    (a, b, b_sub)
}

async fn recv_ping(sub: &mut cohort::Subscription) {
    tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("ping in time")
        .expect("open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_master_clears_what_a_killed_one_left_behind() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let listener = format!("http=127.0.0.1:{port}");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("cohort.toml");
    // A wrapper that forks: its `sleep` gets no parent-death signal.
    std::fs::write(
        &cfg,
        "[agent]\ncount = 0\n[worker]\ncount = 1\ncommand = [\"sh\", \"-c\", \"sleep 1000; true\"]\n",
    )
    .expect("config");
    let config = cfg.to_str().expect("path");
    // Its own temp directory: another test's master, starting meanwhile,
    // would otherwise reap the leftover this test waits to see reaped.
    let own_tmp = [("TMPDIR", dir.path().as_os_str())];
    let mut first = Master::start_env(&["--config", config, "--listener", &listener], &own_tmp);
    let first_pid = first.proc.child.id();
    let (sh, sleeper) = cohort_e2e::eventually("the wrapped sleep", || {
        let sh = children_of(first_pid).into_iter().next()?;
        Some((sh, children_of(sh).into_iter().next()?))
    });
    kill(first_pid, "KILL");
    assert!(first.proc.wait_exit(Duration::from_secs(10)).is_some());
    // The wrapper ends with its master (parent-death signal); its own child
    // is what a next master must find.
    cohort_e2e::eventually("the wrapper gone", || (!alive(sh)).then_some(()));
    assert!(alive(sleeper), "the wrapper's child outlived the master");

    let mut second = Master::start_env(&["--config", config, "--listener", &listener], &own_tmp);
    cohort_e2e::eventually("the leftover gone", || (!alive(sleeper)).then_some(()));
    assert!(
        second.proc.stderr().contains("left behind"),
        "{}",
        second.proc.stderr()
    );
    let sh = cohort_e2e::eventually("the new wrapper", || {
        children_of(second.proc.child.id()).into_iter().next()
    });
    stop(&mut second, &[sh]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_flooding_its_logs_is_held_to_its_rate_and_hurts_nobody() {
    use cohort::Target;
    use tokio_stream::StreamExt;
    const FRAMES: usize = 150;
    const LINES: usize = 1_000;
    let mut master = Master::start(&["--agent-count", "0", "--worker-count", "0"]);
    let pid = master.proc.child.id();
    let addr = master.addr.clone();
    let (a, _b, mut b_sub) = pair(&master.url()).await;
    let before = rss_mib(pid);

    // A raw member that sends FRAMES × LINES lines of 2 KB (with levels no
    // logger writes) as fast as the master reads them.
    let mut client = pb::membership_client::MembershipClient::connect(master.url())
        .await
        .expect("connect")
        .max_encoding_message_size(cohort_proto::MAX_MESSAGE_BYTES);
    let hello = pb::MemberFrame {
        kind: Some(Frame::Hello(pb::Hello {
            role: pb::Role::Worker as i32,
            name: "flooder".into(),
            ..Default::default()
        })),
    };
    let line = pb::LogLine {
        at: None,
        level: "x".repeat(100),
        text: "y".repeat(2_000),
    };
    let batch = pb::MemberFrame {
        kind: Some(Frame::Logs(pb::LogLines {
            lines: vec![line; LINES],
        })),
    };
    let frames =
        tokio_stream::iter(std::iter::once(hello).chain(std::iter::repeat_n(batch, FRAMES)))
            .chain(tokio_stream::pending());
    let mut inbound = client.join(frames).await.expect("joined").into_inner();
    let reader = tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });

    // Meanwhile the real members' traffic goes on and memory stays flat.
    let mut peak = before;
    for _ in 0..20 {
        peak = peak.max(rss_mib(pid));
        a.send(Target::Member("b".into()), "ping", "x")
            .await
            .expect("a reaches b");
        recv_ping(&mut b_sub).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What is kept of the flood: within the rate and the bounds.
    let kept: Vec<pb::LogEntry> = cohort_e2e::control(&addr)
        .await
        .logs(pb::LogsRequest {
            member: "flooder".into(),
            ..Default::default()
        })
        .await
        .expect("Logs")
        .into_inner()
        .collect::<Result<_, _>>()
        .await
        .expect("lines");
    let listed = members(&addr).await;
    println!(
        "master RSS {before:.1} MiB before, {peak:.1} at peak; kept {} of {} lines",
        kept.len(),
        FRAMES * LINES
    );
    assert!(!kept.is_empty() && kept.len() <= 200, "{}", kept.len());
    assert!(
        kept.iter()
            .all(|l| l.level == "info" && l.text.len() <= 1_030)
    );
    assert!(peak < before + 100.0, "peak {peak:.0} MiB from {before:.0}");
    assert!(
        listed.iter().any(|m| m.name == "flooder"),
        "logging is no offence"
    );
    assert!(listed.iter().all(|m| m.dropped_messages == 0), "{listed:?}");
    reader.abort();
    stop(&mut master, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_printing_as_fast_as_it_can_is_read_at_a_bounded_rate_and_slows_nobody() {
    use cohort::Target;
    // A local worker whose payload, once told to, prints without pause.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("cohort.toml");
    std::fs::write(
        &cfg,
        cohort_e2e::chatty_config(&cohort_e2e::bin("cohort-worker")),
    )
    .expect("config");
    let mut master = Master::start(&["--config", cfg.to_str().expect("path")]);
    let addr = master.addr.clone();
    let chatty_pid = wait_ready(&addr, &["worker-1"]).await[0].pid;
    let (a, _b, mut b_sub) = pair(&master.url()).await;
    // A follower of the logs that never reads.
    let mut stalled = cohort_e2e::control(&addr)
        .await
        .logs(pb::LogsRequest {
            member: "worker-1".into(),
            follow: true,
            ..Default::default()
        })
        .await
        .expect("Logs")
        .into_inner();
    a.send(Target::Member("worker-1".into()), "flood", "")
        .await
        .expect("start the flood");
    let printed = |m: &Master| m.proc.stderr().matches(cohort_e2e::CHATTY_LINE).count();
    cohort_e2e::eventually("the flood to be read", || {
        (printed(&master) > 1_000).then_some(())
    });

    // Messaging goes on; the master reads the child at its bounded rate.
    let (before, t0) = (printed(&master), std::time::Instant::now());
    for _ in 0..200 {
        a.send(Target::Member("b".into()), "ping", "x")
            .await
            .expect("a reaches b");
        recv_ping(&mut b_sub).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rate = (printed(&master) - before) as f64 / t0.elapsed().as_secs_f64();
    println!("the master read the chatty child at {rate:.0} lines/s");
    // The master's LINES_PER_SECOND per child stream (supervisor/output.rs).
    let limit = 10_000.0;
    assert!(rate > 0.0 && rate < 1.5 * limit, "{rate:.0} lines/s");
    assert!(alive(chatty_pid), "the chatty child is slowed, not killed");
    // The follower that never read, once far behind (past HTTP/2's window
    // and the master's buffers), is cut off with a reason; the master
    // queued nothing for it without bound.
    let rss_before = rss_mib(master.proc.child.id());
    cohort_e2e::eventually("60,000 lines past the stalled follower", || {
        (printed(&master) > 60_000).then_some(())
    });
    let rss_after = rss_mib(master.proc.child.id());
    assert!(
        rss_after < rss_before + 50.0,
        "{rss_before:.0} → {rss_after:.0} MiB"
    );
    let mut read = 0;
    let ended = loop {
        match stalled.message().await {
            Ok(Some(_)) if read < 100_000 => read += 1,
            other => break other,
        }
    };
    match ended {
        Err(status) => assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}"),
        other => panic!("after {read} lines: {other:?}"),
    }
    stop(&mut master, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_a_hung_master_gives_up_at_its_join_timeout() {
    let mut master = Master::start(&["--agent-count", "0", "--worker-count", "0"]);
    // Stopped, the master's kernel still accepts TCP connections: only
    // answers never come.
    master.proc.signal("STOP");
    let started = std::time::Instant::now();
    let joined = tokio::time::timeout(
        Duration::from_secs(30),
        cohort::MemberBuilder::new(format!("http://{}", master.addr), cohort::Role::Worker)
            .name("patient")
            .join_timeout(Duration::from_secs(2))
            .join(),
    )
    .await
    .expect("join gives up instead of waiting on a silent master");
    let err = joined.expect_err("no welcome from a stopped master");
    assert_eq!(err.code(), cohort::Code::Unavailable, "{err}");
    assert!(err.to_string().contains("answer"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "{err}");

    // Resumed, it serves as before.
    master.proc.signal("CONT");
    let member =
        cohort::MemberBuilder::new(format!("http://{}", master.addr), cohort::Role::Worker)
            .name("patient")
            .join()
            .await
            .expect("join once the master answers");
    member.close().await;
    stop(&mut master, &[]);
}
