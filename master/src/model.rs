//! What the master knows of the cluster, in its own types: member
//! snapshots and cluster events as the registry and the supervisor produce
//! them, and the notices the registry sends the supervisor. Their wire
//! forms are built at the edge ([`crate::membership`]).

use cohort_proto::Role;
use std::collections::HashMap;
use std::time::SystemTime;

/// Where a member is, as operators see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberState {
    /// A local slot's instance spawned, not joined yet.
    Starting,
    /// Said hello, not ready yet.
    Joined,
    /// Takes work.
    Ready,
    /// Heartbeats missing; not yet evicted.
    Suspect,
    /// Finishing its work before it leaves.
    Draining,
    /// Not running.
    Gone,
    /// A local slot waiting before its next attempt.
    Backoff,
    /// A local slot that gave up after too many restarts.
    Failed,
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Part of the current state, sent first to a watcher.
    Current,
    /// A member said hello.
    Joined,
    /// A member reported ready.
    Ready,
    /// A member's heartbeats are missing.
    Suspect,
    /// A suspect member was heard from again.
    Recovered,
    /// A member is finishing its work.
    Draining,
    /// A member left or was evicted.
    Left,
    /// A local member's process ended after its instance had left.
    Exited,
    /// A local member died and was started again at once.
    Respawned,
    /// A local member died early; the next attempt waits.
    Backoff,
    /// A local slot gave up.
    Failed,
    /// Every expected member was ready.
    ClusterReady,
    /// A reload changed an app (no member; the reason names the app).
    Reloaded,
}

/// One member at one moment.
#[derive(Clone, Debug)]
pub struct MemberSnapshot {
    pub name: String,
    /// Its current registration (empty for a slot with none).
    pub instance_id: String,
    /// Its role.
    pub role: Role,
    /// Its state.
    pub state: MemberState,
    /// Its pid (0 when none).
    pub pid: u32,
    /// The host it runs on.
    pub host: String,
    /// Started by this master.
    pub local: bool,
    /// Restarts of its local slot.
    pub restarts: u32,
    /// When it started, by its own report.
    pub started_at: Option<SystemTime>,
    /// CPU use from its last heartbeat.
    pub cpu_percent: f32,
    /// Resident memory from its last heartbeat.
    pub rss_bytes: u64,
    /// Its last heartbeat's round trip, as it measured it.
    pub heartbeat_rtt: Option<std::time::Duration>,
    /// Its labels.
    pub labels: HashMap<String, String>,
    /// Its version.
    pub version: String,
    /// Its app (empty for an agent).
    pub app: String,
    /// Messages dropped for it.
    pub dropped_messages: u64,
    /// Frames waiting in the master's queue towards it.
    pub queued: u64,
    /// Frames its stream has taken from that queue.
    pub frames_sent: u64,
    /// A local slot's next attempt, in BACKOFF.
    pub next_attempt_at: Option<SystemTime>,
    /// How its last local instance ended, or why the slot FAILED.
    pub last_exit: String,
}

impl MemberSnapshot {
    /// A snapshot with only the name, role and state known.
    pub fn new(name: impl Into<String>, role: Role, state: MemberState) -> Self {
        MemberSnapshot {
            name: name.into(),
            instance_id: String::new(),
            role,
            state,
            pid: 0,
            host: String::new(),
            local: false,
            restarts: 0,
            started_at: None,
            cpu_percent: 0.0,
            rss_bytes: 0,
            heartbeat_rtt: None,
            labels: HashMap::new(),
            version: String::new(),
            app: String::new(),
            dropped_messages: 0,
            queued: 0,
            frames_sent: 0,
            next_attempt_at: None,
            last_exit: String::new(),
        }
    }
}

/// One cluster event.
#[derive(Clone, Debug)]
pub struct ClusterEvent {
    /// What happened.
    pub kind: EventKind,
    /// To whom (none for ClusterReady).
    pub member: Option<MemberSnapshot>,
    /// When.
    pub at: SystemTime,
    /// Why, in words (may be empty).
    pub reason: String,
}

impl ClusterEvent {
    /// An event that happens now.
    pub fn now(kind: EventKind, member: Option<MemberSnapshot>, reason: &str) -> Self {
        ClusterEvent {
            kind,
            member,
            at: SystemTime::now(),
            reason: reason.to_string(),
        }
    }
}

/// What the registry tells the supervisor about its own (local) members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A local member reported ready.
    Ready { name: String, pid: u32 },
    /// A local member is leaving; with `replace` it asks for a replacement
    /// first (the fatal-error path).
    Leaving {
        name: String,
        pid: u32,
        /// Start a replacement now.
        replace: bool,
    },
    /// A local member stayed above its app's `max_rss`, or failed its
    /// health probe too often: the master asked it to drain; the
    /// supervisor starts its replacement now.
    Unhealthy {
        name: String,
        pid: u32,
        /// What was measured, against what limit.
        reason: String,
    },
    /// A local member was evicted while its process may live on (silent,
    /// not reading, never ready): the supervisor kills and replaces it.
    Evicted {
        name: String,
        pid: u32,
        /// Why it was evicted.
        reason: String,
    },
}
