//! The heartbeat budget (Nomad's model): the whole cluster sends at most
//! `[health] max_heartbeats_per_second`, so each member's interval grows
//! with the cluster, and the silences after which a member is SUSPECT and
//! evicted grow with it. Small clusters keep the configured timings. A
//! closed stream or an exited child is noticed at once whatever the size.

use crate::config::HealthConfig;
use std::time::Duration;

/// The longest interval the budget hands out, as a multiple of the
/// configured one (2⁸: 256 s at the default 1 s).
const MAX_LEVEL: u32 = 8;

/// The timings a member is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Timing {
    /// How often it heartbeats.
    pub(crate) heartbeat_interval: Duration,
    /// Silence after which it is SUSPECT.
    pub(crate) suspect_after: Duration,
    /// Silence after which it is evicted.
    pub(crate) dead_after: Duration,
}

/// The interval is the configured one times a power of two (the level):
/// the smallest that keeps `members / interval` within the budget. It
/// steps down only once the cluster fits the smaller step with a quarter
/// to spare, so a cluster at a boundary does not flap between two.
#[derive(Debug)]
pub(super) struct Budget {
    base: HealthConfig,
    /// Heartbeats a second for the whole cluster; 0: no budget.
    rate: u32,
    level: u32,
}

impl Budget {
    pub(super) fn new(base: HealthConfig) -> Budget {
        Budget {
            rate: base.max_heartbeats_per_second,
            base,
            level: 0,
        }
    }

    /// The timings members have now.
    pub(super) fn timing(&self) -> Timing {
        let factor = 1u32 << self.level;
        Timing {
            heartbeat_interval: self.base.heartbeat_interval * factor,
            suspect_after: self.base.suspect_after * factor,
            dead_after: self.base.dead_after * factor,
        }
    }

    /// Members a level's interval keeps within the budget.
    fn fits(&self, level: u32) -> f64 {
        f64::from(self.rate) * self.base.heartbeat_interval.as_secs_f64() * f64::from(1u32 << level)
    }

    /// Fits the budget to `members`; the new timings if they changed.
    pub(super) fn fit(&mut self, members: usize) -> Option<Timing> {
        if self.rate == 0 {
            return None;
        }
        let n = members as f64;
        let before = self.level;
        while self.level < MAX_LEVEL && n > self.fits(self.level) {
            self.level += 1;
        }
        while self.level > 0 && n <= 0.75 * self.fits(self.level - 1) {
            self.level -= 1;
        }
        (self.level != before).then(|| self.timing())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(rate: u32) -> Budget {
        Budget::new(HealthConfig {
            heartbeat_interval: Duration::from_secs(1),
            suspect_after: Duration::from_secs(3),
            dead_after: Duration::from_secs(10),
            max_heartbeats_per_second: rate,
        })
    }

    #[test]
    fn the_interval_grows_with_the_cluster_and_shrinks_again_with_a_margin() {
        let mut b = budget(100);
        let secs = |b: &Budget| b.timing().heartbeat_interval.as_secs();
        assert_eq!(b.fit(100), None, "100 members at 1 s fit 100 a second");
        assert_eq!(secs(&b), 1);
        let t = b.fit(101).expect("one more does not fit");
        assert_eq!(t.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(t.suspect_after, Duration::from_secs(6));
        assert_eq!(t.dead_after, Duration::from_secs(20));
        assert_eq!(
            b.fit(1000).map(|t| t.heartbeat_interval.as_secs()),
            Some(16)
        );
        // Down one step only with a quarter to spare: 8 s fits 800, so 600.
        assert_eq!(b.fit(601), None);
        assert_eq!(secs(&b), 16);
        assert_eq!(b.fit(600).map(|t| t.heartbeat_interval.as_secs()), Some(8));
        // Back at the start once small again; never below the configured.
        assert_eq!(b.fit(3).map(|t| t.heartbeat_interval.as_secs()), Some(1));
        assert_eq!(b.fit(0), None);
        assert_eq!(secs(&b), 1);
    }

    #[test]
    fn the_rate_stays_within_the_budget_at_every_size_up_to_the_cap() {
        let mut b = budget(1000);
        for n in (0..=200_000).step_by(997) {
            b.fit(n);
            let rate = n as f64 / b.timing().heartbeat_interval.as_secs_f64();
            if b.level < MAX_LEVEL {
                assert!(rate <= 1000.0, "{n} members: {rate:.0} a second");
            }
        }
        assert_eq!(b.level, MAX_LEVEL, "capped at 256 s");
    }

    #[test]
    fn no_budget_keeps_the_configured_timings() {
        let mut b = budget(0);
        assert_eq!(b.fit(1_000_000), None);
        assert_eq!(b.timing().heartbeat_interval, Duration::from_secs(1));
    }
}
