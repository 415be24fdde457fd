//! Waiting on a condition with a deadline: the one `eventually`, blocking
//! or async.

use crate::WAIT;
use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what`
/// after [`WAIT`].
pub fn eventually<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    eventually_within(what, WAIT, check)
}

/// [`eventually`] with a deadline of `limit` (for what a real engine takes
/// its time over: Prometheus scraping, thousands of members).
pub fn eventually_within<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `check` every 50 ms (async) until it returns `Some`, or panics
/// with `what` after [`WAIT`].
pub async fn eventually_async<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_async_within(what, WAIT, check).await
}

/// [`eventually_async`] with a deadline of `limit`.
pub async fn eventually_async_within<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        // A check that never returns (a call nobody answers) counts as a
        // miss at the deadline.
        if let Ok(Some(v)) = tokio::time::timeout_at(deadline, check()).await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
