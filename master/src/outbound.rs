//! A member's outbound queue, in two lanes that share one FIFO:
//!
//! - the **data lane** carries deliveries (envelopes from other members). It
//!   is bounded in messages and bytes by two fair semaphores, so a sender can
//!   either try for room ([`Outbound::try_deliver`]) or wait for it
//!   ([`Outbound::reserve`]); waiters are served in arrival order, and a
//!   frame's room is given back when tonic takes it off the queue;
//! - the **control lane** carries everything the master itself says (welcome,
//!   heartbeat acks, send results, events, drain) and deliveries a member
//!   must never wait for (to itself, held messages at ClusterReady). A push
//!   never waits: past twice the bounds a frame is refused and counted.
//!   Past the bounds themselves, the member's own reader pauses
//!   ([`Outbound::control_room`]) until the member has read some, so a member
//!   whose own frames cause the frames (results, its own broadcasts) cannot
//!   outrun its reading.
//!
//! The registry pushes; tonic polls the [`OutboundStream`] as the Join
//! response. Deliveries already queued are packed into one `deliver_batch`
//! frame for members that accept batches, so batching saves syscalls without
//! ever waiting for more. [`Outbound::close`] ends the stream at once and
//! frees what was queued, even if the member never reads again.

use cohort_proto::pb::{self, master_frame::Kind};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::sync::{Notify, Semaphore};
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
    /// The lane is at its message or byte limit.
    Full,
    /// The member's stream is gone.
    Closed,
}

/// Why [`Outbound::try_deliver`] did not queue a delivery.
#[derive(Debug)]
pub enum Refused {
    /// No room now: the envelope, to wait for room or to drop.
    Full(Box<pb::Envelope>),
    /// The member's stream is gone.
    Closed,
}

/// The queue's bounds.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Most frames in each lane.
    pub messages: usize,
    /// Most bytes in each lane.
    pub bytes: usize,
}

/// Room for one delivery, taken by [`Outbound::reserve`].
#[derive(Debug)]
#[must_use = "room not used for a delivery stays taken until the queue closes"]
pub struct Room {
    cost: usize,
}

/// A handle on a member's queue, cloned by whoever needs to wait for room.
#[derive(Clone, Debug)]
pub struct Outbound {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    slots: Semaphore,
    bytes: Semaphore,
    bounds: Bounds,
    /// Frames taken off the queue so far: the member's progress.
    taken: AtomicU64,
    /// Senders waiting for room right now.
    waiting: AtomicUsize,
    /// A delivery was refused since the member last took a frame.
    refused: AtomicBool,
    /// Woken when control frames leave, for a reader in `control_room`.
    control_freed: Notify,
    control_waiting: AtomicBool,
}

#[derive(Debug)]
struct State {
    items: VecDeque<Entry>,
    control_frames: usize,
    control_bytes: usize,
    waker: Option<Waker>,
    /// Set once: the stream ends with this status, after what is queued
    /// (`drain`) or at once.
    end: Option<(Status, bool)>,
    /// The stream was dropped or has ended: nothing more is accepted.
    closed: bool,
}

#[derive(Debug)]
struct Entry {
    frame: pb::MasterFrame,
    lane: Lane,
}

#[derive(Debug, Clone, Copy)]
enum Lane {
    Data(usize),
    Control(usize),
}

/// What one frame costs against the byte bound.
fn cost(frame: &pb::MasterFrame) -> usize {
    match &frame.kind {
        Some(Kind::Deliver(e)) => envelope_cost(e),
        Some(Kind::MemberEvent(e)) => 64 + e.reason.len() + e.member.as_ref().map_or(0, info_cost),
        Some(Kind::Welcome(w)) => 64 + w.members.iter().map(info_cost).sum::<usize>(),
        Some(Kind::SendResult(r)) => 64 + r.id.len() + r.message.len(),
        _ => 64,
    }
}

fn info_cost(m: &pb::MemberInfo) -> usize {
    let labels: usize = m.labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    128 + m.name.len() + m.instance_id.len() + m.host.len() + m.version.len() + labels
}

fn envelope_cost(e: &pb::Envelope) -> usize {
    64 + e.data.len() + e.action.len() + e.id.len() + e.from.len() + e.reply_to.len()
}

fn deliver_frame(env: pb::Envelope) -> pb::MasterFrame {
    pb::MasterFrame {
        kind: Some(Kind::Deliver(env)),
    }
}

/// Creates a queue with `bounds` per lane.
pub fn channel(bounds: Bounds, batches: bool) -> (Outbound, OutboundStream) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            control_frames: 0,
            control_bytes: 0,
            waker: None,
            end: None,
            closed: false,
        }),
        slots: Semaphore::new(bounds.messages),
        bytes: Semaphore::new(bounds.bytes),
        bounds,
        taken: AtomicU64::new(0),
        waiting: AtomicUsize::new(0),
        refused: AtomicBool::new(false),
        control_freed: Notify::new(),
        control_waiting: AtomicBool::new(false),
    });
    (
        Outbound {
            shared: shared.clone(),
        },
        OutboundStream {
            shared,
            batches,
            done: false,
        },
    )
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enqueue(&self, entry: Entry) -> Result<(), PushError> {
        let mut st = self.lock();
        if st.closed || st.end.is_some() {
            drop(st);
            self.give_back(entry.lane);
            return Err(PushError::Closed);
        }
        st.items.push_back(entry);
        let waker = st.waker.take();
        drop(st);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Returns a frame's room once it left the queue (or never entered).
    fn give_back(&self, lane: Lane) {
        match lane {
            Lane::Data(cost) => {
                self.slots.add_permits(1);
                self.bytes.add_permits(cost);
            }
            Lane::Control(cost) => {
                let mut st = self.lock();
                st.control_frames -= 1;
                st.control_bytes -= cost;
                drop(st);
                if self.control_waiting.load(Ordering::Relaxed) {
                    self.control_freed.notify_waiters();
                }
            }
        }
    }

    fn data_cost(&self, env: &pb::Envelope) -> u32 {
        // A frame larger than the whole byte bound still fits alone.
        let c = envelope_cost(env).min(self.bounds.bytes);
        u32::try_from(c).unwrap_or(u32::MAX)
    }

    /// Ends the stream; with `drain` after what is queued, else at once,
    /// freeing the queue.
    fn end(&self, status: Status, drain: bool) {
        let mut st = self.lock();
        if st.end.is_some() || st.closed {
            return;
        }
        st.end = Some((status, drain));
        let dropped = if drain {
            VecDeque::new()
        } else {
            std::mem::take(&mut st.items)
        };
        let waker = st.waker.take();
        drop(st);
        self.slots.close();
        self.bytes.close();
        self.control_freed.notify_waiters();
        for e in dropped {
            self.give_back(e.lane);
        }
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Outbound {
    /// Queues a frame of the master's own in the control lane, never waiting.
    pub fn push(&self, frame: pb::MasterFrame) -> Result<(), PushError> {
        let c = cost(&frame);
        {
            let mut st = self.shared.lock();
            let b = self.shared.bounds;
            if st.control_frames >= 2 * b.messages || st.control_bytes + c > 2 * b.bytes {
                return Err(PushError::Full);
            }
            st.control_frames += 1;
            st.control_bytes += c;
        }
        self.shared.enqueue(Entry {
            frame,
            lane: Lane::Control(c),
        })
    }

    /// Queues a delivery in the control lane: for deliveries the member must
    /// never wait on (its own broadcasts, messages held until ClusterReady).
    pub fn force_deliver(&self, env: pb::Envelope) -> Result<(), PushError> {
        self.push(deliver_frame(env))
    }

    /// Queues a delivery if the data lane has room now; a full lane hands
    /// the envelope back.
    pub fn try_deliver(&self, env: pb::Envelope) -> Result<(), Refused> {
        let s = &self.shared;
        let c = s.data_cost(&env);
        let room = s.slots.try_acquire().and_then(|slot| {
            let bytes = s.bytes.try_acquire_many(c)?;
            slot.forget();
            bytes.forget();
            Ok(())
        });
        match room {
            Ok(()) => s
                .enqueue(Entry {
                    frame: deliver_frame(env),
                    lane: Lane::Data(c as usize),
                })
                .map_err(|_| Refused::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(Refused::Full(Box::new(env))),
            Err(tokio::sync::TryAcquireError::Closed) => Err(Refused::Closed),
        }
    }

    /// Whether the control lane is past its bounds: the member's own reader
    /// should wait in [`control_room`](Self::control_room) before it reads on.
    pub fn control_over(&self) -> bool {
        let st = self.shared.lock();
        let b = self.shared.bounds;
        st.control_frames >= b.messages || st.control_bytes >= b.bytes
    }

    /// Waits until the control lane is back within its bounds. Fails when
    /// the queue closes.
    pub async fn control_room(&self) -> Result<(), PushError> {
        let s = &self.shared;
        s.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&s.waiting);
        loop {
            let freed = s.control_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            s.control_waiting.store(true, Ordering::Relaxed);
            {
                let st = s.lock();
                if st.closed || st.end.is_some() {
                    return Err(PushError::Closed);
                }
            }
            if !self.control_over() {
                s.control_waiting.store(false, Ordering::Relaxed);
                return Ok(());
            }
            freed.await;
        }
    }

    /// Notes that a delivery was refused for lack of room (the slow-consumer
    /// clock looks at it).
    pub fn mark_refused(&self) {
        self.shared.refused.store(true, Ordering::Relaxed);
    }

    /// Waits for room for `env` in the data lane, in arrival order. Fails
    /// only when the queue closes.
    pub fn reserve(
        &self,
        env: &pb::Envelope,
    ) -> impl Future<Output = Result<Room, PushError>> + use<'_> {
        let s = &self.shared;
        let c = s.data_cost(env);
        async move {
            s.waiting.fetch_add(1, Ordering::Relaxed);
            let _waiting = Waiting(&s.waiting);
            let slot = s.slots.acquire().await.map_err(|_| PushError::Closed)?;
            let bytes = s
                .bytes
                .acquire_many(c)
                .await
                .map_err(|_| PushError::Closed)?;
            slot.forget();
            bytes.forget();
            Ok(Room { cost: c as usize })
        }
    }

    /// Queues a delivery into room taken by [`reserve`](Self::reserve).
    pub fn deliver_into(&self, room: Room, env: pb::Envelope) -> Result<(), PushError> {
        self.shared.enqueue(Entry {
            frame: deliver_frame(env),
            lane: Lane::Data(room.cost),
        })
    }

    /// Ends the stream with `status` at once; whatever was queued is dropped
    /// and blocked senders are woken with [`PushError::Closed`].
    pub fn close(&self, status: Status) {
        self.shared.end(status, false);
    }

    /// Ends the stream with `status` after what is already queued.
    pub fn finish(&self, status: Status) {
        self.shared.end(status, true);
    }

    /// Frames the member has taken so far.
    pub fn taken(&self) -> u64 {
        self.shared.taken.load(Ordering::Relaxed)
    }

    /// Whether senders are held back by this queue: one waits for room, or
    /// a delivery was refused since the member last took a frame.
    pub fn pressed(&self) -> bool {
        self.shared.waiting.load(Ordering::Relaxed) > 0
            || self.shared.refused.load(Ordering::Relaxed)
    }

    /// Frames queued now.
    pub fn depth(&self) -> usize {
        self.shared.lock().items.len()
    }
}

/// Counts a waiting sender for as long as it waits (including when its
/// future is dropped).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The receiving half, polled by tonic as the Join response stream.
pub struct OutboundStream {
    shared: Arc<Shared>,
    batches: bool,
    done: bool,
}

impl OutboundStream {
    /// Takes the next entry, or says why there is none.
    fn take(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let mut st = self.shared.lock();
        // An end without drain emptied the queue already.
        let Some(entry) = st.items.pop_front() else {
            if let Some((status, _)) = st.end.take() {
                st.closed = true;
                return Poll::Ready(Some(Err(status)));
            }
            st.waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let first = entry.frame;
        let mut lanes = vec![entry.lane];
        let batchable = self.batches && matches!(first.kind, Some(Kind::Deliver(_)));
        let frame = if batchable {
            let Some(Kind::Deliver(env)) = first.kind else {
                unreachable!("checked above")
            };
            let mut bytes = envelope_cost(&env);
            let mut envelopes = vec![env];
            while envelopes.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                let next_is_delivery = st
                    .items
                    .front()
                    .is_some_and(|e| matches!(e.frame.kind, Some(Kind::Deliver(_))));
                if !next_is_delivery {
                    break;
                }
                let Some(Entry {
                    frame:
                        pb::MasterFrame {
                            kind: Some(Kind::Deliver(e)),
                        },
                    lane,
                }) = st.items.pop_front()
                else {
                    break;
                };
                bytes += envelope_cost(&e);
                envelopes.push(e);
                lanes.push(lane);
            }
            let kind = if envelopes.len() == 1 {
                Kind::Deliver(envelopes.remove(0))
            } else {
                Kind::DeliverBatch(pb::Envelopes { envelopes })
            };
            pb::MasterFrame { kind: Some(kind) }
        } else {
            first
        };
        drop(st);
        let s = &self.shared;
        s.taken.fetch_add(lanes.len() as u64, Ordering::Relaxed);
        s.refused.store(false, Ordering::Relaxed);
        for lane in lanes {
            s.give_back(lane);
        }
        Poll::Ready(Some(Ok(frame)))
    }
}

impl Stream for OutboundStream {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let next = self.take(cx);
        if let Poll::Ready(Some(Err(_))) = next {
            self.done = true;
        }
        next
    }
}

impl Drop for OutboundStream {
    fn drop(&mut self) {
        // The member is gone: free what it never took and wake the senders
        // that wait for it.
        let s = &self.shared;
        let items = {
            let mut st = s.lock();
            st.closed = true;
            st.waker = None;
            std::mem::take(&mut st.items)
        };
        s.slots.close();
        s.bytes.close();
        s.control_freed.notify_waiters();
        for e in items {
            s.give_back(e.lane);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio_stream::StreamExt;

    fn env(n: usize, size: usize) -> pb::Envelope {
        pb::Envelope {
            id: n.to_string(),
            data: vec![0u8; size].into(),
            ..Default::default()
        }
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
            kinds.push(match f {
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
        let second = rx.next().await.expect("frame").expect("ok");
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
}
