//! Many members on one real master: 2,000 light members (raw gRPC streams,
//! 100 per connection, heartbeats at 1 s, reconnecting with jittered
//! backoff like the SDK) join all at once. None is evicted, all are READY,
//! a broadcast reaches every one, nobody's queue drops a message, and after
//! the master is killed and restarted on the same address all register
//! again.

use cohort_e2e::{Master, bin, control};
use cohort_proto::pb::{self, master_frame::Kind as In, member_frame::Kind as Out};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const MEMBERS: usize = 2_000;
const PER_CONNECTION: usize = 100;

fn frame(kind: Out) -> pb::MemberFrame {
    pb::MemberFrame { kind: Some(kind) }
}

/// One light member: hello + ready, a heartbeat a second, counts the
/// deliveries of `action`; joins again after its stream ends.
async fn member(channel: tonic::transport::Channel, name: String, got: Arc<AtomicUsize>) {
    let mut attempt = 0u32;
    loop {
        let (tx, rx) = mpsc::channel(8);
        let hello = pb::Hello {
            role: pb::Role::Worker as i32,
            name: name.clone(),
            accepts_batches: true,
            ..Default::default()
        };
        let _ = tx.send(frame(Out::Hello(hello))).await;
        let _ = tx.send(frame(Out::Ready(pb::Ready {}))).await;
        let mut client = pb::membership_client::MembershipClient::new(channel.clone());
        if let Ok(response) = client
            .join(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            attempt = 0;
            let beat = tokio::spawn(async move {
                let mut seq = 0;
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    seq += 1;
                    let hb = pb::Heartbeat {
                        seq,
                        ..Default::default()
                    };
                    if tx.send(frame(Out::Heartbeat(hb))).await.is_err() {
                        return;
                    }
                }
            });
            let mut inbound = response.into_inner();
            while let Ok(Some(f)) = inbound.message().await {
                let n = match f.kind {
                    Some(In::Deliver(e)) => usize::from(e.action == "to-all"),
                    Some(In::DeliverBatch(b)) => {
                        b.envelopes.iter().filter(|e| e.action == "to-all").count()
                    }
                    _ => 0,
                };
                got.fetch_add(n, Ordering::Relaxed);
            }
            beat.abort();
        }
        // The SDK's backoff: 1 s growing ×1.6, ±20 % jitter (shortened).
        attempt += 1;
        let base = 200.0 * 1.6f64.powi(attempt.min(6) as i32);
        let jitter = 0.8 + 0.4 * (rand_unit(&name, attempt));
        tokio::time::sleep(Duration::from_millis((base * jitter) as u64)).await;
    }
}

/// A deterministic spread in [0, 1) per member and attempt.
fn rand_unit(name: &str, attempt: u32) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (name, attempt).hash(&mut h);
    (h.finish() % 10_000) as f64 / 10_000.0
}

async fn ready_count(addr: &str) -> usize {
    let Ok(mut c) = pb::control_client::ControlClient::connect(format!("http://{addr}")).await
    else {
        return 0;
    };
    let Ok(info) = c.cluster_info(pb::ClusterInfoRequest {}).await else {
        return 0;
    };
    info.into_inner()
        .counts
        .iter()
        .filter(|c| c.state == pb::MemberState::Ready as i32)
        .map(|c| c.count as usize)
        .sum()
}

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
    let got = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let mut channel = None;
    for i in 0..MEMBERS {
        if i % PER_CONNECTION == 0 {
            channel = Some(
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .expect("endpoint")
                    .connect_lazy(),
            );
        }
        let ch = channel.clone().expect("channel");
        tasks.push(tokio::spawn(member(ch, format!("m-{i}"), got.clone())));
    }
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
    while got.load(Ordering::Relaxed) < MEMBERS && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        got.load(Ordering::Relaxed),
        MEMBERS,
        "the broadcast reached all"
    );
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
    for t in tasks {
        t.abort();
    }
    proc.signal("TERM");
    let _ = proc.wait_exit(Duration::from_secs(15));
}
