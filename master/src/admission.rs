//! Join admission: at most `[limits] join_rate` joins a second are
//! registered from the network (a tenth of a second's worth may come at
//! once), so a storm of reconnecting members cannot take the master's
//! thread from routing and heartbeats: registering 5,000 back to back
//! holds up every message for about 0.4 s on a small machine. A join beyond the rate waits its turn, in
//! arrival order, and is not lost: its member is registered late, never
//! refused for being early. Only a join whose turn is more than
//! [`MAX_WAIT`] away is refused, with UNAVAILABLE, which members retry
//! with their jittered backoff; so what waits is bounded (`join_rate` ×
//! `MAX_WAIT` hellos, each checked first: a few KiB). The master's own
//! children, on the private socket, never wait.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tonic::Status;

/// The longest a join waits for its turn before it is refused.
pub const MAX_WAIT: Duration = Duration::from_secs(10);

/// Turns unused this long ago may still be taken at once: the burst.
const BURST: Duration = Duration::from_millis(100);

/// Joins admitted at a bounded rate.
#[derive(Debug)]
pub struct Admission {
    /// Joins a second; 0 admits all at once.
    rate: u32,
    /// When the next join may go (the rate's "theoretical arrival time").
    next: Mutex<Option<Instant>>,
    /// Joins waiting for their turn now.
    pub waiting: Gauge,
    /// Joins refused because their turn was too far away.
    pub refused: Counter,
}

impl Admission {
    /// Admits `rate` joins a second; 0 = no limit.
    pub fn new(rate: u32) -> Self {
        Admission {
            rate,
            next: Mutex::new(None),
            waiting: Gauge::default(),
            refused: Counter::default(),
        }
    }

    /// The time a join arriving `now` may go, or how far away that is if
    /// it is beyond [`MAX_WAIT`] (then no turn is taken).
    fn turn(&self, now: Instant) -> Result<Instant, Duration> {
        if self.rate == 0 {
            return Ok(now);
        }
        let interval = Duration::from_secs(1) / self.rate;
        let earliest = now.checked_sub(BURST).unwrap_or(now);
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let at = next.map_or(earliest, |n| n.max(earliest));
        let ahead = at.saturating_duration_since(now);
        if ahead > MAX_WAIT {
            return Err(ahead);
        }
        *next = Some(at + interval);
        Ok(at)
    }

    /// Waits for this join's turn; refuses it if the turn is too far away.
    pub async fn admit(&self) -> Result<(), Status> {
        let now = Instant::now();
        let at = self.turn(now).map_err(|ahead| {
            self.refused.inc();
            Status::unavailable(format!(
                "the master admits {} joins a second and has {} s of them waiting: \
                 retry later (members do, with backoff)",
                self.rate,
                ahead.as_secs()
            ))
        })?;
        if at > now {
            self.waiting.inc();
            let _waiting = Waiting(&self.waiting);
            tokio::time::sleep_until(at).await;
        }
        Ok(())
    }
}

/// Counts a join as waiting for as long as it waits (its stream may go
/// away meanwhile).
struct Waiting<'a>(&'a Gauge);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tenth_of_a_seconds_worth_goes_at_once_then_joins_wait_in_turn() {
        let a = Admission::new(1000);
        let t0 = Instant::now();
        let turns: Vec<_> = (0..102).map(|_| a.turn(t0).expect("a turn")).collect();
        assert!(turns[..=100].iter().all(|t| *t <= t0), "the burst");
        assert_eq!(turns[101], t0 + Duration::from_millis(1));
        // Later arrivals queue behind, 1 ms apart.
        assert_eq!(
            a.turn(t0 + Duration::from_micros(100)),
            Ok(t0 + Duration::from_millis(2))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_beyond_the_longest_wait_is_refused_and_takes_nothing() {
        let a = Admission::new(10);
        let t0 = Instant::now();
        // 1 at once (a tenth of a second's worth at 10 a second),
        // then 100 more fill the 10 s a join may wait.
        for _ in 0..101 {
            a.turn(t0).expect("a turn");
        }
        let last = a.turn(t0).expect("the last turn within 10 s");
        assert_eq!(last, t0 + MAX_WAIT);
        assert!(a.turn(t0).is_err());
        assert!(a.turn(t0).is_err(), "a refusal took no turn");
        let status = a.admit().await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains("10 joins a second"), "{status}");
        assert_eq!(a.refused.get(), 1);
        // A quiet master admits again at once.
        tokio::time::advance(Duration::from_secs(30)).await;
        let now = Instant::now();
        assert!(a.turn(now).expect("a turn") <= now);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_join_is_counted_until_its_turn() {
        let a = std::sync::Arc::new(Admission::new(1));
        a.admit().await.expect("the burst");
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.admit().await })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(a.waiting.get(), 1);
        waiter.await.expect("join").expect("admitted in turn");
        assert_eq!(a.waiting.get(), 0);
    }

    #[test]
    fn no_rate_admits_everyone_at_once() {
        let a = Admission::new(0);
        let now = Instant::now();
        assert!((0..100_000).all(|_| a.turn(now) == Ok(now)));
    }
}
