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
mod tests {
    use super::*;

    fn policy(max_restarts: u32) -> Policy {
        Policy {
            min_uptime: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            max_restarts,
            restart_window: Duration::from_secs(60),
            start_timeout: Duration::from_secs(30),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_doubles_from_200ms_and_caps_at_30s() {
        let p = policy(0);
        let delays: Vec<_> = (1..=10).map(|a| backoff_delay(&p, a).as_millis()).collect();
        assert_eq!(
            delays,
            [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
    }

    #[test]
    fn transitions_follow_the_table() {
        let t0 = Instant::now();
        let p = policy(0);
        let exit = || Outcome::Exited(1);
        // (event, at ms, expected actions, expected lifecycle name)
        let table: Vec<(Event, u64, Vec<Action>, &str)> = vec![
            (Event::Start, 0, vec![Action::Spawn], "Spawning"),
            (Event::Spawned { pid: 10 }, 0, vec![], "Starting"),
            (Event::Ready { pid: 99 }, 5, vec![], "Starting"), // another pid: ignored
            (Event::Ready { pid: 10 }, 5, vec![], "Ready"),
            // Ran 2 s >= min_uptime: respawn at once.
            (
                Event::Died {
                    pid: 10,
                    outcome: exit(),
                },
                2000,
                vec![Action::Respawned { outcome: exit() }, Action::Spawn],
                "Spawning",
            ),
            (Event::Spawned { pid: 11 }, 2000, vec![], "Starting"),
            // Died before ready and early: the replacement is replaced, after a backoff.
            (
                Event::Died {
                    pid: 11,
                    outcome: exit(),
                },
                2100,
                vec![Action::Backoff {
                    delay: ms(200),
                    outcome: exit(),
                }],
                "Backoff",
            ),
            (Event::Tick, 2200, vec![], "Backoff"),
            (Event::Tick, 2300, vec![Action::Spawn], "Spawning"),
            (
                Event::Died {
                    pid: 0,
                    outcome: Outcome::SpawnFailed("no such file".into()),
                },
                2300,
                vec![Action::Backoff {
                    delay: ms(400),
                    outcome: Outcome::SpawnFailed("no such file".into()),
                }],
                "Backoff",
            ),
            (Event::Replace, 2400, vec![Action::Spawn], "Spawning"),
            (Event::Spawned { pid: 12 }, 2400, vec![], "Starting"),
            (
                Event::Died {
                    pid: 77,
                    outcome: exit(),
                },
                2500,
                vec![],
                "Starting",
            ), // not ours
            (Event::Replace, 2600, vec![Action::Spawn], "Spawning"),
            (Event::Stop, 2700, vec![], "Stopped"),
            (
                Event::Died {
                    pid: 12,
                    outcome: exit(),
                },
                2800,
                vec![],
                "Stopped",
            ),
        ];
        let mut slot = Slot::default();
        for (i, (event, at, actions, state)) in table.into_iter().enumerate() {
            let got = step(&mut slot, event, &p, t0 + ms(at));
            assert_eq!(got, actions, "row {i}");
            let name = format!("{:?}", slot.lifecycle);
            assert!(name.starts_with(state), "row {i}: {name}");
        }
        assert_eq!(slot.restarts, 3);
    }

    #[test]
    fn hung_and_never_ready_instances_are_killed_then_replaced() {
        let t0 = Instant::now();
        let p = policy(0);
        let hung = |pid| Event::Hung {
            pid,
            reason: "no heartbeat for 10000 ms".into(),
        };
        let silent = "alive but silent (no heartbeat for 10000 ms)".to_string();
        let late = "not ready 30000 ms after it started (start_timeout)".to_string();
        let sigkill = |pid| Event::Died {
            pid,
            outcome: Outcome::Signaled(9),
        };
        type Row = (Event, u64, Vec<Action>, &'static str);
        let table: Vec<Row> = vec![
            (Event::Start, 0, vec![Action::Spawn], "Spawning"),
            (Event::Spawned { pid: 10 }, 0, vec![], "Starting"),
            (Event::Ready { pid: 10 }, 100, vec![], "Ready"),
            (hung(99), 20_000, vec![], "Ready"), // another instance: ignored
            (
                hung(10),
                20_000,
                vec![Action::Kill {
                    pid: 10,
                    reason: silent.clone(),
                }],
                "Ready",
            ),
            (hung(10), 20_100, vec![], "Ready"), // already being killed
            (
                sigkill(10),
                20_200,
                vec![
                    Action::Respawned {
                        outcome: Outcome::Killed(silent),
                    },
                    Action::Spawn,
                ],
                "Spawning",
            ),
            (Event::Spawned { pid: 11 }, 20_200, vec![], "Starting"),
            (Event::Tick, 50_000, vec![], "Starting"), // not yet 30 s
            (
                Event::Tick,
                50_200,
                vec![Action::Kill {
                    pid: 11,
                    reason: late.clone(),
                }],
                "Starting",
            ),
            (Event::Tick, 50_300, vec![], "Starting"),
            (
                sigkill(11),
                50_400,
                vec![Action::Backoff {
                    delay: ms(200),
                    outcome: Outcome::Killed(late),
                }],
                "Backoff",
            ),
        ];
        let mut slot = Slot::default();
        for (i, (event, at, actions, state)) in table.into_iter().enumerate() {
            let got = step(&mut slot, event, &p, t0 + ms(at));
            assert_eq!(got, actions, "row {i}");
            let name = format!("{:?}", slot.lifecycle);
            assert!(name.starts_with(state), "row {i}: {name}");
        }
    }

    #[test]
    fn a_slot_says_when_it_needs_the_next_tick() {
        let t0 = Instant::now();
        let p = policy(0);
        let mut slot = Slot::default();
        assert_eq!(slot.deadline(&p), None);
        step(&mut slot, Event::Start, &p, t0);
        step(&mut slot, Event::Spawned { pid: 3 }, &p, t0);
        assert_eq!(slot.deadline(&p), Some(t0 + p.start_timeout));
        step(&mut slot, Event::Tick, &p, t0 + p.start_timeout);
        assert_eq!(slot.deadline(&p), None, "being killed: nothing more due");
        let exit = Event::Died {
            pid: 3,
            outcome: Outcome::Signaled(9),
        };
        step(&mut slot, exit, &p, t0 + p.start_timeout);
        assert_eq!(slot.deadline(&p), Some(t0 + p.start_timeout + ms(200)));
    }

    #[test]
    fn too_many_restarts_in_the_window_fail_the_slot() {
        let t0 = Instant::now();
        let p = policy(2);
        let mut slot = Slot::default();
        let mut failed = None;
        for i in 0..3u64 {
            step(&mut slot, Event::Start, &p, t0);
            step(&mut slot, Event::Replace, &p, t0);
            step(&mut slot, Event::Spawned { pid: 5 }, &p, t0 + ms(i * 2000));
            let actions = step(
                &mut slot,
                Event::Died {
                    pid: 5,
                    outcome: Outcome::Signaled(9),
                },
                &p,
                t0 + ms(i * 2000 + 1500),
            );
            if let Some(Action::Failed { reason }) = actions.first() {
                failed = Some((i, reason.clone()));
            }
        }
        let (at, reason) = failed.expect("failed");
        assert_eq!(at, 2, "the third restart within the window fails");
        assert!(reason.contains("max_restarts = 2"), "{reason}");
        assert!(matches!(slot.lifecycle, Lifecycle::Failed { .. }));
        // An operator can start it again.
        assert_eq!(
            step(&mut slot, Event::Start, &p, t0 + ms(9000)),
            vec![Action::Spawn]
        );
    }
}
