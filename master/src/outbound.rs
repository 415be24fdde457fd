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
//! response. A delivery is queued as its envelope encoded once
//! ([`Encoded`]): a broadcast shares the same bytes among all its
//! receivers. Deliveries already queued are packed into one `deliver_batch`
//! frame for members that accept batches, so batching saves syscalls without
//! ever waiting for more. [`Outbound::close`] ends the stream at once and
//! frees what was queued, even if the member never reads again.

use cohort_proto::frame::{Encoded, OutFrame};
use cohort_proto::pb::{self, master_frame::Kind};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::sync::{Notify, Semaphore};
use tokio_stream::Stream;
use tonic::Status;

type Item = Result<OutFrame, Status>;

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
    Full(Encoded),
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
    /// The ending's `error` frame went out.
    told: bool,
}

#[derive(Debug)]
struct Entry {
    frame: OutFrame,
    lane: Lane,
}

#[derive(Debug, Clone, Copy)]
enum Lane {
    Data(usize),
    Control(usize),
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
            told: false,
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
            self.give_back(Freed::of([entry.lane]));
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

    /// Returns the room of frames that left the queue (or never entered).
    fn give_back(&self, freed: Freed) {
        if freed.data > 0 {
            self.slots.add_permits(freed.data);
            self.bytes.add_permits(freed.data_bytes);
        }
        if freed.control > 0 {
            let mut st = self.lock();
            st.control_frames -= freed.control;
            st.control_bytes -= freed.control_bytes;
            drop(st);
            if self.control_waiting.load(Ordering::Relaxed) {
                self.control_freed.notify_waiters();
            }
        }
    }

    fn data_cost(&self, env: &Encoded) -> u32 {
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
        self.give_back(Freed::of(dropped.iter().map(|e| e.lane)));
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Outbound {
    /// Queues a frame of the master's own in the control lane, never waiting.
    pub fn push(&self, frame: pb::MasterFrame) -> Result<(), PushError> {
        self.push_out(cost(&frame), frame.into())
    }

    fn push_out(&self, c: usize, frame: OutFrame) -> Result<(), PushError> {
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
    pub fn force_deliver(&self, env: Encoded) -> Result<(), PushError> {
        self.push_out(envelope_cost(&env), OutFrame::Deliver(env))
    }

    /// Queues a delivery if the data lane has room now; a full lane hands
    /// the envelope back.
    pub fn try_deliver(&self, env: Encoded) -> Result<(), Refused> {
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
                    frame: OutFrame::Deliver(env),
                    lane: Lane::Data(c as usize),
                })
                .map_err(|_| Refused::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(Refused::Full(env)),
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
        env: &Encoded,
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
    pub fn deliver_into(&self, room: Room, env: Encoded) -> Result<(), PushError> {
        self.shared.enqueue(Entry {
            frame: OutFrame::Deliver(env),
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

mod cost;
mod stream;
#[cfg(test)]
pub(crate) mod tests;

use cost::{Freed, cost, envelope_cost};
pub use stream::OutboundStream;
