//! Cluster events: to `WatchEvents` watchers and to ready members.

use super::*;

pub(super) fn event(kind: EventKind, member: Option<MemberSnapshot>, reason: &str) -> ClusterEvent {
    ClusterEvent::now(kind, member, reason)
}

impl Registry {
    /// Publishes what the supervisor reports about a local slot (respawn,
    /// backoff, failed slot, a retired instance's exit).
    pub fn announce(&self, kind: EventKind, slot: MemberSnapshot, reason: &str) {
        let mut st = self.lock();
        self.publish(&mut st, event(kind, Some(slot), reason));
    }

    /// The current state as events, then a receiver of what follows; taken
    /// under one lock so nothing falls between them.
    pub fn subscribe(&self) -> (Vec<ClusterEvent>, broadcast::Receiver<ClusterEvent>) {
        let st = self.lock();
        let mut now: Vec<_> = st
            .members
            .values()
            .map(|m| event(EventKind::Current, Some(m.info()), ""))
            .collect();
        if st.cluster_ready {
            now.push(event(EventKind::ClusterReady, None, ""));
        }
        (now, self.events.subscribe())
    }

    pub(super) fn publish(&self, st: &mut State, ev: ClusterEvent) {
        self.publish_to(st, ev, true);
    }

    /// Publishes to `WatchEvents`, and with `members` to the members too.
    /// Members hear nothing of a member until it is ready (its JOINED, and
    /// its LEFT if it never was), and a member that has not reported ready
    /// yet hears no events: a join storm of silent members costs the others
    /// nothing.
    pub(super) fn publish_to(&self, st: &mut State, ev: ClusterEvent, members: bool) {
        let wire = members.then(|| pb::ClusterEvent::from(&ev));
        // No watcher is fine.
        let _ = self.events.send(ev);
        let Some(wire) = wire else {
            return;
        };
        for m in st.members.values_mut() {
            if m.presence != Presence::Joined {
                let _ = m.push(frame(Out::MemberEvent(wire.clone())));
            }
        }
    }
}
