//! A remote member's own log lines, forwarded to the master over its Join
//! stream so that `cohortctl logs` shows them beside the local children's
//! (which the master captures itself).
//!
//! Add [`layer`] to the process's tracing subscriber (`cohort-agent` and
//! `cohort-worker` do). It does nothing until a member joins without a
//! local child's secret; then each event is formatted once into a bounded
//! queue ([`QUEUE_LINES`]) that the connection drains a few times a second,
//! at most [`LINES_PER_SECOND`]. What does not fit is counted and reported
//! as one line, never waited for: logging can neither slow the messenger
//! nor grow memory.

use cohort_proto::pb;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Lines waiting to be forwarded, at most.
pub const QUEUE_LINES: usize = 1000;
/// Lines forwarded per second, at most (the master keeps no more either).
pub const LINES_PER_SECOND: usize = 200;

static ENABLED: AtomicBool = AtomicBool::new(false);
static QUEUE: Mutex<Queue> = Mutex::new(Queue {
    lines: VecDeque::new(),
    dropped: 0,
});

struct Queue {
    lines: VecDeque<pb::LogLine>,
    dropped: u64,
}

/// The tracing layer that feeds the forwarder.
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardLayer;

/// The layer to add to a subscriber (`registry().with(cohort::logs::layer())`).
pub fn layer() -> ForwardLayer {
    ForwardLayer
}

/// Starts keeping lines (a member joined without a local child's secret).
pub(crate) fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Up to `max` queued lines, oldest first, with one more that says how
/// many were dropped since the last call, if any were.
pub(crate) fn take(max: usize) -> Vec<pb::LogLine> {
    let mut q = QUEUE.lock().unwrap_or_else(|p| p.into_inner());
    let n = q.lines.len().min(max);
    let mut lines: Vec<pb::LogLine> = q.lines.drain(..n).collect();
    if q.dropped > 0 {
        lines.push(pb::LogLine {
            at: Some(SystemTime::now().into()),
            level: "warn".into(),
            text: format!(
                "cohort: {} log lines not forwarded (over the rate)",
                q.dropped
            ),
        });
        q.dropped = 0;
    }
    lines
}

/// `target: message k=v …`.
struct Text(String);

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for ForwardLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if !ENABLED.load(Ordering::Relaxed) {
            return;
        }
        let meta = event.metadata();
        let mut text = Text(format!("{}: ", meta.target()));
        event.record(&mut text);
        let level = match *meta.level() {
            Level::ERROR => "error",
            Level::WARN => "warn",
            Level::INFO => "info",
            Level::DEBUG => "debug",
            Level::TRACE => "trace",
        };
        push(level, text.0);
    }
}

/// Forwards one line that did not come through tracing (a payload's
/// output, say), as the layer would: only once a remote member joined,
/// within the queue's bound.
pub fn forward(level: &str, text: String) {
    if ENABLED.load(Ordering::Relaxed) {
        push(level, text);
    }
}

fn push(level: &str, text: String) {
    let text = cohort_proto::log_line::cut(text);
    let mut q = QUEUE.lock().unwrap_or_else(|p| p.into_inner());
    if q.lines.len() >= QUEUE_LINES {
        q.dropped += 1;
        return;
    }
    q.lines.push_back(pb::LogLine {
        at: Some(SystemTime::now().into()),
        level: level.into(),
        text,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn lines_are_kept_only_once_enabled_bounded_and_drops_reported() {
        let subscriber = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before anyone joined");
            assert!(take(10).is_empty());
            enable();
            tracing::warn!(port = 8080, "listening");
            let got = take(10);
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].level, "warn");
            assert!(
                got[0].text.ends_with(": listening port=8080"),
                "{}",
                got[0].text
            );
            for i in 0..QUEUE_LINES + 5 {
                tracing::info!("line {i}");
            }
            let got = take(QUEUE_LINES);
            assert_eq!(got.len(), QUEUE_LINES + 1);
            assert!(got[QUEUE_LINES].text.contains("5 log lines not forwarded"));
        });
    }
}
