//! Many members on one real master: 2,000 light members (raw gRPC streams,
//! 100 per connection, heartbeats at 1 s, reconnecting with jittered
//! backoff like the SDK) join all at once. None is evicted, all are READY,
//! a broadcast reaches every one, nobody's queue drops a message, and after
//! the master is killed and restarted on the same address all register
//! again.

use cohort_e2e::light::{Light, ready_count};
use cohort_e2e::{Master, bin, control};
use cohort_proto::pb;
use std::time::{Duration, Instant};

const MEMBERS: usize = 2_000;

async fn wait_ready(addr: &str, what: &str) -> Duration {
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed() < Duration::from_secs(120) {
        n = ready_count(addr).await;
        if n == MEMBERS {
            return t.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("{what}: {n} of {MEMBERS} READY after 120 s");
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
    let mut events = control(&addr)
        .await
        .watch_events(pb::WatchEventsRequest {})
        .await
        .expect("watch")
        .into_inner();
    let members = Light::start(&addr, MEMBERS, "m", "to-all");
    let joined = wait_ready(&addr, "joining at once").await;
    eprintln!("{MEMBERS} members READY in {joined:?}");
    // Nobody was evicted, then or in the next seconds of heartbeats.
    let quiet = tokio::time::timeout(Duration::from_secs(3), async {
        while let Ok(Some(ev)) = events.message().await {
            assert_ne!(
                ev.kind,
                pb::EventKind::Left as i32,
                "a member left during the join storm: {ev:?}"
            );
        }
    });
    let _ = quiet.await;
    assert_eq!(ready_count(&addr).await, MEMBERS);

    let sent = control(&addr)
        .await
        .send(pb::SendRequest {
            action: "to-all".into(),
            data: b"hello".to_vec().into(),
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::All(pb::All {})),
            }),
            ..Default::default()
        })
        .await
        .expect("broadcast")
        .into_inner();
    assert_eq!(sent.delivered as usize, MEMBERS);
    let t = Instant::now();
    while members.received() < MEMBERS && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(members.received(), MEMBERS, "the broadcast reached all");
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
    let back = wait_ready(&addr, "after the master restarted").await;
    eprintln!("{MEMBERS} members back in {back:?}");
    drop(members);
    proc.signal("TERM");
    let _ = proc.wait_exit(Duration::from_secs(15));
}
