//! Health: the sweep that marks silent members SUSPECT, evicts the dead,
//! the never-ready and the slow consumers; vouching for held-back senders.
use super::events::event;
use super::members::{InstanceId, Member, Presence};
use super::requests::expire_requests;
use super::{Registry, State, frame};
use crate::model::{EventKind, Notice};
use cohort_proto::pb::master_frame::Kind as Out;
use cohort_proto::{MemberName, Role, pb};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Heartbeats in a row over `max_rss` before a member is drained: one
/// spike (a burst of work, a GC cycle) is not enough.
pub const OVER_MEMORY_BEATS: u8 = 3;

impl Registry {
    /// Counts a ready member's heartbeats over its app's `max_rss`; the
    /// reason to drain it once there were [`OVER_MEMORY_BEATS`] in a row.
    pub(super) fn over_memory(&self, m: &mut Member) -> Option<String> {
        let app = match m.role {
            Role::Agent => "agent",
            Role::Worker => m.app.as_str(),
        };
        let limit = *self
            .max_rss
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .get(app)?;
        if m.presence != Presence::Ready || m.rss_bytes <= limit {
            m.over_memory = 0;
            return None;
        }
        m.over_memory = m.over_memory.saturating_add(1);
        (m.over_memory == OVER_MEMORY_BEATS).then(|| {
            format!(
                "memory {} MiB above max_rss {} MiB for {OVER_MEMORY_BEATS} heartbeats",
                m.rss_bytes >> 20,
                limit >> 20
            )
        })
    }

    /// Replaces the memory limits (a reload).
    pub fn set_max_rss(&self, limits: super::MaxRss) {
        *self.max_rss.lock().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// Drains a member over `max_rss` or failing its health probe: it
    /// stops taking work and finishes;
    /// a local one is replaced at once by the supervisor, a remote one by
    /// its own (systemd, Kubernetes) when it exits.
    pub(super) fn drain_unhealthy(&self, st: &mut State, name: &MemberName, reason: String) {
        let Some(m) = st.members.get_mut(name) else {
            return;
        };
        tracing::warn!(member.name = %name, reason, "draining an unhealthy member");
        let before = m.state();
        m.presence = Presence::Draining;
        let (role, after, info) = (m.role, m.state(), m.info());
        let _ = m.push(frame(Out::Drain(pb::Drain {
            reason: reason.clone(),
            deadline: Some(cohort_proto::time::duration(self.cfg.drain_timeout)),
        })));
        st.counts.moved(role, before, after);
        if info.local {
            self.notify(Notice::Unhealthy {
                name: info.name.clone(),
                pid: info.pid,
                reason: reason.clone(),
            });
        }
        self.publish(st, event(EventKind::Draining, Some(info), &reason));
    }

    /// Marks a member's reader as waiting for room (or done waiting).
    pub fn hold_back(&self, instance: &InstanceId, held: bool, now: Instant) {
        let mut st = self.lock();
        let Some(name) = st.members.by_instance(instance).cloned() else {
            return;
        };
        if let Some(m) = st.members.get_mut(&name) {
            m.held_back = held;
            m.last_seen = now;
        }
    }

    /// Vouches for a member whose reader waits for room: it is alive, just
    /// not read; its heartbeat clock and its own ack watchdog stay content.
    pub fn vouch(&self, instance: &InstanceId) {
        let mut st = self.lock();
        let Some(name) = st.members.by_instance(instance).cloned() else {
            return;
        };
        if let Some(m) = st.members.get_mut(&name) {
            m.last_seen = Instant::now();
            let _ = m.push(frame(Out::HeartbeatAck(pb::HeartbeatAck { seq: 0 })));
        }
    }

    /// Marks silent members SUSPECT, evicts the dead and the hopelessly slow,
    /// and expires requests nobody answered.
    pub fn sweep(&self, now: Instant) {
        let mut st = self.lock();
        self.coalesced(&mut st, |st| self.sweep_locked(st, now));
    }

    fn sweep_locked(&self, st: &mut State, now: Instant) {
        let mut evict = Vec::new();
        let mut suspects = Vec::new();
        for m in st.members.values_mut() {
            // A member whose reader waits for room is not being read: its
            // silence is the master's doing.
            let silent = match m.held_back {
                true => Duration::ZERO,
                false => now.saturating_duration_since(m.last_seen),
            };
            let joining = now.saturating_duration_since(m.joined_at);
            let h = m.timing;
            if silent >= h.dead_after {
                evict.push((
                    m.name.clone(),
                    format!("no heartbeat for {} ms", silent.as_millis()),
                ));
            } else if m.presence == Presence::Joined && joining >= self.cfg.join_timeout {
                evict.push((
                    m.name.clone(),
                    format!(
                        "not ready {} ms after joining (the limit is {} ms)",
                        joining.as_millis(),
                        self.cfg.join_timeout.as_millis()
                    ),
                ));
            } else if silent >= h.suspect_after && !m.suspect {
                let before = m.state();
                m.suspect = true;
                st.counts.moved(m.role, before, m.state());
                suspects.push(m.info());
            } else if let Some(stalled) = m.stalled(now)
                && stalled >= self.cfg.messaging.slow_consumer_timeout
            {
                evict.push((
                    m.name.clone(),
                    format!(
                        "slow consumer: it took no message for {} ms while senders waited ({} messages dropped)",
                        stalled.as_millis(),
                        m.dropped
                    ),
                ));
            }
        }
        for info in suspects {
            tracing::warn!(member.name = %info.name, "member suspect: heartbeats missing");
            self.publish(
                st,
                event(EventKind::Suspect, Some(info), "heartbeats missing"),
            );
        }
        for (name, reason) in evict {
            if let Some(m) = st.members.get(&name)
                && m.local
            {
                self.notify(Notice::Evicted {
                    name: name.to_string(),
                    pid: m.pid,
                    reason: reason.clone(),
                });
            }
            self.evict(st, &name, &reason);
        }
        expire_requests(st, now);
    }
}

impl Registry {
    /// Sweeps every `tick` (a sixth of `suspect_after`, within 10–500 ms:
    /// a sweep over 10,000 members is the largest part of an idle master's
    /// own work) until `stop`.
    pub async fn sweep_every(self: std::sync::Arc<Self>, stop: CancellationToken) {
        let tick = (self.cfg.health.suspect_after / 6)
            .clamp(Duration::from_millis(10), Duration::from_millis(500));
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = interval.tick() => {
                    let now = Instant::now();
                    // A sweep this late means the master's thread was busy
                    // (a join storm): it did not read the members either.
                    let late = now.saturating_duration_since(last).saturating_sub(tick);
                    last = now;
                    if late > tick {
                        self.forgive(late, now);
                    }
                    self.sweep(now);
                }
            }
        }
    }

    /// Time the master spent not looking does not count against the
    /// members: their heartbeats may be sitting unread in its sockets. A
    /// member is judged on what it sent, not on when a busy master got round
    /// to reading it.
    pub fn forgive(&self, late: Duration, now: Instant) {
        let mut st = self.lock();
        tracing::warn!(
            late_ms = late.as_millis() as u64,
            members = st.members.len(),
            "the master was too busy to look at its members; that time is not counted against them"
        );
        for m in st.members.values_mut() {
            m.last_seen = (m.last_seen + late).min(now);
            m.joined_at = (m.joined_at + late).min(now);
        }
    }
}
