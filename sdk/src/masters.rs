//! Which of several masters to join next ([ha], SPEC §9b): the leader a
//! standby named, else the next in the list; a short pause while an
//! election runs, the usual backoff once every master has failed.

use std::time::Duration;

/// Standbys' answers followed in a row before a pause.
const MAX_HOPS: u32 = 2;
/// The pause after a pass in which standbys answered but the leader they
/// named could not be reached: most likely it has just died and etcd still
/// holds its key (for up to one lease TTL), so the next pass comes soon.
pub(crate) const ELECTION_PAUSE: Duration = Duration::from_millis(300);
/// Such short pauses in a row before the usual backoff (a leader that
/// stays unreachable is a partition, not an election).
const ELECTION_PASSES: u32 = 10;

/// What to do after a master failed.
#[derive(Debug, PartialEq)]
pub(crate) enum Next {
    /// Try the next master now.
    Now,
    /// A short pause: an election is under way.
    Soon,
    /// Every master failed: back off.
    BackOff,
}

/// Which master to try next, with several: the leader a standby named,
/// else the next one in the list after one that failed; a pause only after
/// every one failed in a row.
pub(crate) struct Masters {
    list: Vec<String>,
    at: usize,
    leader: Option<String>,
    hops: u32,
    failed_in_a_row: usize,
    /// Why each master tried in this pass failed.
    why: Vec<String>,
    /// A standby answered in this pass (named a leader).
    answered: bool,
    /// Short pauses in a row.
    soon: u32,
}

impl Masters {
    pub(crate) fn new(list: Vec<String>) -> Masters {
        Masters {
            list,
            at: 0,
            leader: None,
            hops: 0,
            failed_in_a_row: 0,
            why: Vec::new(),
            answered: false,
            soon: 0,
        }
    }

    pub(crate) fn current(&self) -> String {
        match &self.leader {
            Some(l) => l.clone(),
            None => self
                .list
                .get(self.at)
                .cloned()
                .unwrap_or_else(|| "http://127.0.0.1:7420".into()),
        }
    }

    /// A standby named the leader: try it at once (up to [`MAX_HOPS`]).
    pub(crate) fn follow(&mut self, leader: String) -> bool {
        self.answered = true;
        self.hops += 1;
        if self.hops > MAX_HOPS {
            self.leader = None;
            return false;
        }
        self.leader = Some(crate::builder::url(&leader));
        true
    }

    /// The current master (`addr`) failed (`why`): the next one, now, soon
    /// or after a backoff once every master has failed in a row; with
    /// several, that is said once per pass, naming each master and why.
    pub(crate) fn failed(&mut self, addr: &str, why: &str) -> Next {
        self.leader = None;
        self.hops = 0;
        self.at = (self.at + 1) % self.list.len().max(1);
        self.failed_in_a_row += 1;
        self.why.push(format!("{addr}: {why}"));
        if self.failed_in_a_row < self.list.len() {
            return Next::Now;
        }
        let election = std::mem::take(&mut self.answered) && self.soon < ELECTION_PASSES;
        if self.list.len() > 1 && !election {
            tracing::warn!(
                tried = %self.why.join("; "),
                "no master could be joined (a leader a standby named may be unreachable from here); trying again"
            );
        }
        self.failed_in_a_row = 0;
        self.why.clear();
        if election {
            self.soon += 1;
            Next::Soon
        } else {
            Next::BackOff
        }
    }

    pub(crate) fn joined(&mut self) {
        self.hops = 0;
        self.failed_in_a_row = 0;
        self.why.clear();
        self.answered = false;
        self.soon = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_masters_are_tried_in_turn_following_the_leader_a_standby_names() {
        let list = ["http://a:1", "http://b:1", "http://c:1"].map(String::from);
        let mut m = Masters::new(list.to_vec());
        assert_eq!(m.current(), "http://a:1");
        // a is down: b at once, then c; after all three, a backoff.
        assert_eq!(m.failed("http://a:1", "refused"), Next::Now);
        assert_eq!(m.current(), "http://b:1");
        // b is a standby naming c; c at once, but not a third hop in a row.
        assert!(m.follow("c:1".into()));
        assert_eq!(m.current(), "http://c:1");
        assert!(m.follow("b:1".into()));
        assert!(!m.follow("a:1".into()), "at most two hops");
        // The named leader cannot be reached: next in the list.
        assert_eq!(m.failed("http://c:1", "refused"), Next::Now);
        assert_eq!(m.current(), "http://c:1");
        // A pass in which a standby answered: an election, a short pause,
        // but only so many times in a row.
        assert_eq!(m.failed("http://c:1", "refused"), Next::Soon);
        for _ in 1..ELECTION_PASSES {
            assert!(m.follow("x:1".into()));
            for _ in 0..3 {
                let _ = m.failed("http://x:1", "refused");
            }
        }
        assert!(m.follow("x:1".into()));
        let nexts: Vec<Next> = (0..3).map(|_| m.failed("http://x:1", "refused")).collect();
        assert_eq!(
            nexts.last(),
            Some(&Next::BackOff),
            "a leader that stays away is backed off from"
        );
        m.joined();
        assert_eq!(
            m.failed("http://a:1", "gone"),
            Next::Now,
            "joining starts a new count"
        );
        // One master: every failure is a whole pass.
        let mut one = Masters::new(vec!["http://a:1".into()]);
        assert_eq!(one.failed("http://a:1", "refused"), Next::BackOff);
    }
}
