//! Flow control: what a member's reader does when a delivery finds its
//! receiver's queue full.
//!
//! In the default `overflow = "block"` mode the registry does not drop such a
//! delivery: it hands it back as a [`Stall`], and the sender's reader task
//! waits for room in that receiver's queue before it reads the sender's next
//! frame. HTTP/2 flow control then slows the sender itself (its stream window
//! fills, its SDK `post`/`send` waits), so nothing is lost and the master
//! buffers no more than each queue's bound plus each stream's window.
//!
//! Why this cannot deadlock the master:
//! - a reader task waits for room only in **other** members' queues. A
//!   delivery to the sender itself (its own broadcast) and everything the
//!   master says to the sender (results, acks, events) go into the sender's
//!   control lane, which never waits (see [`crate::outbound`]); the
//!   registry's mutex is never held while waiting;
//! - the one pause on the sender's own queue ([`pause_for_own_room`]) comes
//!   *between* frames, never while holding a delivery, and ends when the
//!   sender reads some of what it caused (results of a flood of failing
//!   posts, its own broadcasts) or is disconnected for not reading: it
//!   keeps a member from outrunning its own reading, and it cannot hold up
//!   any other member;
//! - a queue drains as its member's connection takes frames, which depends
//!   only on that member reading its stream, not on any reader task of the
//!   master. So A waiting on B's queue while B waits on A's cannot block the
//!   master: each wait ends as soon as its receiver reads;
//! - a receiver that stops reading is the broken one: once it has taken
//!   nothing for `slow_consumer_timeout` while senders wait, the health
//!   sweep disconnects it, its queue closes, and every waiter wakes with
//!   UNAVAILABLE for its sender. One slow receiver holds up only the senders
//!   that send to it, and those for at most that bound.
//!
//! While a reader waits it is not reading the sender's heartbeats, so it
//! vouches for the sender instead: it keeps the sender's `last_seen` fresh
//! and sends it a heartbeat ack each interval ("alive, held back").

use crate::outbound::{Outbound, PushError};
use cohort_proto::frame::Encoded;
use cohort_proto::{MemberName, pb};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One delivery waiting for room.
pub struct Wait {
    /// The receiver's queue.
    pub to: Outbound,
    /// The receiver, for the error a sender gets if it is cut off.
    pub name: MemberName,
    /// What to deliver.
    pub envelope: Encoded,
}

/// What to tell the sender once its waiting deliveries are settled.
#[derive(Debug, Default)]
pub struct Then {
    /// The sender's envelope id.
    pub id: String,
    /// The sender asked for a result even on success.
    pub ack: bool,
    /// The envelope named one receiver: failing to reach it is an error.
    pub targeted: bool,
    /// Receivers reached before any wait.
    pub reached: u32,
    /// The master-side id of a request whose delivery waits.
    pub request: Option<String>,
}

/// Deliveries of one envelope that wait for room, and the rest of its batch.
pub struct Stall {
    /// In the order the envelope was routed.
    pub waits: Vec<Wait>,
    /// What to tell the sender after.
    pub then: Then,
    /// Envelopes of the same `send_batch` not routed yet.
    pub rest: Vec<pb::Envelope>,
}

/// How the waits ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Receivers that got the envelope.
    pub reached: u32,
    /// Receivers cut off (disconnected) before there was room.
    pub cut_off: Vec<MemberName>,
}

/// Pauses a reader whose own member has fallen behind reading the master's
/// frames to it, until it catches up, calling `vouch` for it every
/// `interval` meanwhile. Returns false if `stop` fires or the member's queue
/// closes.
pub async fn pause_for_own_room(
    own: &Outbound,
    vouch: impl Fn(),
    interval: Duration,
    stop: &CancellationToken,
) -> bool {
    let mut ticker = tokio::time::interval(interval);
    ticker.reset();
    let room = own.control_room();
    tokio::pin!(room);
    loop {
        tokio::select! {
            room = &mut room => return room.is_ok(),
            _ = ticker.tick() => vouch(),
            _ = stop.cancelled() => return false,
        }
    }
}

/// Delivers each waiting envelope as room appears, in order. While it waits
/// it calls `vouch` for the sender every `interval`. Returns `None` if
/// `stop` fires first.
pub async fn wait_for_room(
    waits: Vec<Wait>,
    vouch: impl Fn(),
    interval: Duration,
    stop: &CancellationToken,
) -> Option<Outcome> {
    let mut outcome = Outcome::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.reset();
    for w in waits {
        // Pinned once, so the place in the receiver's queue of waiters is
        // kept while the ticker fires.
        let room = w.to.reserve(&w.envelope);
        tokio::pin!(room);
        let delivered = loop {
            tokio::select! {
                room = &mut room => break room.and_then(|r| w.to.deliver_into(r, w.envelope)),
                _ = ticker.tick() => vouch(),
                _ = stop.cancelled() => return None,
            }
        };
        match delivered {
            Ok(()) => outcome.reached += 1,
            Err(PushError::Closed | PushError::Full) => outcome.cut_off.push(w.name),
        }
    }
    Some(outcome)
}
