//! What a member hears besides messages: cluster and connection events,
//! in the SDK's own types.

use crate::Error;
use cohort_proto::{Role, pb};

/// Something that happened to this member or the cluster.
#[derive(Clone, Debug)]
pub enum Event {
    /// The expected members are all ready.
    ClusterReady,
    /// A member became ready, turned suspect, left, was respawned, ...
    Member(MemberEvent),
    /// The master asks this member to finish its work and leave.
    Drain {
        /// Why.
        reason: String,
        /// How long the master gives this member to finish (then it may be
        /// killed); zero if it did not say.
        within: std::time::Duration,
    },
    /// A fire-and-forget send failed at the master.
    SendFailed {
        /// The envelope's id.
        id: String,
        /// Why.
        error: Error,
    },
    /// The stream to the master broke; the SDK is reconnecting.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// Joined again after a disconnect (a new instance id).
    Reconnected {
        /// The instance id of this registration.
        instance_id: String,
    },
}

/// What happened to another member, as the master announced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberEvent {
    /// What happened.
    pub kind: MemberEventKind,
    /// The member's name.
    pub name: String,
    /// Its role, when the master said.
    pub role: Option<Role>,
    /// Its instance id (the registration it concerns).
    pub instance_id: String,
    /// `pid@host` parts.
    pub pid: u32,
    /// The host it runs on.
    pub host: String,
    /// Why, in words (eviction cause, exit status, ...).
    pub reason: String,
}

/// The kinds of [`MemberEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberEventKind {
    /// It joined (not sent to members: only to `WatchEvents`).
    Joined,
    /// It takes work.
    Ready,
    /// Its heartbeats stopped.
    Suspect,
    /// A suspect member was heard from again.
    Recovered,
    /// It is finishing its work before it leaves.
    Draining,
    /// It is gone.
    Left,
    /// The master respawned it.
    Respawned,
    /// Its slot waits before the next attempt.
    Backoff,
    /// Its slot gave up.
    Failed,
    /// A kind this SDK does not know yet (a newer master).
    Other(i32),
}

impl From<i32> for MemberEventKind {
    fn from(k: i32) -> Self {
        match pb::EventKind::try_from(k) {
            Ok(pb::EventKind::Joined) => MemberEventKind::Joined,
            Ok(pb::EventKind::Ready) => MemberEventKind::Ready,
            Ok(pb::EventKind::Suspect) => MemberEventKind::Suspect,
            Ok(pb::EventKind::Recovered) => MemberEventKind::Recovered,
            Ok(pb::EventKind::Draining) => MemberEventKind::Draining,
            Ok(pb::EventKind::Left) => MemberEventKind::Left,
            Ok(pb::EventKind::Respawned) => MemberEventKind::Respawned,
            Ok(pb::EventKind::Backoff) => MemberEventKind::Backoff,
            Ok(pb::EventKind::Failed) => MemberEventKind::Failed,
            _ => MemberEventKind::Other(k),
        }
    }
}

impl From<pb::ClusterEvent> for Event {
    fn from(ev: pb::ClusterEvent) -> Self {
        if ev.kind == pb::EventKind::ClusterReady as i32 {
            return Event::ClusterReady;
        }
        let m = ev.member.unwrap_or_default();
        Event::Member(MemberEvent {
            kind: ev.kind.into(),
            name: m.name,
            role: Role::try_from(m.role).ok(),
            instance_id: m.instance_id,
            pid: m.pid,
            host: m.host,
            reason: ev.reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_events_become_the_sdks_own_types() {
        let ev = pb::ClusterEvent {
            kind: pb::EventKind::Left as i32,
            member: Some(pb::MemberInfo {
                name: "worker-2".into(),
                role: pb::Role::Worker as i32,
                pid: 42,
                host: "h".into(),
                ..Default::default()
            }),
            at: None,
            reason: "no heartbeat for 10000 ms".into(),
        };
        match Event::from(ev) {
            Event::Member(m) => {
                assert_eq!(m.kind, MemberEventKind::Left);
                assert_eq!(
                    (m.name.as_str(), m.role, m.pid),
                    ("worker-2", Some(Role::Worker), 42)
                );
                assert!(m.reason.contains("heartbeat"));
            }
            other => panic!("{other:?}"),
        }
        let ready = pb::ClusterEvent {
            kind: pb::EventKind::ClusterReady as i32,
            ..Default::default()
        };
        assert!(matches!(Event::from(ready), Event::ClusterReady));
        assert_eq!(MemberEventKind::from(99), MemberEventKind::Other(99));
    }
}
