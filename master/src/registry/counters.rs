//! What the registry counts as it goes, for the metrics listener to
//! export: a leaf the registry owns, with no idea of who scrapes it.

use super::Routed;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// What the registry counts as it goes.
#[derive(Clone, Debug)]
pub struct RoutingMetrics {
    /// Deliveries the master queued for members (a broadcast to N is N).
    pub messages_routed: Counter,
    /// Request to reply, as the master saw it.
    pub request_seconds: Histogram,
    /// Heartbeat to its ack, as members measured it.
    pub heartbeat_rtt_seconds: Histogram,
    /// Joins refused because the cluster had `[limits] max_members`.
    pub joins_refused_full: Counter,
}

impl Default for RoutingMetrics {
    fn default() -> Self {
        RoutingMetrics {
            messages_routed: Counter::default(),
            joins_refused_full: Counter::default(),
            // 100 µs … ~6.5 s.
            request_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            // 50 µs … ~3.3 s.
            heartbeat_rtt_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 17)),
        }
    }
}

impl RoutingMetrics {
    /// Counts what one envelope reached, at once or once room frees.
    pub fn note_routed(&self, routed: &Routed) {
        let n = u64::from(routed.reached) + routed.waits.len() as u64;
        self.messages_routed.inc_by(n);
    }
}
