//! Reconnect delays: 1 s, ×1.6, ±20 % jitter, capped at 30 s (SPEC §2).

use std::time::Duration;

/// Capped exponential backoff with jitter.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    factor: f64,
    max: Duration,
    jitter: f64,
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_secs(1), 1.6, Duration::from_secs(30), 0.2)
    }
}

impl Backoff {
    /// A backoff starting at `initial`, multiplied by `factor` per attempt,
    /// capped at `max`, each delay moved by up to ±`jitter` (a fraction).
    pub fn new(initial: Duration, factor: f64, max: Duration, jitter: f64) -> Self {
        Backoff {
            initial,
            factor,
            max,
            jitter,
            next: initial,
        }
    }

    /// Starts over after a connection that worked.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The delay before the next attempt; `unit` in `[0, 1)` picks the
    /// jitter (random in production, fixed in tests).
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let base = self.next;
        self.next = base.mul_f64(self.factor).min(self.max);
        let spread = 1.0 + self.jitter * (2.0 * unit.clamp(0.0, 1.0) - 1.0);
        base.mul_f64(spread)
            .min(self.max.mul_f64(1.0 + self.jitter))
    }
}

/// A uniform number in `[0, 1)` from the OS's randomness (via uuid v4).
pub fn random_unit() -> f64 {
    let bits = uuid::Uuid::new_v4().as_u128() as u64 >> 11;
    bits as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_1_6_and_caps_at_30s() {
        let mut b = Backoff::default();
        let mid: Vec<u128> = (0..10).map(|_| b.next_delay(0.5).as_millis()).collect();
        assert_eq!(mid[..5], [1000, 1600, 2560, 4096, 6553]);
        assert_eq!(*mid.last().expect("ten delays"), 30_000);
        b.reset();
        assert_eq!(b.next_delay(0.5), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let mut b = Backoff::default();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(800));
        b.reset();
        assert_eq!(b.next_delay(1.0), Duration::from_millis(1200));
        for _ in 0..100 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
