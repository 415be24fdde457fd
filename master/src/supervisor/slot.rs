//! One supervised slot as a state machine: lifecycle states carry their own
//! data, outcomes are a separate enum, and [`step`] is a pure function of
//! `(slot, event, policy, now)` returning the actions the executor must take.
//!
//! A slot owns its current instance and the instances it is retiring: one
//! being replaced keeps serving until its successor is ready, then gets
//! SIGTERM and `drain_timeout` to finish before SIGKILL.

pub use crate::config::RestartMode;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The restart policy (SPEC §2).
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// A run at least this long counts as healthy and respawns at once.
    pub min_uptime: Duration,
    /// First delay after an early death; doubles per consecutive early death.
    pub backoff_initial: Duration,
    /// Cap on the delay.
    pub backoff_max: Duration,
    /// Restarts allowed within `restart_window` (0 = no limit).
    pub max_restarts: u32,
    /// Window for `max_restarts`.
    pub restart_window: Duration,
    /// An instance not ready this long after its spawn is killed, and its
    /// death counts as an early one (backoff).
    pub start_timeout: Duration,
    /// How long a retiring instance may take to finish after SIGTERM (or
    /// after it said it is leaving) before SIGKILL.
    pub drain_timeout: Duration,
    /// Whether an instance that exited starts again (a one-shot: never;
    /// it has no start timeout either).
    pub restart: RestartMode,
}

/// Where the slot's current instance is.
#[derive(Clone, Debug, PartialEq)]
pub enum Lifecycle {
    /// Never started, or stopped on purpose.
    Stopped,
    /// A spawn was asked for; no pid yet.
    Spawning,
    /// Running, not ready yet.
    Starting {
        pid: u32,
        /// When it was spawned.
        since: Instant,
    },
    /// Running and ready.
    Ready {
        pid: u32,
        /// When it was spawned.
        since: Instant,
    },
    /// Waiting before the next attempt.
    Backoff {
        /// Consecutive early deaths so far.
        attempt: u32,
        /// When the next attempt starts.
        until: Instant,
    },
    /// Exited and, by its restart mode, not started again: a one-shot's
    /// success (or any clean exit under `on-failure`).
    Finished {
        /// How it ended.
        outcome: Outcome,
    },
    /// Gave up: too many restarts within the window, or a one-shot that
    /// failed.
    Failed {
        /// Why, in words.
        reason: String,
    },
}

/// How an instance ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Exited with this status.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// Could not be started at all.
    SpawnFailed(String),
    /// Killed by the supervisor, for this reason (hung, never ready).
    Killed(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Exited(c) => write!(f, "exited with status {c}"),
            Outcome::Signaled(s) => write!(f, "killed by signal {s}"),
            Outcome::SpawnFailed(e) => write!(f, "could not start: {e}"),
            Outcome::Killed(why) => write!(f, "killed: {why}"),
        }
    }
}

/// Something that happened to the slot.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Start the slot (startup, scale up).
    Start,
    /// The executor spawned the instance.
    Spawned { pid: u32 },
    /// The instance reported ready.
    Ready { pid: u32 },
    /// The spawn asked for did not give a process.
    SpawnFailed { reason: String },
    /// The current instance ended.
    Died { pid: u32, outcome: Outcome },
    /// Replace the current instance (operator restart): start a new one
    /// now, without counting a failure; the old one serves until the new
    /// one is ready.
    Replace,
    /// The current instance reported a fatal error and is leaving: replace
    /// it now; its drain clock starts at once.
    Fatal { pid: u32 },
    /// The instance is alive but silent: the registry evicted it.
    Hung {
        pid: u32,
        /// What the registry saw.
        reason: String,
    },
    /// Time passed (backoff may be over, a start may have timed out).
    Tick,
    /// Stop the slot for good (shutdown, scale down): every instance
    /// retires.
    Stop,
}

/// What the executor must do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Spawn a new instance.
    Spawn,
    /// Report a respawn after a death.
    Respawned {
        /// How the previous instance ended.
        outcome: Outcome,
    },
    /// Report a backoff.
    Backoff {
        delay: Duration,
        /// How the previous instance ended.
        outcome: Outcome,
    },
    /// Report that the slot gave up.
    Failed { reason: String },
    /// Report that the instance exited and stays down by its restart mode.
    Finished { outcome: Outcome },
    /// Kill the instance's process group; its death follows as `Died`.
    Kill {
        pid: u32,
        /// Why, for the log and the event that follows.
        reason: String,
    },
    /// Ask a retiring instance's process group to finish (SIGTERM).
    Terminate { pid: u32 },
    /// Report that a retiring instance ended.
    Retired { pid: u32, outcome: Outcome },
}

/// An instance on its way out.
#[derive(Clone, Debug, PartialEq)]
pub struct Retiree {
    pub pid: u32,
    stage: Retiring,
}

/// Where a retiring instance is on its way out.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Retiring {
    /// Kept serving until the slot's next instance is ready; killed at
    /// `until` if it is finishing by itself (a fatal error) and has not ended.
    Serving { until: Option<Instant> },
    /// Asked to finish (SIGTERM); killed at `until` if it has not ended.
    Finishing { until: Instant },
    /// SIGKILL sent; its death is what is left.
    Killed,
}

impl Retiring {
    /// When it is to be killed, if a clock runs.
    fn until(self) -> Option<Instant> {
        match self {
            Retiring::Serving { until } => until,
            Retiring::Finishing { until } => Some(until),
            Retiring::Killed => None,
        }
    }
}

/// Why the master killed the current instance on purpose: its death then
/// reports this, not the signal.
#[derive(Clone, Debug, PartialEq)]
enum Condemned {
    /// Alive but silent: its uptime counts as for any death.
    Hung(String),
    /// Never ready within `start_timeout`: an early death, whatever its
    /// uptime.
    NeverReady(String),
}

/// A slot's state.
#[derive(Clone, Debug)]
pub struct Slot {
    /// The current instance.
    pub lifecycle: Lifecycle,
    /// Restarts after deaths, over the slot's life.
    pub restarts: u32,
    early_deaths: u32,
    recent: VecDeque<Instant>,
    /// The current instance was killed on purpose, and why.
    condemned: Option<Condemned>,
    /// Instances retiring: replaced, stopped, or leaving on a fatal error.
    pub retiring: Vec<Retiree>,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            lifecycle: Lifecycle::Stopped,
            restarts: 0,
            early_deaths: 0,
            recent: VecDeque::new(),
            condemned: None,
            retiring: Vec::new(),
        }
    }
}

impl Slot {
    /// When this slot next needs a `Tick`: the end of its backoff, or the
    /// start timeout of an instance not ready yet (`None`: nothing due).
    pub fn deadline(&self, policy: &Policy) -> Option<Instant> {
        let own = match self.lifecycle {
            Lifecycle::Backoff { until, .. } => Some(until),
            Lifecycle::Starting { since, .. }
                if self.condemned.is_none() && policy.restart != RestartMode::Never =>
            {
                Some(since + policy.start_timeout)
            }
            _ => None,
        };
        let drains = self.retiring.iter().filter_map(|r| r.stage.until());
        own.into_iter().chain(drains).min()
    }

    /// Every process of the slot: the current instance and those retiring.
    pub fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.pid()
            .into_iter()
            .chain(self.retiring.iter().map(|r| r.pid))
    }

    /// The pid of the current instance, if it runs.
    pub fn pid(&self) -> Option<u32> {
        match self.lifecycle {
            Lifecycle::Starting { pid, .. } | Lifecycle::Ready { pid, .. } => Some(pid),
            _ => None,
        }
    }
}

/// The delay after `attempt` consecutive early deaths (1-based).
pub fn backoff_delay(policy: &Policy, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(30));
    policy
        .backoff_initial
        .saturating_mul(factor)
        .min(policy.backoff_max)
}

mod step;
pub use step::step;

#[cfg(test)]
mod tests;
