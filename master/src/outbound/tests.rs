//! The queue's bounds, lanes, batching and closing.

use super::*;
use std::time::Duration;
use tokio_stream::StreamExt;

/// A frame as the member decodes it.
pub(crate) fn decoded(frame: OutFrame) -> pb::MasterFrame {
    use prost::Message;
    pb::MasterFrame::decode(frame.encode_to_vec().as_slice()).expect("the master's frames decode")
}

fn env(n: usize, size: usize) -> Encoded {
    Encoded::new(&pb::Envelope {
        id: n.to_string(),
        data: vec![0u8; size].into(),
        ..Default::default()
    })
}

fn bounds(messages: usize, bytes: usize) -> Bounds {
    Bounds { messages, bytes }
}

fn ready() -> pb::MasterFrame {
    pb::MasterFrame {
        kind: Some(Kind::ClusterReady(pb::ClusterReady {})),
    }
}

#[tokio::test]
async fn data_lane_is_bounded_by_messages_and_bytes() {
    let (tx, _rx) = channel(bounds(2, 1 << 20), false);
    assert!(tx.try_deliver(env(1, 1)).is_ok());
    assert!(tx.try_deliver(env(2, 1)).is_ok());
    assert!(matches!(tx.try_deliver(env(3, 1)), Err(Refused::Full(_))));
    // The control lane has its own bound.
    assert_eq!(tx.push(ready()), Ok(()));

    let (tx, _rx) = channel(bounds(100, 1000), false);
    assert!(tx.try_deliver(env(1, 600)).is_ok());
    assert!(matches!(tx.try_deliver(env(2, 600)), Err(Refused::Full(_))));
}

#[tokio::test(start_paused = true)]
async fn control_lane_never_waits_and_is_bounded() {
    let (tx, mut rx) = channel(bounds(2, 1 << 20), false);
    assert_eq!(tx.push(ready()), Ok(()));
    assert!(!tx.control_over());
    assert_eq!(tx.force_deliver(env(1, 1)), Ok(()));
    assert!(tx.control_over(), "past its bounds");
    assert_eq!(tx.push(ready()), Ok(()));
    assert_eq!(tx.push(ready()), Ok(()));
    assert_eq!(
        tx.push(ready()),
        Err(PushError::Full),
        "past twice the bounds"
    );
    let room = {
        let tx = tx.clone();
        tokio::spawn(async move { tx.control_room().await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!room.is_finished());
    assert!(tx.pressed());
    for _ in 0..3 {
        assert!(rx.next().await.is_some());
    }
    assert_eq!(room.await.expect("join"), Ok(()));
}

#[tokio::test]
async fn batches_only_what_is_queued_and_keeps_order() {
    let (tx, mut rx) = channel(bounds(100, 1 << 20), true);
    for i in 0..3 {
        tx.try_deliver(env(i, 8)).expect("push");
    }
    tx.push(ready()).expect("push");
    tx.try_deliver(env(3, 8)).expect("push");
    tx.finish(Status::ok("done"));
    let mut kinds = Vec::new();
    while let Some(f) = rx.next().await {
        kinds.push(match f.map(decoded) {
            Ok(pb::MasterFrame {
                kind: Some(Kind::DeliverBatch(b)),
            }) => {
                let ids: Vec<_> = b.envelopes.iter().map(|e| e.id.clone()).collect();
                format!("batch{ids:?}")
            }
            Ok(pb::MasterFrame {
                kind: Some(Kind::Deliver(e)),
            }) => format!("deliver {}", e.id),
            Ok(pb::MasterFrame {
                kind: Some(Kind::ClusterReady(_)),
            }) => "ready".into(),
            Ok(pb::MasterFrame {
                kind: Some(Kind::Error(e)),
            }) => format!("error {}", e.message),
            Ok(other) => format!("{other:?}"),
            Err(s) => format!("end {}", s.message()),
        });
    }
    assert_eq!(
        kinds,
        [
            "batch[\"0\", \"1\", \"2\"]",
            "ready",
            "deliver 3",
            "error done",
            "end done"
        ]
    );
    assert_eq!(tx.taken(), 5);
}

#[tokio::test]
async fn room_returns_as_frames_leave() {
    let (tx, mut rx) = channel(bounds(100, 1000), false);
    tx.try_deliver(env(1, 600)).expect("push");
    assert!(rx.next().await.is_some());
    assert!(tx.try_deliver(env(2, 600)).is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_waiting_sender_gets_room_when_the_member_takes_a_frame() {
    let (tx, mut rx) = channel(bounds(1, 1 << 20), false);
    tx.try_deliver(env(1, 1)).expect("push");
    assert!(!tx.pressed());
    let waiter = {
        let tx = tx.clone();
        tokio::spawn(async move {
            let e = env(2, 1);
            let room = tx.reserve(&e).await?;
            tx.deliver_into(room, e)
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!waiter.is_finished(), "no room yet: the sender waits");
    assert!(tx.pressed());
    assert!(rx.next().await.is_some());
    assert_eq!(waiter.await.expect("join"), Ok(()));
    let second = decoded(rx.next().await.expect("frame").expect("ok"));
    assert!(matches!(second.kind, Some(Kind::Deliver(e)) if e.id == "2"));
    assert!(!tx.pressed());
}

#[tokio::test(start_paused = true)]
async fn close_frees_the_queue_wakes_waiters_and_ends_the_stream_at_once() {
    let (tx, mut rx) = channel(bounds(1, 1 << 20), false);
    tx.try_deliver(env(1, 1)).expect("push");
    let waiter = {
        let tx = tx.clone();
        tokio::spawn(async move { tx.reserve(&env(2, 1)).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    tx.close(Status::unavailable("slow consumer"));
    assert_eq!(waiter.await.expect("join"), Err(PushError::Closed));
    assert_eq!(tx.depth(), 0);
    let told = decoded(rx.next().await.expect("error frame").expect("a frame"));
    assert!(matches!(told.kind, Some(Kind::Error(e)) if e.message == "slow consumer"));
    let end = rx.next().await.expect("status");
    assert_eq!(end.expect_err("status").message(), "slow consumer");
    assert!(rx.next().await.is_none());
    assert_eq!(tx.push(ready()), Err(PushError::Closed));
}

#[tokio::test]
async fn a_dropped_stream_refuses_pushes() {
    let (tx, rx) = channel(bounds(4, 1 << 20), false);
    tx.try_deliver(env(1, 1)).expect("push");
    drop(rx);
    assert_eq!(tx.depth(), 0);
    assert!(matches!(tx.try_deliver(env(2, 1)), Err(Refused::Closed)));
    assert_eq!(
        tx.reserve(&env(3, 1)).await.map(|_| ()),
        Err(PushError::Closed)
    );
}
