//! One supervised slot as a state machine: lifecycle states carry their own
//! data, outcomes are a separate enum, and [`step`] is a pure function of
//! `(slot, event, policy, now)` returning the actions the executor must take.

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
        /// Its pid.
        pid: u32,
        /// When it was spawned.
        since: Instant,
    },
    /// Running and ready.
    Ready {
        /// Its pid.
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
    /// Gave up: too many restarts within the window.
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
    Spawned {
        /// Its pid.
        pid: u32,
    },
    /// The instance reported ready.
    Ready {
        /// Its pid.
        pid: u32,
    },
    /// The current instance ended (`pid` 0 for a failed spawn).
    Died {
        /// Its pid.
        pid: u32,
        /// How.
        outcome: Outcome,
    },
    /// The current instance is retiring (fatal path, restart): start a
    /// replacement now, without counting a failure.
    Replace,
    /// The instance is alive but silent: the registry evicted it.
    Hung {
        /// Its pid.
        pid: u32,
        /// What the registry saw.
        reason: String,
    },
    /// Time passed (backoff may be over, a start may have timed out).
    Tick,
    /// Stop the slot for good (shutdown, scale down).
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
        /// The delay.
        delay: Duration,
        /// How the previous instance ended.
        outcome: Outcome,
    },
    /// Report that the slot gave up.
    Failed {
        /// Why.
        reason: String,
    },
    /// Kill the instance's process group; its death follows as `Died`.
    Kill {
        /// Its pid.
        pid: u32,
        /// Why, for the log and the event that follows.
        reason: String,
    },
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
    /// The current instance was killed on purpose: why, and whether its
    /// death counts as early.
    condemned: Option<(String, bool)>,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            lifecycle: Lifecycle::Stopped,
            restarts: 0,
            early_deaths: 0,
            recent: VecDeque::new(),
            condemned: None,
        }
    }
}

impl Slot {
    /// When this slot next needs a `Tick`: the end of its backoff, or the
    /// start timeout of an instance not ready yet (`None`: nothing due).
    pub fn deadline(&self, policy: &Policy) -> Option<Instant> {
        match self.lifecycle {
            Lifecycle::Backoff { until, .. } => Some(until),
            Lifecycle::Starting { since, .. } if self.condemned.is_none() => {
                Some(since + policy.start_timeout)
            }
            _ => None,
        }
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

/// Applies `event`; returns the actions to take. An event that makes no
/// sense in the current state changes nothing and returns no action.
pub fn step(slot: &mut Slot, event: Event, policy: &Policy, now: Instant) -> Vec<Action> {
    use Lifecycle as L;
    match (&slot.lifecycle, event) {
        (L::Stopped | L::Failed { .. }, Event::Start) => {
            slot.lifecycle = L::Spawning;
            vec![Action::Spawn]
        }
        (L::Spawning, Event::Spawned { pid }) => {
            slot.lifecycle = L::Starting { pid, since: now };
            vec![]
        }
        (L::Starting { pid, since }, Event::Ready { pid: p }) if *pid == p => {
            slot.lifecycle = L::Ready {
                pid: p,
                since: *since,
            };
            vec![]
        }
        (L::Starting { .. } | L::Ready { .. }, Event::Replace) => {
            slot.lifecycle = L::Spawning;
            vec![Action::Spawn]
        }
        (L::Backoff { until, .. }, Event::Tick) if *until <= now => {
            slot.lifecycle = L::Spawning;
            vec![Action::Spawn]
        }
        (L::Backoff { .. }, Event::Replace) => {
            slot.lifecycle = L::Spawning;
            vec![Action::Spawn]
        }
        (L::Spawning, Event::Died { pid: 0, outcome }) => {
            died(slot, Duration::ZERO, outcome, policy, now)
        }
        (L::Starting { pid, since } | L::Ready { pid, since }, Event::Died { pid: p, outcome })
            if *pid == p =>
        {
            let uptime = now.saturating_duration_since(*since);
            match slot.condemned.take() {
                Some((why, true)) => died(slot, Duration::ZERO, Outcome::Killed(why), policy, now),
                Some((why, false)) => died(slot, uptime, Outcome::Killed(why), policy, now),
                None => died(slot, uptime, outcome, policy, now),
            }
        }
        (L::Starting { pid, .. } | L::Ready { pid, .. }, Event::Hung { pid: p, reason })
            if *pid == p && slot.condemned.is_none() =>
        {
            let reason = format!("alive but silent ({reason})");
            slot.condemned = Some((reason.clone(), false));
            vec![Action::Kill { pid: p, reason }]
        }
        (L::Starting { pid, since }, Event::Tick)
            if now.saturating_duration_since(*since) >= policy.start_timeout
                && slot.condemned.is_none() =>
        {
            let reason = format!(
                "not ready {} ms after it started (start_timeout)",
                policy.start_timeout.as_millis()
            );
            let pid = *pid;
            slot.condemned = Some((reason.clone(), true));
            vec![Action::Kill { pid, reason }]
        }
        (_, Event::Stop) => {
            slot.lifecycle = L::Stopped;
            vec![]
        }
        (state, event) => {
            tracing::debug!(?state, ?event, "slot event ignored in this state");
            vec![]
        }
    }
}

fn died(
    slot: &mut Slot,
    uptime: Duration,
    outcome: Outcome,
    policy: &Policy,
    now: Instant,
) -> Vec<Action> {
    slot.restarts += 1;
    slot.recent.push_back(now);
    while slot
        .recent
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) > policy.restart_window)
    {
        slot.recent.pop_front();
    }
    if policy.max_restarts > 0 && slot.recent.len() > policy.max_restarts as usize {
        let reason = format!(
            "{} restarts within {:?} (max_restarts = {}); last {outcome}",
            slot.recent.len(),
            policy.restart_window,
            policy.max_restarts
        );
        slot.lifecycle = Lifecycle::Failed {
            reason: reason.clone(),
        };
        return vec![Action::Failed { reason }];
    }
    if uptime >= policy.min_uptime {
        slot.early_deaths = 0;
        slot.lifecycle = Lifecycle::Spawning;
        return vec![Action::Respawned { outcome }, Action::Spawn];
    }
    slot.early_deaths += 1;
    let delay = backoff_delay(policy, slot.early_deaths);
    slot.lifecycle = Lifecycle::Backoff {
        attempt: slot.early_deaths,
        until: now + delay,
    };
    vec![Action::Backoff { delay, outcome }]
}

#[cfg(test)]
mod tests;
