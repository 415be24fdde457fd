//! The leader's fence: until when this master may act as leader, on its own
//! monotonic clock. It is extended only by a keep-alive that etcd
//! acknowledged (from when that keep-alive was *sent*, minus a margin), so
//! it ends before etcd can let the lease expire. Whatever routes or writes
//! asks [`Fence::holds`] first: a master that was stopped (SIGSTOP), cut
//! off or slow finds its fence down the moment it runs again, before it can
//! act on anything it reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Until when this master leads. Cheap to clone and to check (one atomic
/// load and a clock read).
#[derive(Clone, Debug)]
pub(crate) struct Fence {
    base: Instant,
    /// Nanoseconds after `base`; 0 = not leading.
    until: Arc<AtomicU64>,
}

impl Fence {
    /// A fence that is down.
    pub(crate) fn new() -> Fence {
        Fence {
            base: Instant::now(),
            until: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Whether this master may act as leader now.
    pub(crate) fn holds(&self) -> bool {
        self.deadline().is_some_and(|d| Instant::now() < d)
    }

    /// When the fence comes down, if it is up.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self.until.load(Ordering::Acquire) {
            0 => None,
            n => Some(self.base + std::time::Duration::from_nanos(n)),
        }
    }

    /// Raises the fence until `until`.
    pub(crate) fn raise(&self, until: Instant) {
        let n = until.saturating_duration_since(self.base).as_nanos();
        let n = u64::try_from(n).unwrap_or(u64::MAX).max(1);
        self.until.store(n, Ordering::Release);
    }

    /// Takes the fence down at once.
    pub(crate) fn lower(&self) {
        self.until.store(0, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn holds_only_until_its_deadline_and_not_after_lowering() {
        let fence = Fence::new();
        assert!(!fence.holds(), "a new fence is down");
        fence.raise(Instant::now() + Duration::from_secs(60));
        assert!(fence.clone().holds(), "clones share the deadline");
        fence.raise(Instant::now() - Duration::from_millis(1));
        assert!(!fence.holds(), "a deadline in the past is down");
        fence.raise(Instant::now() + Duration::from_secs(60));
        fence.lower();
        assert!(!fence.holds());
        assert_eq!(fence.deadline(), None);
    }
}
