//! Flow control with the default configuration: a receiver that is slower
//! than its senders slows them down and loses nothing; one that stops
//! reading is disconnected and only then do sends to it fail.

use cohort::{Member, Role, Subscription, Target};
use cohort_proto::pb::{self, member_frame::Kind as Frame};
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

mod common;
use common::*;

fn payload(sender: &str, seq: u64) -> String {
    // 64 bytes, like the benchmark's relay.
    format!("{sender:>8}{seq:056}")
}

fn parse(data: &[u8]) -> (String, u64) {
    let text = std::str::from_utf8(data).expect("utf-8");
    let (sender, seq) = text.split_at(8);
    (sender.trim().to_string(), seq.parse().expect("seq"))
}

/// Receives `per_sender` messages from each of `senders` and checks that
/// each sender's arrive in order with none missing.
async fn receive_in_order(sub: &mut Subscription, senders: &[&str], per_sender: u64) {
    let mut next: std::collections::HashMap<String, u64> =
        senders.iter().map(|s| (s.to_string(), 0)).collect();
    for _ in 0..per_sender * senders.len() as u64 {
        let m = recv(sub).await;
        let (sender, seq) = parse(&m.data);
        let expected = next.get_mut(&sender).expect("a known sender");
        assert_eq!(seq, *expected, "message from {sender} out of order or lost");
        *expected += 1;
    }
}

async fn dropped(master: &TestMaster) -> Vec<(String, u64)> {
    members(master)
        .await
        .into_iter()
        .map(|m| (m.name, m.dropped_messages))
        .filter(|(_, d)| *d > 0)
        .collect()
}

async fn ready_member(master: &TestMaster, name: &str, action: &str) -> (Member, Subscription) {
    let m = master.join(Role::Worker, name).await;
    let sub = m.on(action);
    m.ready().await.expect("ready");
    (m, sub)
}

fn send_frame(to: &str, action: &str, data: String) -> pb::MemberFrame {
    pb::MemberFrame {
        kind: Some(Frame::Send(pb::Envelope {
            action: action.into(),
            data: data.into_bytes().into(),
            target: Some(cohort_proto::Target::Member(to.into()).into()),
            ..Default::default()
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_client_flood_arrives_whole_and_in_order_with_the_default_config() {
    const N: u64 = 200_000;
    let master = TestMaster::start(config()).await;
    let (_sink, mut sub) = ready_member(&master, "sink", "flood").await;

    // A plain gRPC member: one frame per message, no batches, no acks,
    // sending as fast as its stream takes frames.
    let (tx, response) = raw_join(&master, hello("flooder")).await;
    let mut response = response.expect("joined");
    tokio::spawn(async move { while let Ok(Some(_)) = response.message().await {} });
    let sender = tokio::spawn(async move {
        for i in 0..N {
            tx.send(send_frame("sink", "flood", payload("flooder", i)))
                .await
                .expect("stream open");
        }
        tx
    });
    receive_in_order(&mut sub, &["flooder"], N).await;
    let _tx = sender.await.expect("sender");
    assert_eq!(dropped(&master).await, Vec::<(String, u64)>::new());
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_members_lose_nothing_two_into_one_and_both_ways_at_once() {
    const N: u64 = 100_000;
    let master = TestMaster::start(config()).await;
    let (a, mut a_sub) = ready_member(&master, "a", "flood").await;
    let (b, mut b_sub) = ready_member(&master, "b", "flood").await;
    let (_c, mut c_sub) = ready_member(&master, "c", "flood").await;

    let flood = |from: Member, name: &'static str, to: &'static str| {
        tokio::spawn(async move {
            for i in 0..N {
                from.post(Target::Member(to.into()), "flood", payload(name, i))
                    .await
                    .expect("post");
            }
            from
        })
    };

    // Two senders into one receiver.
    let (fa, fb) = (flood(a, "a", "c"), flood(b, "b", "c"));
    receive_in_order(&mut c_sub, &["a", "b"], N).await;
    let (a, b) = (fa.await.expect("a"), fb.await.expect("b"));

    // A and B sending to each other at full speed at once.
    let (fa, fb) = (flood(a, "a", "b"), flood(b, "b", "a"));
    let (ra, rb) = tokio::join!(
        receive_in_order(&mut b_sub, &["a"], N),
        receive_in_order(&mut a_sub, &["b"], N)
    );
    let ((), ()) = (ra, rb);
    let (a, b) = (fa.await.expect("a"), fb.await.expect("b"));
    assert_eq!((a.failed_sends(), b.failed_sends()), (0, 0));
    assert_eq!(dropped(&master).await, Vec::<(String, u64)>::new());
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_stops_reading_is_cut_off_and_only_its_senders_notice() {
    let mut cfg = config();
    cfg.messaging.slow_consumer_timeout = Duration::from_secs(1);
    let master = TestMaster::start(cfg).await;
    let mut control = master.control().await;
    let mut events = control
        .watch_events(pb::WatchEventsRequest::default())
        .await
        .expect("watch")
        .into_inner();

    // A member that joins, says ready, and never reads its stream again.
    let (stuck_tx, stuck) = raw_join(&master, hello("stuck")).await;
    let stuck = stuck.expect("joined");
    stuck_tx
        .send(pb::MemberFrame {
            kind: Some(Frame::Ready(pb::Ready::default())),
        })
        .await
        .expect("ready");
    let sender = master.join(Role::Worker, "sender").await;
    sender.ready().await.expect("ready");
    // Two members with traffic of their own throughout.
    let t = master.join(Role::Worker, "t").await;
    let (u, mut u_req) = ready_member(&master, "u", "ping").await;
    t.ready().await.expect("ready");
    tokio::spawn(async move {
        while let Some(m) = u_req.recv().await {
            let _ = m.reply(m.data.clone()).await;
        }
        drop(u);
    });

    let flood = {
        let sender = sender.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut i = 0u64;
            // Until the master has cut `stuck` off (bounded in count and time).
            while i < 100_000 && started.elapsed() < WAIT {
                if sender
                    .post(
                        Target::Member("stuck".into()),
                        "flood",
                        payload("sender", i),
                    )
                    .await
                    .is_err()
                    || sender.failed_sends() > 0
                {
                    break;
                }
                i += 1;
            }
            i
        })
    };
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    let mut requests = 0;
    while !flood.is_finished() && started.elapsed() < WAIT {
        let t0 = Instant::now();
        t.request(Target::Member("u".into()), "ping", "x", WAIT)
            .await
            .expect("t's requests to u go on while stuck is backed up");
        worst = worst.max(t0.elapsed());
        requests += 1;
    }
    let posted = flood.await.expect("flood");
    assert!(posted < 100_000, "the sender was held back, not buffered");
    assert!(requests > 0);
    // Generous: a held-up master would take seconds.
    assert!(worst < Duration::from_secs(1), "t↔u slowed to {worst:?}");

    // stuck is gone with a reason, the sender learned of the loss, and
    // nobody else was dropped or disconnected.
    let left = tokio::time::timeout(WAIT, async {
        while let Some(ev) = events.next().await {
            let ev = ev.expect("event");
            if ev.kind == pb::EventKind::Left as i32
                && ev.member.as_ref().is_some_and(|m| m.name == "stuck")
            {
                return ev.reason;
            }
        }
        String::new()
    })
    .await
    .expect("stuck leaves");
    assert!(left.contains("slow consumer"), "reason: {left}");
    eventually("the sender seeing its message to stuck fail", || {
        sender.failed_sends() > 0
    })
    .await;
    let err = sender
        .send_to("stuck", "flood", payload("sender", 0))
        .await
        .expect_err("stuck is gone");
    assert!(err.to_string().contains("stuck"), "{err}");
    assert_eq!(names(&master).await, ["sender", "t", "u"]);
    assert_eq!(dropped(&master).await, Vec::<(String, u64)>::new());
    // A connection that never reads holds up a graceful shutdown (up to its
    // grace period): the stuck client goes away first.
    drop((stuck, stuck_tx));
    master.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_held_back_leaves_the_other_streams_of_its_connection_flowing() {
    const KIB: usize = 1024;
    let mut cfg = config();
    // The stall lasts the whole test.
    cfg.messaging.slow_consumer_timeout = Duration::from_secs(120);
    let master = TestMaster::start(cfg).await;
    let (stuck_tx, stuck) = raw_join(&master, hello("stuck")).await;
    let stuck = stuck.expect("joined");
    let (_ok, mut ok_sub) = ready_member(&master, "ok", "flood").await;

    // Two members on one HTTP/2 connection, as a client hosting many
    // members would have them.
    let channel = tonic::transport::Endpoint::from_shared(master.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let open = |name: &'static str| {
        let channel = channel.clone();
        async move {
            let mut client = pb::membership_client::MembershipClient::new(channel);
            let (tx, rx) = tokio::sync::mpsc::channel(64);
            tx.send(hello(name)).await.expect("hello");
            let mut inbound = client
                .join(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .expect("join")
                .into_inner();
            tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
            tx
        }
    };
    let held = open("held").await;
    let free = open("free").await;

    // `held` floods the member that never reads until it is held back.
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let flood = {
        let sent = sent.clone();
        tokio::spawn(async move {
            for i in 0..20_000 {
                let data = format!("{i:0>width$}", width = KIB);
                if held.send(send_frame("stuck", "flood", data)).await.is_err() {
                    break;
                }
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            held
        })
    };
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = sent.load(std::sync::atomic::Ordering::Relaxed);
        if now == last {
            break;
        }
        last = now;
    }
    assert!(!flood.is_finished(), "held is held back ({last} sent)");

    // The other stream of the same connection still gets through.
    for i in 0..2_000u64 {
        let data = format!("{:>8}{i:0>width$}", "free", width = KIB - 8);
        free.send(send_frame("ok", "flood", data))
            .await
            .expect("free's stream is open");
    }
    for i in 0..2_000u64 {
        let m = recv(&mut ok_sub).await;
        assert_eq!(parse(&m.data), ("free".to_string(), i));
    }
    flood.abort();
    drop((stuck, stuck_tx, free));
    master.stop().await;
}
