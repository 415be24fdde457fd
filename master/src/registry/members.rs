//! One connected member as the registry keeps it, and finding members by
//! name, instance id or `pid@host`.
use super::budget::Timing;
use super::error::RouteError;
use super::watching::Watch;
use super::{State, frame};
use crate::model::{MemberSnapshot, MemberState};
use crate::outbound::{Outbound, PushError};
use cohort_proto::pb::master_frame::Kind as Out;
use cohort_proto::{MemberName, Role, pb};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

/// Where a member is in its life, as far as the registry knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Presence {
    /// Said hello, not ready yet.
    Joined,
    /// Takes work.
    Ready,
    /// Finishing its work before it leaves.
    Draining,
}

/// One connected member.
pub(super) struct Member {
    pub(super) name: MemberName,
    pub(super) instance_id: InstanceId,
    pub(super) role: Role,
    pub(super) presence: Presence,
    pub(super) suspect: bool,
    pub(super) pid: u32,
    pub(super) host: String,
    pub(super) local: bool,
    pub(super) labels: HashMap<String, String>,
    pub(super) version: String,
    /// Its app (empty for an agent).
    pub(super) app: String,
    pub(super) started_at: SystemTime,
    pub(super) cpu_percent: f32,
    pub(super) rss_bytes: u64,
    pub(super) heartbeat_rtt: Option<std::time::Duration>,
    pub(super) last_seen: Instant,
    /// The timings its silence is judged by.
    pub(super) timing: Timing,
    /// Shorter timings it was told, applied at its next heartbeat.
    pub(super) next_timing: Option<Timing>,
    /// Heartbeats in a row over its app's `max_rss`.
    pub(super) over_memory: u8,
    /// Health probes failed in a row.
    pub(super) probe_fails: u32,
    /// When its last heartbeat was acked (`None`: never).
    pub(super) acked_at: Option<Instant>,
    pub(super) joined_at: Instant,
    pub(super) dropped: u64,
    /// Frames the member had taken when the sweep last looked.
    pub(super) seen_taken: u64,
    /// Since when senders wait on this member while it takes nothing.
    pub(super) stalled_since: Option<Instant>,
    /// Its reader waits for room in other queues: unread, not silent.
    pub(super) held_back: bool,
    pub(super) outbound: Outbound,
    pub(super) cancel: CancellationToken,
    /// Whose membership events it hears.
    pub(super) watch: Watch,
    /// It understands batch frames.
    pub(super) batches: bool,
}

impl Member {
    pub(super) fn state(&self) -> MemberState {
        match (self.suspect, self.presence) {
            (true, _) => MemberState::Suspect,
            (false, Presence::Joined) => MemberState::Joined,
            (false, Presence::Ready) => MemberState::Ready,
            (false, Presence::Draining) => MemberState::Draining,
        }
    }

    pub(super) fn info(&self) -> MemberSnapshot {
        MemberSnapshot {
            instance_id: self.instance_id.to_string(),
            pid: self.pid,
            host: self.host.clone(),
            local: self.local,
            started_at: Some(self.started_at),
            cpu_percent: self.cpu_percent,
            rss_bytes: self.rss_bytes,
            heartbeat_rtt: self.heartbeat_rtt,
            labels: self.labels.clone(),
            version: self.version.clone(),
            app: self.app.clone(),
            dropped_messages: self.dropped,
            queued: self.outbound.depth() as u64,
            frames_sent: self.outbound.taken(),
            ..MemberSnapshot::new(self.name.to_string(), self.role, self.state())
        }
    }

    /// Queues a frame of the master's own; a full control lane counts a
    /// drop and starts the slow-consumer clock.
    pub(super) fn push(&mut self, frame: pb::MasterFrame) -> Result<(), PushError> {
        let r = self.outbound.push(frame);
        if r == Err(PushError::Full) {
            self.dropped += 1;
            self.outbound.mark_refused();
        }
        r
    }

    /// How long senders have waited on this member while it took nothing,
    /// as of this look (`None`: it is keeping up).
    pub(super) fn stalled(&mut self, now: Instant) -> Option<Duration> {
        let taken = self.outbound.taken();
        if self.outbound.pressed() && taken == self.seen_taken {
            let since = *self.stalled_since.get_or_insert(now);
            return Some(now.saturating_duration_since(since));
        }
        self.seen_taken = taken;
        self.stalled_since = None;
        None
    }

    pub(super) fn push_result(&mut self, id: String, status: Result<u32, RouteError>) {
        let (code, message, delivered) = match status {
            Ok(n) => (Code::Ok, String::new(), n),
            Err(e) => {
                let s = Status::from(e);
                (s.code(), s.message().to_string(), 0)
            }
        };
        let frame = frame(Out::SendResult(pb::SendResult {
            id,
            code: code as i32,
            message,
            delivered,
        }));
        // A result that does not fit is one more counted drop.
        let _ = self.push(frame);
    }
}

impl State {
    pub(super) fn free_name(&self, role: Role) -> MemberName {
        let taken = |n: &str| self.members.contains_key(n) || self.secrets.is_reserved(n);
        if role == Role::Agent && !taken("agent") {
            return MemberName::parse("agent").unwrap_or_else(|_| unreachable!());
        }
        (1u64..)
            .map(|i| format!("{role}-{i}"))
            .find(|n| !taken(n))
            .and_then(|n| MemberName::parse(n).ok())
            .unwrap_or_else(|| {
                unreachable!("names of the form role-N are valid and finitely many are taken")
            })
    }
}

pub(super) fn not_found(member: &str) -> RouteError {
    RouteError::NotFound(member.to_string())
}

/// Finds a member by name, instance id, or `pid@host`.
pub(super) fn resolve_member(st: &State, key: &str) -> Result<MemberName, RouteError> {
    if let Some(name) = st.members.name(key) {
        return Ok(name.clone());
    }
    if let Some(name) = st.members.by_instance(key) {
        return Ok(name.clone());
    }
    if let Some((pid, host)) = key.split_once('@')
        && let Ok(pid) = pid.parse::<u32>()
    {
        // Members report their own pid and host: two that claim the same
        // are not told apart by guessing.
        let mut found = st
            .members
            .values()
            .filter(|m| m.pid == pid && m.host == host);
        if let Some(m) = found.next() {
            let others = found.count();
            if others > 0 {
                return Err(RouteError::Ambiguous(key.to_string(), others + 1));
            }
            return Ok(m.name.clone());
        }
    }
    Err(not_found(key))
}

/// One registration of a member: a fresh UUID per join, so a message
/// addressed to an old instance never reaches its replacement.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(String);

impl InstanceId {
    /// A new, unguessable id.
    pub fn new() -> InstanceId {
        InstanceId(uuid::Uuid::new_v4().to_string())
    }
}

impl Default for InstanceId {
    fn default() -> Self {
        InstanceId::new()
    }
}

impl std::borrow::Borrow<str> for InstanceId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
