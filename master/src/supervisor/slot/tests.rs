//! The transition table, backoff, restart limits and deadlines.

use super::*;

fn policy(max_restarts: u32) -> Policy {
    Policy {
        min_uptime: Duration::from_secs(1),
        backoff_initial: Duration::from_millis(200),
        backoff_max: Duration::from_secs(30),
        max_restarts,
        restart_window: Duration::from_secs(60),
        start_timeout: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(30),
        restart: RestartMode::Always,
    }
}

#[test]
fn restart_modes_decide_what_an_exit_starts() {
    let t0 = Instant::now();
    let run = |mode: RestartMode, outcome: Outcome, uptime_s: u64| {
        let p = Policy {
            restart: mode,
            ..policy(0)
        };
        let mut slot = Slot::default();
        step(&mut slot, Event::Start, &p, t0);
        step(&mut slot, Event::Spawned { pid: 7 }, &p, t0);
        let died = Event::Died { pid: 7, outcome };
        let actions = step(&mut slot, died, &p, t0 + Duration::from_secs(uptime_s));
        (actions, slot)
    };
    let ok = || Outcome::Exited(0);
    let three = || Outcome::Exited(3);
    // A one-shot that succeeds is done; one that fails is FAILED, however
    // long it ran, and neither counts as a restart.
    let (a, s) = run(RestartMode::Never, ok(), 5);
    assert_eq!(a, [Action::Finished { outcome: ok() }]);
    assert_eq!(
        (s.lifecycle, s.restarts),
        (Lifecycle::Finished { outcome: ok() }, 0)
    );
    let (a, s) = run(RestartMode::Never, three(), 5);
    let reason = "exited with status 3 (restart = never)".to_string();
    assert_eq!(
        a,
        [Action::Failed {
            reason: reason.clone()
        }]
    );
    assert_eq!(s.lifecycle, Lifecycle::Failed { reason });
    // on-failure: a clean exit stays down, a failure restarts as always.
    let (a, _) = run(RestartMode::OnFailure, ok(), 5);
    assert_eq!(a, [Action::Finished { outcome: ok() }]);
    let (a, _) = run(RestartMode::OnFailure, three(), 5);
    assert_eq!(a, [Action::Respawned { outcome: three() }, Action::Spawn]);
    let (a, _) = run(RestartMode::Always, ok(), 5);
    assert_eq!(a, [Action::Respawned { outcome: ok() }, Action::Spawn]);
}

#[test]
fn a_one_shot_has_no_start_timeout_and_runs_again_when_replaced() {
    let t0 = Instant::now();
    let p = Policy {
        restart: RestartMode::Never,
        ..policy(0)
    };
    let mut slot = Slot::default();
    step(&mut slot, Event::Start, &p, t0);
    step(&mut slot, Event::Spawned { pid: 7 }, &p, t0);
    assert_eq!(slot.deadline(&p), None);
    let late = t0 + p.start_timeout * 2;
    assert_eq!(step(&mut slot, Event::Tick, &p, late), []);
    let done = Event::Died {
        pid: 7,
        outcome: Outcome::Exited(0),
    };
    step(&mut slot, done, &p, late);
    assert_eq!(step(&mut slot, Event::Replace, &p, late), [Action::Spawn]);
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
            Event::SpawnFailed {
                reason: "no such file".into(),
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
        (
            Event::Stop,
            2700,
            vec![Action::Terminate { pid: 12 }],
            "Stopped",
        ),
        (
            Event::Died {
                pid: 12,
                outcome: exit(),
            },
            2800,
            vec![Action::Retired {
                pid: 12,
                outcome: exit(),
            }],
            "Stopped",
        ),
    ];
    let slot = run(table, &p, t0);
    assert_eq!(slot.restarts, 3);
}

#[test]
fn replaced_instances_serve_until_the_successor_is_ready_then_drain() {
    let t0 = Instant::now();
    let p = policy(0);
    let drained = "still running 30000 ms after it was asked to finish (drain_timeout)";
    let kill = |pid| Action::Kill {
        pid,
        reason: drained.into(),
    };
    let died = |pid| Event::Died {
        pid,
        outcome: Outcome::Signaled(9),
    };
    let retired = |pid| Action::Retired {
        pid,
        outcome: Outcome::Signaled(9),
    };
    type Row = (Event, u64, Vec<Action>, &'static str);
    let table: Vec<Row> = vec![
        (Event::Start, 0, vec![Action::Spawn], "Spawning"),
        (Event::Spawned { pid: 10 }, 0, vec![], "Starting"),
        (Event::Ready { pid: 10 }, 100, vec![], "Ready"),
        // Operator restart: the new instance starts, the old one serves on
        // with no clock running, however long its successor takes.
        (Event::Replace, 1_000, vec![Action::Spawn], "Spawning"),
        (Event::Spawned { pid: 11 }, 1_000, vec![], "Starting"),
        (Event::Tick, 29_000, vec![], "Starting"),
        (
            Event::Ready { pid: 11 },
            29_500,
            vec![Action::Terminate { pid: 10 }],
            "Ready",
        ),
        (Event::Tick, 59_499, vec![], "Ready"),
        (Event::Tick, 59_500, vec![kill(10)], "Ready"),
        (Event::Tick, 59_600, vec![], "Ready"), // killed once
        (died(10), 59_700, vec![retired(10)], "Ready"),
        // Fatal error: replaced at once, its drain clock starts now.
        (Event::Fatal { pid: 99 }, 60_000, vec![], "Ready"), // not ours
        (
            Event::Fatal { pid: 11 },
            60_000,
            vec![Action::Spawn],
            "Spawning",
        ),
        (Event::Spawned { pid: 12 }, 60_000, vec![], "Starting"),
        (
            Event::Ready { pid: 12 },
            61_000,
            vec![Action::Terminate { pid: 11 }],
            "Ready",
        ),
        (Event::Tick, 90_000, vec![kill(11)], "Ready"),
        (died(11), 90_100, vec![retired(11)], "Ready"),
        // Scale down: the current instance retires with its drain clock.
        (
            Event::Stop,
            91_000,
            vec![Action::Terminate { pid: 12 }],
            "Stopped",
        ),
        (Event::Tick, 121_000, vec![kill(12)], "Stopped"),
        (died(12), 121_100, vec![retired(12)], "Stopped"),
    ];
    let slot = run(table, &p, t0);
    assert_eq!(slot.restarts, 0, "replacements are not restarts");
    assert!(slot.retiring.is_empty());
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
    run(table, &p, t0);
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
    // A retiring instance's drain is due even when the slot is stopped.
    let mut slot = Slot::default();
    step(&mut slot, Event::Start, &p, t0);
    step(&mut slot, Event::Spawned { pid: 4 }, &p, t0);
    step(&mut slot, Event::Ready { pid: 4 }, &p, t0);
    assert_eq!(slot.deadline(&p), None);
    step(&mut slot, Event::Stop, &p, t0);
    assert_eq!(slot.deadline(&p), Some(t0 + p.drain_timeout));
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

/// Steps a fresh slot through `table` (event, ms after `t0`, the actions
/// expected, the state the lifecycle's name starts with).
fn run(table: Vec<(Event, u64, Vec<Action>, &str)>, p: &Policy, t0: Instant) -> Slot {
    let mut slot = Slot::default();
    for (i, (event, at, actions, state)) in table.into_iter().enumerate() {
        let got = step(&mut slot, event, p, t0 + ms(at));
        assert_eq!(got, actions, "row {i}");
        let name = format!("{:?}", slot.lifecycle);
        assert!(name.starts_with(state), "row {i}: {name}");
    }
    slot
}
