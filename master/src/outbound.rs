//! A member's outbound queue: bounded in messages and in bytes, never
//! blocking the sender. The registry pushes frames; tonic polls the
//! [`OutboundStream`] as the Join response. Deliveries already queued are
//! packed into one `deliver_batch` frame for members that accept batches, so
//! batching saves syscalls without ever waiting for more.

use cohort_proto::pb::{self, master_frame::Kind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::Status;

type Item = Result<pb::MasterFrame, Status>;

/// Most envelopes packed into one batch frame.
const MAX_BATCH: usize = 256;
/// Most payload bytes packed into one batch frame (well under the 4 MiB limit).
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue is at its message or byte limit.
    Full,
    /// The member's stream is gone.
    Closed,
}

/// The sending half, owned by the registry.
#[derive(Debug)]
pub struct OutboundTx {
    tx: mpsc::Sender<Item>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

/// What one frame costs against the byte limit.
fn cost(frame: &pb::MasterFrame) -> usize {
    match &frame.kind {
        Some(Kind::Deliver(e)) => envelope_cost(e),
        _ => 64,
    }
}

fn envelope_cost(e: &pb::Envelope) -> usize {
    64 + e.data.len() + e.action.len() + e.id.len() + e.from.len()
}

/// Creates a queue of at most `max_messages` frames and `max_bytes` bytes.
pub fn channel(
    max_messages: usize,
    max_bytes: usize,
    batches: bool,
) -> (OutboundTx, OutboundStream) {
    let (tx, rx) = mpsc::channel(max_messages);
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    (
        OutboundTx {
            tx,
            queued_bytes: queued_bytes.clone(),
            max_bytes,
        },
        OutboundStream {
            rx,
            queued_bytes,
            batches,
            stash: None,
        },
    )
}

impl OutboundTx {
    /// Queues a frame without waiting.
    pub fn push(&self, frame: pb::MasterFrame) -> Result<(), PushError> {
        let c = cost(&frame);
        if self.queued_bytes.load(Ordering::Relaxed) + c > self.max_bytes {
            return Err(PushError::Full);
        }
        match self.tx.try_send(Ok(frame)) {
            Ok(()) => {
                self.queued_bytes.fetch_add(c, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(PushError::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PushError::Closed),
        }
    }

    /// Ends the stream with `status` after what is already queued; if the
    /// queue is full the stream simply ends when this sender is dropped.
    pub fn close_with(self, status: Status) {
        // Full or closed both end the stream once `self` drops: nothing to do.
        let _ = self.tx.try_send(Err(status));
    }
}

/// The receiving half, polled by tonic as the Join response stream.
pub struct OutboundStream {
    rx: mpsc::Receiver<Item>,
    queued_bytes: Arc<AtomicUsize>,
    batches: bool,
    stash: Option<Item>,
}

impl OutboundStream {
    fn release(&self, frame: &pb::MasterFrame) {
        self.queued_bytes.fetch_sub(cost(frame), Ordering::Relaxed);
    }
}

impl Stream for OutboundStream {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let first = match self.stash.take() {
            Some(item) => item,
            None => match self.rx.poll_recv(cx) {
                Poll::Ready(Some(item)) => item,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            },
        };
        let frame = match first {
            Ok(frame) => frame,
            err @ Err(_) => return Poll::Ready(Some(err)),
        };
        self.release(&frame);
        let Some(Kind::Deliver(env)) = frame.kind else {
            return Poll::Ready(Some(Ok(frame)));
        };
        if !self.batches {
            return Poll::Ready(Some(Ok(pb::MasterFrame {
                kind: Some(Kind::Deliver(env)),
            })));
        }
        let mut bytes = envelope_cost(&env);
        let mut envelopes = vec![env];
        while envelopes.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match self.rx.try_recv() {
                Ok(Ok(pb::MasterFrame {
                    kind: Some(Kind::Deliver(e)),
                })) => {
                    let c = envelope_cost(&e);
                    self.queued_bytes.fetch_sub(c, Ordering::Relaxed);
                    bytes += c;
                    envelopes.push(e);
                }
                Ok(other) => {
                    self.stash = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let kind = if envelopes.len() == 1 {
            Kind::Deliver(envelopes.remove(0))
        } else {
            Kind::DeliverBatch(pb::Envelopes { envelopes })
        };
        Poll::Ready(Some(Ok(pb::MasterFrame { kind: Some(kind) })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn deliver(n: usize, size: usize) -> pb::MasterFrame {
        pb::MasterFrame {
            kind: Some(Kind::Deliver(pb::Envelope {
                id: n.to_string(),
                data: vec![0u8; size].into(),
                ..Default::default()
            })),
        }
    }

    #[tokio::test]
    async fn bounded_by_messages_and_bytes() {
        let (tx, _rx) = channel(2, 1 << 20, false);
        assert_eq!(tx.push(deliver(1, 1)), Ok(()));
        assert_eq!(tx.push(deliver(2, 1)), Ok(()));
        assert_eq!(tx.push(deliver(3, 1)), Err(PushError::Full));

        let (tx, _rx) = channel(100, 1000, false);
        assert_eq!(tx.push(deliver(1, 600)), Ok(()));
        assert_eq!(tx.push(deliver(2, 600)), Err(PushError::Full));
    }

    #[tokio::test]
    async fn batches_only_what_is_queued_and_keeps_order() {
        let (tx, mut rx) = channel(100, 1 << 20, true);
        for i in 0..3 {
            tx.push(deliver(i, 8)).expect("push");
        }
        tx.push(pb::MasterFrame {
            kind: Some(Kind::ClusterReady(pb::ClusterReady {})),
        })
        .expect("push");
        tx.push(deliver(3, 8)).expect("push");
        drop(tx);
        let frames: Vec<_> = (&mut rx).collect::<Vec<_>>().await;
        let kinds: Vec<String> = frames
            .into_iter()
            .map(|f| match f.expect("ok").kind {
                Some(Kind::DeliverBatch(b)) => {
                    let ids: Vec<_> = b.envelopes.iter().map(|e| e.id.clone()).collect();
                    format!("batch{ids:?}")
                }
                Some(Kind::Deliver(e)) => format!("deliver {}", e.id),
                Some(Kind::ClusterReady(_)) => "ready".into(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["batch[\"0\", \"1\", \"2\"]", "ready", "deliver 3"]);
        assert_eq!(rx.queued_bytes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn bytes_are_released_as_frames_leave() {
        let (tx, mut rx) = channel(100, 1000, false);
        tx.push(deliver(1, 600)).expect("push");
        assert!(rx.next().await.is_some());
        assert_eq!(tx.push(deliver(2, 600)), Ok(()));
    }
}
