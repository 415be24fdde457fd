//! Many members on one real master: 2,000 light members (raw gRPC streams,
//! 100 per connection, heartbeats at 1 s, reconnecting with jittered
//! backoff like the SDK) join all at once. None is evicted, all are READY,
//! a broadcast reaches every one, nobody's queue drops a message, and after
//! the master is killed and restarted on the same address all register
//! again. Joins beyond `[limits] join_rate` wait their turn and none is
//! lost; one whose turn is too far away is refused with a reason. A full
//! master (`[limits] max_members`) refuses new names with a reason and
//! the members in it carry on.

use cohort_e2e::light::{Light, ready_count};
use cohort_e2e::metrics::{scrape, value};
use cohort_e2e::{Master, bin, control, eventually_async, eventually_async_within, watch};
use cohort_proto::pb::{self, member_frame::Kind as Out};
use std::time::{Duration, Instant};

const MEMBERS: usize = 2_000;

async fn wait_ready(addr: &str, n: usize, what: &str) -> Duration {
    let t = Instant::now();
    let all = async || (ready_count(addr).await == n).then_some(());
    eventually_async_within(&format!("{what}: {n} READY"), Duration::from_secs(120), all).await;
    t.elapsed()
}

/// Every member, page by page; with the sum of their dropped messages.
async fn list_all(addr: &str) -> (usize, u64) {
    let mut c = control(addr).await;
    let (mut n, mut dropped, mut token) = (0, 0, String::new());
    loop {
        let page = c
            .list_members(pb::ListMembersRequest {
                page_token: token,
                ..Default::default()
            })
            .await
            .expect("ListMembers")
            .into_inner();
        assert!(page.members.len() <= 1000, "a page holds at most 1000");
        n += page.members.len();
        dropped += page.members.iter().map(|m| m.dropped_messages).sum::<u64>();
        if page.next_page_token.is_empty() {
            return (n, dropped);
        }
        token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_members_join_at_once_hear_a_broadcast_and_survive_a_master_restart() {
    let mut master = Master::start(&["--agent-count", "0", "--worker-count", "0"]);
    let addr = master.addr.clone();
    let mut events = watch(&addr).await;
    let members = Light::start(&addr, MEMBERS, "m", "to-all");
    let joined = wait_ready(&addr, MEMBERS, "joining at once").await;
    eprintln!("{MEMBERS} members READY in {joined:?}");
    // Nobody was evicted, then or in the next seconds of heartbeats.
    none_leave(&mut events, Duration::from_secs(3)).await;
    assert_eq!(ready_count(&addr).await, MEMBERS);

    broadcast_reaches_all(&addr, &members, MEMBERS, "hello").await;
    let (listed, dropped) = list_all(&addr).await;
    assert_eq!((listed, dropped), (MEMBERS, 0));

    // kill -9 and a new master on the same address: all come back.
    master.proc.signal("KILL");
    let _ = master.proc.wait_exit(Duration::from_secs(10));
    let mut cmd = std::process::Command::new(bin("cohort-master"));
    cmd.args(["--listen", &addr, "--listener", "http=127.0.0.1:0"])
        .args(["--agent-count", "0", "--worker-count", "0"]);
    let mut proc = cohort_e2e::Proc::spawn("cohort-master", cmd);
    proc.wait_line("READY master", |l| l.starts_with("READY master "));
    let back = wait_ready(&addr, MEMBERS, "after the master restarted").await;
    eprintln!("{MEMBERS} members back in {back:?}");
    drop(members);
    proc.signal("TERM");
    let _ = proc.wait_exit(Duration::from_secs(15));
}

/// Fails the test if any member leaves (is evicted) while `events` is read.
/// A broadcast through Control reaches all `n` light members.
async fn broadcast_reaches_all(addr: &str, members: &Light, n: usize, data: &'static str) {
    let sent = control(addr)
        .await
        .send(pb::SendRequest {
            action: "to-all".into(),
            data: data.as_bytes().to_vec().into(),
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::All(pb::All {})),
            }),
            ..Default::default()
        })
        .await
        .expect("broadcast")
        .into_inner();
    assert_eq!(sent.delivered as usize, n);
    let t = Instant::now();
    while members.received() < n && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(members.received(), n, "the broadcast reached all");
}

async fn none_leave(events: &mut tonic::Streaming<pb::ClusterEvent>, during: Duration) {
    let quiet = tokio::time::timeout(during, async {
        while let Ok(Some(ev)) = events.message().await {
            assert_ne!(ev.kind, pb::EventKind::Left as i32, "a member left: {ev:?}");
        }
    });
    let _ = quiet.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_beyond_the_join_rate_wait_their_turn_and_none_is_lost() {
    const N: usize = 500;
    let mut master = Master::start(&[
        "--agent-count",
        "0",
        "--worker-count",
        "0",
        "--join-rate",
        "100",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let metrics = cohort_e2e::metrics::address(&mut master);
    let addr = master.addr.clone();
    let mut events = watch(&addr).await;
    let started = Instant::now();
    let _members = Light::start(&addr, N, "m", "none");
    let mut most_waiting = 0.0f64;
    while ready_count(&addr).await < N && started.elapsed() < Duration::from_secs(120) {
        let text = scrape(&metrics);
        most_waiting = most_waiting.max(value(&text, "cohort_joins_waiting").unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    assert_eq!(ready_count(&addr).await, N, "all READY");
    // 100 a second after a tenth of a second's worth at once: the last
    // 490 take 4.9 s.
    assert!(took >= Duration::from_secs(3), "admitted in {took:?}");
    assert!(most_waiting > 0.0, "joins waited their turn");
    let text = scrape(&metrics);
    assert_eq!(value(&text, "cohort_joins_refused_total"), Some(0.0));
    none_leave(&mut events, Duration::from_secs(2)).await;
    eprintln!("{N} members at 100 joins a second: READY in {took:?}, up to {most_waiting} waiting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_whose_turn_is_more_than_ten_seconds_away_is_refused_with_a_reason() {
    let mut master = Master::start(&[
        "--agent-count",
        "0",
        "--worker-count",
        "0",
        "--join-rate",
        "1",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let metrics = cohort_e2e::metrics::address(&mut master);
    let channel = tonic::transport::Endpoint::from_shared(master.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    // 12 raw joins at once at 1 a second: 1 goes at once, 10 wait up to
    // 10 s, the 12th is refused.
    let joins: Vec<_> = (0..12)
        .map(|i| {
            let channel = channel.clone();
            tokio::spawn(async move { raw_join(&channel, format!("j-{i}")).await })
        })
        .collect();
    // The master has sorted them once its counters say so and the two it
    // answered at once have their answers.
    eventually_async("1 join refused, 10 waiting", || async {
        let text = scrape(&metrics);
        let sorted = value(&text, "cohort_joins_waiting") == Some(10.0)
            && value(&text, "cohort_joins_refused_total") == Some(1.0);
        (sorted && joins.iter().filter(|j| j.is_finished()).count() == 2).then_some(())
    })
    .await;
    let (mut admitted, mut refused) = (0, Vec::new());
    let mut waiting = Vec::new();
    for j in joins {
        if !j.is_finished() {
            waiting.push(j);
            continue;
        }
        match j.await.expect("join task").0 {
            Ok(_) => admitted += 1,
            Err(status) => refused.push(status),
        }
    }
    assert_eq!((admitted, waiting.len(), refused.len()), (1, 10, 1));
    let status = &refused[0];
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("admits 1 joins a second"),
        "a reason a member can log: {status:?}"
    );
    let text = scrape(&metrics);
    assert_eq!(value(&text, "cohort_joins_waiting"), Some(10.0));
    assert_eq!(value(&text, "cohort_joins_refused_total"), Some(1.0));
    // The next one waiting goes in its turn, within a second.
    let admitted_next = async || waiting.iter().any(|j| j.is_finished()).then_some(());
    let within = Duration::from_secs(5);
    eventually_async_within("a waiting join admitted in its turn", within, admitted_next).await;
    // Joins still waiting do not hold up a shutdown: they are told why.
    let still: Vec<_> = waiting.into_iter().filter(|j| !j.is_finished()).collect();
    assert!(still.len() >= 8, "{} still waiting", still.len());
    master.proc.signal("TERM");
    let exited = master.proc.wait_exit(Duration::from_secs(5));
    assert!(exited.is_some_and(|s| s.success()), "exit: {exited:?}");
    for j in still {
        let (answer, _tx) = j.await.expect("join task");
        let status = answer.expect_err("not admitted");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains("shutting down"), "{status:?}");
    }
}

/// One raw join with a hello named `name`: the master's answer, and the
/// sender that keeps the stream open.
async fn raw_join(
    channel: &tonic::transport::Channel,
    name: String,
) -> (
    Result<tonic::Response<tonic::Streaming<pb::MasterFrame>>, tonic::Status>,
    tokio::sync::mpsc::Sender<pb::MemberFrame>,
) {
    let mut client = pb::membership_client::MembershipClient::new(channel.clone());
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let hello = pb::Hello {
        role: pb::Role::Worker as i32,
        name,
        ..Default::default()
    };
    let _ = tx
        .send(pb::MemberFrame {
            kind: Some(Out::Hello(hello)),
        })
        .await;
    let answer = client
        .join(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    (answer, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_master_refuses_new_names_with_a_reason_and_its_members_carry_on() {
    const FULL: usize = 50;
    let master = Master::start(&[
        "--agent-count",
        "0",
        "--worker-count",
        "0",
        "--max-members",
        &FULL.to_string(),
    ]);
    let addr = master.addr.clone();
    let mut events = watch(&addr).await;
    let members = Light::start(&addr, FULL, "m", "to-all");
    wait_ready(&addr, FULL, "filling the master").await;
    // A client with the right to join floods it with new names.
    let channel = tonic::transport::Endpoint::from_shared(master.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    for i in 0..200 {
        let (answer, _tx) = raw_join(&channel, format!("flood-{i}")).await;
        let status = answer.expect_err("a full master refuses");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("the cluster is full: 50 members")
                && status.message().contains("max_members"),
            "a reason the client can log: {status:?}"
        );
    }
    // Those already in are untouched: none left, all READY, and a
    // broadcast reaches every one.
    none_leave(&mut events, Duration::from_secs(2)).await;
    assert_eq!(ready_count(&addr).await, FULL);
    broadcast_reaches_all(&addr, &members, FULL, "still here").await;
    // One leaves: a new name fits again.
    drop(members);
    let t = Instant::now();
    loop {
        let (answer, _tx) = raw_join(&channel, "late".into()).await;
        match answer {
            Ok(_) => break,
            Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                assert!(t.elapsed() < Duration::from_secs(30), "still full: {s:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    }
}
