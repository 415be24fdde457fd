//! The transitions: [`step`] and the bookkeeping of deaths and retirees.

use super::*;

/// Applies `event`; returns the actions to take. An event that makes no
/// sense in the current state changes nothing and returns no action.
pub fn step(slot: &mut Slot, event: Event, policy: &Policy, now: Instant) -> Vec<Action> {
    if let Event::Died { pid, outcome } = &event
        && let Some(at) = slot.retiring.iter().position(|r| r.pid == *pid)
    {
        slot.retiring.remove(at);
        return vec![Action::Retired {
            pid: *pid,
            outcome: outcome.clone(),
        }];
    }
    let tick = event == Event::Tick;
    let mut actions = lifecycle(slot, event, policy, now);
    if tick {
        for r in &mut slot.retiring {
            if r.stage.until().is_some_and(|t| t <= now) {
                r.stage = Retiring::Killed;
                let reason = format!(
                    "still running {} ms after it was asked to finish (drain_timeout)",
                    policy.drain_timeout.as_millis()
                );
                actions.push(Action::Kill { pid: r.pid, reason });
            }
        }
    }
    actions
}

fn lifecycle(slot: &mut Slot, event: Event, policy: &Policy, now: Instant) -> Vec<Action> {
    use Lifecycle as L;
    match (&slot.lifecycle, event) {
        (L::Stopped | L::Failed { .. } | L::Finished { .. }, Event::Start) => {
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
            // The successor serves: its predecessors may go.
            release(slot, policy, now)
        }
        (L::Starting { pid, .. } | L::Ready { pid, .. }, Event::Replace) => {
            let pid = *pid;
            retire(slot, pid, None);
            slot.lifecycle = L::Spawning;
            vec![Action::Spawn]
        }
        (L::Starting { pid, .. } | L::Ready { pid, .. }, Event::Fatal { pid: p }) if *pid == p => {
            retire(slot, p, Some(now + policy.drain_timeout));
            slot.lifecycle = L::Spawning;
            vec![Action::Spawn]
        }
        (
            L::Backoff { .. } | L::Stopped | L::Failed { .. } | L::Finished { .. },
            Event::Replace,
        ) => {
            slot.lifecycle = L::Spawning;
            vec![Action::Spawn]
        }
        (L::Backoff { until, .. }, Event::Tick) if *until <= now => {
            slot.lifecycle = L::Spawning;
            vec![Action::Spawn]
        }
        (L::Spawning, Event::SpawnFailed { reason }) => died(
            slot,
            Duration::ZERO,
            Outcome::SpawnFailed(reason),
            policy,
            now,
        ),
        (L::Starting { pid, since } | L::Ready { pid, since }, Event::Died { pid: p, outcome })
            if *pid == p =>
        {
            let uptime = now.saturating_duration_since(*since);
            match slot.condemned.take() {
                Some(Condemned::NeverReady(why)) => {
                    died(slot, Duration::ZERO, Outcome::Killed(why), policy, now)
                }
                Some(Condemned::Hung(why)) => died(slot, uptime, Outcome::Killed(why), policy, now),
                None => died(slot, uptime, outcome, policy, now),
            }
        }
        (L::Starting { pid, .. } | L::Ready { pid, .. }, Event::Hung { pid: p, reason })
            if *pid == p && slot.condemned.is_none() =>
        {
            let reason = format!("alive but silent ({reason})");
            slot.condemned = Some(Condemned::Hung(reason.clone()));
            vec![Action::Kill { pid: p, reason }]
        }
        (L::Starting { pid, since }, Event::Tick)
            if now.saturating_duration_since(*since) >= policy.start_timeout
                && slot.condemned.is_none()
                && policy.restart != RestartMode::Never =>
        {
            let reason = format!(
                "not ready {} ms after it started (start_timeout)",
                policy.start_timeout.as_millis()
            );
            let pid = *pid;
            slot.condemned = Some(Condemned::NeverReady(reason.clone()));
            vec![Action::Kill { pid, reason }]
        }
        (_, Event::Stop) => {
            if let Some(pid) = slot.pid() {
                retire(slot, pid, None);
            }
            slot.lifecycle = L::Stopped;
            release(slot, policy, now)
        }
        (state, event) => {
            tracing::debug!(?state, ?event, "slot event ignored in this state");
            vec![]
        }
    }
}

/// Moves instance `pid` to the retiring list; `until` starts its drain
/// clock now (it is finishing by itself), `None` keeps it serving until the
/// slot's next instance is ready.
fn retire(slot: &mut Slot, pid: u32, until: Option<Instant>) {
    slot.condemned = None;
    slot.retiring.push(Retiree {
        pid,
        stage: Retiring::Serving { until },
    });
}

/// Asks the retiring instances still waiting to finish: SIGTERM, and
/// their drain clock starts unless it already runs.
fn release(slot: &mut Slot, policy: &Policy, now: Instant) -> Vec<Action> {
    let mut actions = Vec::new();
    for r in &mut slot.retiring {
        if let Retiring::Serving { until } = r.stage {
            let until = until.unwrap_or(now + policy.drain_timeout);
            r.stage = Retiring::Finishing { until };
            actions.push(Action::Terminate { pid: r.pid });
        }
    }
    actions
}

fn died(
    slot: &mut Slot,
    uptime: Duration,
    outcome: Outcome,
    policy: &Policy,
    now: Instant,
) -> Vec<Action> {
    let clean = outcome == Outcome::Exited(0);
    match policy.restart {
        RestartMode::Never if !clean => {
            let reason = format!("{outcome} (restart = never)");
            slot.lifecycle = Lifecycle::Failed {
                reason: reason.clone(),
            };
            return vec![Action::Failed { reason }];
        }
        RestartMode::Never | RestartMode::OnFailure if clean => {
            slot.lifecycle = Lifecycle::Finished {
                outcome: outcome.clone(),
            };
            return vec![Action::Finished { outcome }];
        }
        _ => {}
    }
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
