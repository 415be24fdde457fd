//! Streams that never read cannot make the real `cohort-master` buffer
//! without bound: each costs at most its queue's bound until it is cut off
//! as a slow consumer, and the sender feeding them is never stuck.

use cohort::{MemberBuilder, Role, Target};
use cohort_e2e::{Master, eventually_async, members, rss_mib};
use cohort_proto::pb::{self, member_frame::Kind as Frame};
use std::time::{Duration, Instant};

const STUCK: usize = 50;
const MESSAGE: usize = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_never_read_cost_a_bounded_amount_and_are_cut_off() {
    let master = Master::start(&[
        "--agent-count",
        "0",
        "--worker-count",
        "0",
        "--slow-consumer-timeout",
        "2s",
    ]);
    let pid = master.proc.child.id();
    let before = rss_mib(pid);

    // STUCK members over a few connections: hello, ready, and never a read.
    let mut held = Vec::new();
    for c in 0..5 {
        let channel = tonic::transport::Endpoint::from_shared(master.url())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        for i in 0..STUCK / 5 {
            let mut client = pb::membership_client::MembershipClient::new(channel.clone());
            let frames = vec![
                pb::MemberFrame {
                    kind: Some(Frame::Hello(pb::Hello {
                        role: pb::Role::Worker as i32,
                        name: format!("stuck-{c}-{i}"),
                        ..Default::default()
                    })),
                },
                pb::MemberFrame {
                    kind: Some(Frame::Ready(pb::Ready::default())),
                },
            ];
            // The request stream stays open (pending) after the two frames.
            let outbound =
                tokio_stream::StreamExt::chain(tokio_stream::iter(frames), tokio_stream::pending());
            held.push(client.join(outbound).await.expect("join"));
        }
    }
    eventually_async("every stuck member joined", || async {
        (members(&master.addr).await.len() == STUCK).then_some(())
    })
    .await;

    // One healthy sender broadcasts 1 KiB messages as fast as it may.
    let sender = MemberBuilder::new(master.url(), Role::Worker)
        .name("sender")
        .join()
        .await
        .expect("sender joins");
    let mut own = sender.on("flood");
    tokio::spawn(async move { while own.recv().await.is_some() {} });
    sender.ready().await.expect("ready");
    let payload = vec![b'x'; MESSAGE];
    let started = Instant::now();
    let mut peak = before;
    let mut sent = 0u32;
    // Bounded in count and time; the stuck members are cut off after 2 s.
    while sent < 20_000 && started.elapsed() < Duration::from_secs(20) {
        sender
            .post(Target::All, "flood", payload.clone())
            .await
            .expect("post");
        sent += 1;
        if sent.is_multiple_of(256) {
            peak = peak.max(rss_mib(pid));
        }
    }
    peak = peak.max(rss_mib(pid));
    assert_eq!(sent, 20_000, "the sender was held back for good");

    let left = eventually_async("the stuck members are cut off", || async {
        let m = members(&master.addr).await;
        (m.len() == 1).then_some(m)
    })
    .await;
    assert_eq!(left[0].name, "sender");
    assert_eq!(left[0].dropped_messages, 0);
    // Each stuck member may hold its queue's 1,024 messages (about 1.1 MiB
    // here) plus its stream's buffers; far less than the 20,000 × 50 × 1 KiB
    // (≈ 1 GB) the flood would cost unbounded.
    let bound = before + STUCK as f64 * 2.0 + 64.0;
    println!("master RSS: {before:.1} MiB before, {peak:.1} MiB at peak, {sent} broadcasts");
    assert!(
        peak < bound,
        "master RSS {before:.0} MiB before, {peak:.0} MiB at peak (bound {bound:.0})"
    );
    drop(held);
}
