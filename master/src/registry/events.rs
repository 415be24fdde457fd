//! Cluster events: to `WatchEvents` watchers and to ready members.

use super::*;
use crate::supervisor::{Report, SlotView};

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(super) fn event(
    kind: pb::EventKind,
    member: Option<pb::MemberInfo>,
    reason: &str,
) -> pb::ClusterEvent {
    pb::ClusterEvent {
        kind: kind as i32,
        member,
        at: now_ms(),
        reason: reason.to_string(),
    }
}

impl Registry {
    /// Publishes what the supervisor reports about a local slot (respawn,
    /// backoff, failed slot, a retired instance's exit).
    pub fn announce(&self, report: Report, slot: &SlotView, reason: &str) {
        let kind = match report {
            Report::Respawned => pb::EventKind::Respawned,
            Report::Backoff => pb::EventKind::Backoff,
            Report::Failed => pb::EventKind::Failed,
            Report::Retired => pb::EventKind::Left,
        };
        let mut st = self.lock();
        self.publish(&mut st, event(kind, Some(slot.into()), reason));
    }

    /// The current state as events, then a receiver of what follows; taken
    /// under one lock so nothing falls between them.
    pub fn subscribe(&self) -> (Vec<pb::ClusterEvent>, broadcast::Receiver<pb::ClusterEvent>) {
        let st = self.lock();
        let mut now: Vec<_> = st
            .members
            .values()
            .map(|m| event(pb::EventKind::Current, Some(m.info()), ""))
            .collect();
        if st.cluster_ready {
            now.push(event(pb::EventKind::ClusterReady, None, ""));
        }
        (now, self.events.subscribe())
    }

    pub(super) fn publish(&self, st: &mut State, ev: pb::ClusterEvent) {
        self.publish_to(st, ev, true);
    }

    /// Publishes to `WatchEvents`, and with `members` to the members too.
    /// Members hear nothing of a member until it is ready (its JOINED, and
    /// its LEFT if it never was), and a member that has not reported ready
    /// yet hears no events: a join storm of silent members costs the others
    /// nothing.
    pub(super) fn publish_to(&self, st: &mut State, ev: pb::ClusterEvent, members: bool) {
        // No watcher is fine.
        let _ = self.events.send(ev.clone());
        if !members {
            return;
        }
        for m in st.members.values_mut() {
            if m.presence != Presence::Joined {
                let _ = m.push(frame(Out::MemberEvent(ev.clone())));
            }
        }
    }
}
