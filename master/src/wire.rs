//! The model's wire forms: [`crate::model`] to protobuf, for the Join
//! stream and the Control API.

use crate::model::{ClusterEvent, EventKind, MemberSnapshot, MemberState};
use cohort_proto::pb;

impl From<MemberState> for pb::MemberState {
    fn from(s: MemberState) -> Self {
        match s {
            MemberState::Starting => pb::MemberState::Starting,
            MemberState::Joined => pb::MemberState::Joined,
            MemberState::Ready => pb::MemberState::Ready,
            MemberState::Suspect => pb::MemberState::Suspect,
            MemberState::Draining => pb::MemberState::Draining,
            MemberState::Gone => pb::MemberState::Gone,
            MemberState::Backoff => pb::MemberState::Backoff,
            MemberState::Failed => pb::MemberState::Failed,
        }
    }
}

impl MemberState {
    /// The model's state for a wire state (`None` for UNSPECIFIED).
    pub fn from_wire(s: pb::MemberState) -> Option<MemberState> {
        Some(match s {
            pb::MemberState::Unspecified => return None,
            pb::MemberState::Starting => MemberState::Starting,
            pb::MemberState::Joined => MemberState::Joined,
            pb::MemberState::Ready => MemberState::Ready,
            pb::MemberState::Suspect => MemberState::Suspect,
            pb::MemberState::Draining => MemberState::Draining,
            pb::MemberState::Gone => MemberState::Gone,
            pb::MemberState::Backoff => MemberState::Backoff,
            pb::MemberState::Failed => MemberState::Failed,
        })
    }
}

impl From<EventKind> for pb::EventKind {
    fn from(k: EventKind) -> Self {
        match k {
            EventKind::Current => pb::EventKind::Current,
            EventKind::Joined => pb::EventKind::Joined,
            EventKind::Ready => pb::EventKind::Ready,
            EventKind::Suspect => pb::EventKind::Suspect,
            EventKind::Recovered => pb::EventKind::Recovered,
            EventKind::Draining => pb::EventKind::Draining,
            EventKind::Left => pb::EventKind::Left,
            EventKind::Exited => pb::EventKind::Exited,
            EventKind::Reloaded => pb::EventKind::Reloaded,
            EventKind::Respawned => pb::EventKind::Respawned,
            EventKind::Backoff => pb::EventKind::Backoff,
            EventKind::Failed => pb::EventKind::Failed,
            EventKind::ClusterReady => pb::EventKind::ClusterReady,
        }
    }
}

impl From<&MemberSnapshot> for pb::MemberInfo {
    fn from(m: &MemberSnapshot) -> Self {
        pb::MemberInfo {
            name: m.name.clone(),
            instance_id: m.instance_id.clone(),
            role: m.role.into(),
            state: pb::MemberState::from(m.state) as i32,
            pid: m.pid,
            host: m.host.clone(),
            local: m.local,
            restarts: m.restarts,
            started_at: m.started_at.map(Into::into),
            cpu_percent: m.cpu_percent,
            rss_bytes: m.rss_bytes,
            labels: m.labels.clone(),
            version: m.version.clone(),
            app: m.app.clone(),
            dropped_messages: m.dropped_messages,
            next_attempt_at: m.next_attempt_at.map(Into::into),
            last_exit: m.last_exit.clone(),
            heartbeat_rtt: m.heartbeat_rtt.map(cohort_proto::time::duration),
        }
    }
}

impl From<&ClusterEvent> for pb::ClusterEvent {
    fn from(e: &ClusterEvent) -> Self {
        pb::ClusterEvent {
            kind: pb::EventKind::from(e.kind) as i32,
            member: e.member.as_ref().map(Into::into),
            at: Some(e.at.into()),
            reason: e.reason.clone(),
        }
    }
}
