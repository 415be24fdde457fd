//! Joining, against addresses where nothing answers. Its own test binary:
//! a join turns on the SDK's process-wide log forwarding, which the
//! library's unit tests check from a clean start.

use cohort::{Code, MemberBuilder, Role};
use std::time::Duration;
use tokio::time::Instant;

// On paused time: the join's timers, not this machine's speed, decide.
#[tokio::test(start_paused = true)]
async fn a_first_join_gives_up_at_its_timeout_not_a_backoff_later() {
    // Nothing listens on port 1: each try is refused at once. The first
    // backoff is about a second (0.8–1.2 s).
    let started = Instant::now();
    let err = MemberBuilder::new("http://127.0.0.1:1", Role::Worker)
        .join_timeout(Duration::from_millis(300))
        .join()
        .await
        .expect_err("nothing listens there");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "retried until {took:?}");
    assert!(took < Duration::from_millis(750), "gave up after {took:?}");
}
