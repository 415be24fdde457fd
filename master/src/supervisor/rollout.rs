//! A restart of several slots as a pure state machine: rolling (one at a
//! time, the next once the previous replacement is ready) or all at once,
//! with one deadline for the whole restart.

use std::collections::{HashSet, VecDeque};
use std::time::Instant;

/// A restart in progress.
#[derive(Debug)]
pub struct Rollout {
    queue: VecDeque<String>,
    waiting: HashSet<String>,
    deadline: Instant,
}

/// What the executor must do next.
#[derive(Debug, PartialEq)]
pub enum Progress {
    /// Replace these slots now.
    Replace(Vec<String>),
    /// Nothing yet: replacements are starting.
    Waiting,
    /// Every replacement is ready.
    Finished,
    /// The deadline passed; these slots were not replaced in time.
    Expired(Vec<String>),
}

impl Rollout {
    /// Starts a restart of `names`; returns it with the first slots to
    /// replace.
    pub fn begin(names: Vec<String>, rolling: bool, deadline: Instant) -> (Rollout, Progress) {
        let mut r = Rollout {
            queue: names.into(),
            waiting: HashSet::new(),
            deadline,
        };
        let first = if rolling {
            r.queue.pop_front().into_iter().collect()
        } else {
            r.queue.drain(..).collect()
        };
        let progress = r.take(first);
        (r, progress)
    }

    /// Slot `name`'s new instance is ready (or the slot is gone).
    pub fn ready(&mut self, name: &str) -> Progress {
        if !self.waiting.remove(name) {
            return Progress::Waiting;
        }
        if !self.waiting.is_empty() {
            return Progress::Waiting;
        }
        let next = self.queue.pop_front().into_iter().collect();
        self.take(next)
    }

    /// When the restart times out.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time passed: `Expired` once the deadline is reached.
    pub fn tick(&self, now: Instant) -> Progress {
        if now < self.deadline {
            return Progress::Waiting;
        }
        let mut pending: Vec<String> = self.waiting.iter().cloned().collect();
        pending.sort();
        pending.extend(self.queue.iter().cloned());
        Progress::Expired(pending)
    }

    fn take(&mut self, names: Vec<String>) -> Progress {
        if names.is_empty() {
            return Progress::Finished;
        }
        self.waiting.extend(names.iter().cloned());
        Progress::Replace(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn rolling_replaces_one_at_a_time_in_order() {
        let t0 = Instant::now();
        let (mut r, first) = Rollout::begin(names(&["w-1", "w-2", "w-3"]), true, t0);
        assert_eq!(first, Progress::Replace(names(&["w-1"])));
        let table = [
            ("w-2", Progress::Waiting), // not being replaced yet: ignored
            ("w-1", Progress::Replace(names(&["w-2"]))),
            ("w-1", Progress::Waiting), // twice: ignored
            ("w-2", Progress::Replace(names(&["w-3"]))),
            ("w-3", Progress::Finished),
        ];
        for (i, (ready, want)) in table.into_iter().enumerate() {
            assert_eq!(r.ready(ready), want, "row {i}");
        }
    }

    #[test]
    fn all_at_once_replaces_everything_and_finishes_on_the_last() {
        let t0 = Instant::now();
        let (mut r, first) = Rollout::begin(names(&["a", "b", "c"]), false, t0);
        assert_eq!(first, Progress::Replace(names(&["a", "b", "c"])));
        assert_eq!(r.ready("b"), Progress::Waiting);
        assert_eq!(r.ready("a"), Progress::Waiting);
        assert_eq!(r.ready("c"), Progress::Finished);
    }

    #[test]
    fn nothing_to_restart_finishes_at_once() {
        let (_, first) = Rollout::begin(vec![], true, Instant::now());
        assert_eq!(first, Progress::Finished);
    }

    #[test]
    fn the_deadline_names_what_was_not_replaced() {
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(60);
        let (mut r, _) = Rollout::begin(names(&["w-1", "w-2", "w-3"]), true, end);
        assert_eq!(r.ready("w-1"), Progress::Replace(names(&["w-2"])));
        assert_eq!(r.tick(end - Duration::from_millis(1)), Progress::Waiting);
        assert_eq!(r.tick(end), Progress::Expired(names(&["w-2", "w-3"])));
    }
}
