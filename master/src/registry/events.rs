//! Cluster events: to `WatchEvents` watchers and to ready members.
use super::members::Presence;
use super::watching::Watch;
use super::{Registry, State, frame};
use crate::model::{ClusterEvent, EventKind, MemberSnapshot};
use cohort_proto::pb;
use cohort_proto::pb::master_frame::Kind as Out;
use tokio::sync::broadcast;

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

    /// A reload changed app `app` (`what`: the action and why): to
    /// `WatchEvents` only.
    pub fn announce_reload(&self, app: &str, what: &str) {
        let mut st = self.lock();
        let reason = format!("app {app}: {what}");
        self.publish_to(&mut st, event(EventKind::Reloaded, None, &reason), false);
    }

    /// A local member's process ended after its instance had left: to
    /// `WatchEvents` only. Members had the LEFT, and by now a replacement
    /// may hold the name.
    pub fn announce_exit(&self, slot: MemberSnapshot, reason: &str) {
        let mut st = self.lock();
        self.publish_to(&mut st, event(EventKind::Exited, Some(slot), reason), false);
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
        if st.barrier.is_open() {
            now.push(event(EventKind::ClusterReady, None, ""));
        }
        (now, self.events.subscribe())
    }

    pub(super) fn publish(&self, st: &mut State, ev: ClusterEvent) {
        self.publish_to(st, ev, true);
    }

    /// Publishes to `WatchEvents`, and with `members` to the members that
    /// watch the member it is about. Members hear nothing of a member until
    /// it is ready (its JOINED, and its LEFT if it never was), and a member
    /// that has not reported ready yet hears no events: a join storm of
    /// silent members costs the others nothing. During a sweep the events
    /// wait and go out together ([`Registry::coalesced`]).
    pub(super) fn publish_to(&self, st: &mut State, ev: ClusterEvent, members: bool) {
        if let Some(pending) = st.coalesce.as_mut() {
            pending.push((ev, members));
            return;
        }
        self.distribute(st, vec![(ev, members)]);
    }

    /// Runs `f` with events held back, then sends each member the ones it
    /// watches in one frame: a sweep that marks 1,000 members SUSPECT is one
    /// frame per watcher, not 1,000.
    pub(super) fn coalesced<T>(&self, st: &mut State, f: impl FnOnce(&mut State) -> T) -> T {
        st.coalesce = Some(Vec::new());
        let out = f(st);
        let events = st.coalesce.take().unwrap_or_default();
        if !events.is_empty() {
            self.distribute(st, events);
        }
        out
    }

    fn distribute(&self, st: &mut State, events: Vec<(ClusterEvent, bool)>) {
        // Only events about a member go to members (ClusterReady has its own
        // frame); each is converted once.
        let mut wire = Vec::new();
        for (ev, members) in events {
            if members && let Some(about) = &ev.member {
                wire.push((about.clone(), pb::ClusterEvent::from(&ev)));
            }
            // No watcher is fine.
            let _ = self.events.send(ev);
        }
        if wire.is_empty() {
            return;
        }
        for m in st.members.values_mut() {
            if m.presence == Presence::Joined || m.watch == Watch::Nothing {
                continue;
            }
            let mut mine: Vec<pb::ClusterEvent> = wire
                .iter()
                .filter(|(about, _)| m.watch.covers(about))
                .map(|(_, ev)| ev.clone())
                .collect();
            let frames = match (mine.len(), m.batches) {
                (0, _) => Vec::new(),
                (1, _) | (_, false) => mine.drain(..).map(Out::MemberEvent).collect(),
                (_, true) => vec![Out::MemberEvents(pb::ClusterEvents { events: mine })],
            };
            for kind in frames {
                let _ = m.push(frame(kind));
            }
        }
    }
}
