//! What `cohort-master`, `cohort-agent` and `cohort-worker` share:
//!
//! - [`init`]: one tracing setup, a `RUST_LOG`-style filter (default
//!   `info`), output on stderr, human-readable by default, JSON lines
//!   when `COHORT_LOG_FORMAT=json`, and lines with syslog priority prefixes
//!   for journald (`journal`, the default under systemd);
//! - [`shutdown_signal`]: completes on SIGTERM, SIGINT or SIGQUIT;
//! - [`parse_duration`]: `500ms`, `1s`, `2m` as config files and flags write them;
//! - [`lines`]: untrusted output read as bounded, lossily decoded lines;
//! - [`child`]: parent-death signal, fd placement and group signals for the
//!   processes the master and `cohort-worker --exec` start.

pub mod child;
mod journal;
pub mod lines;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// A layer added beside the output (the SDK's log forwarder).
pub type Extra = Box<dyn Layer<Registry> + Send + Sync>;

/// Installs the global subscriber. `log_format` is the value of
/// `COHORT_LOG_FORMAT`, `filter` the value of `RUST_LOG`; binaries read
/// them from the environment and pass them in. `extra` sees the events
/// that pass the filter.
pub fn init(log_format: Option<&str>, filter: Option<&str>, extra: Option<Extra>) {
    let filter = filter
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let out = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(std::io::stderr);
    let out: Box<dyn Layer<_> + Send + Sync> = match log_format {
        Some("json") => Box::new(out.json()),
        Some("journal") => Box::new(out.event_format(journal::Journal)),
        _ => Box::new(out),
    };
    // A second init (tests that run several binaries' mains) is harmless.
    let _ = tracing_subscriber::registry()
        .with(extra)
        .with(filter)
        .with(out)
        .try_init();
}

/// Reads `COHORT_LOG_FORMAT` and `RUST_LOG` from the process environment and
/// calls [`init`]; for binaries' `main`.
pub fn init_from_env(extra: Option<Extra>) {
    // Under systemd, stderr goes to journald (`JOURNAL_STREAM`): lines with
    // syslog priorities, so `journalctl -p err` shows the errors.
    let format = std::env::var(cohort_proto::env::LOG_FORMAT)
        .ok()
        .or_else(|| std::env::var_os("JOURNAL_STREAM").map(|_| "journal".to_string()));
    let filter = std::env::var("RUST_LOG").ok();
    init(format.as_deref(), filter.as_deref(), extra);
}

/// Installs handlers for SIGTERM, SIGINT and SIGQUIT now (call it before
/// announcing readiness, so an early signal is not lost) and returns a
/// future that completes on the first of them. Must be called inside a
/// tokio runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let streams = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::quit()),
    );
    async move {
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = streams else {
            // Without handlers the default dispositions still end us.
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = quit.recv() => {}
        }
    }
}

/// Parses a memory size: `512MiB`, `1GiB`, `64KiB`, `500MB`, `1G`, or bytes.
pub fn parse_bytes(v: &str) -> Result<u64, String> {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{v:?} is not a size like 512MiB, 1GiB or 500MB"))?;
    let scale: f64 = match unit.trim() {
        "" | "B" => 1.0,
        "K" | "KiB" => 1024.0,
        "M" | "MiB" => 1024.0 * 1024.0,
        "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        other => {
            return Err(format!(
                "{v:?}: unknown size unit {other:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ));
        }
    };
    Ok((n * scale) as u64)
}

/// Parses `250ms`, `1s`, `1.5s`, `2m`, `1h`.
pub fn parse_duration(v: &str) -> Result<std::time::Duration, String> {
    let v = v.trim();
    let split = v
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{v:?} is not a duration like 500ms, 1s or 2m"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "" => {
            return Err(format!(
                "{v:?} needs a unit: ms, s, m or h (like 500ms or 1s)"
            ));
        }
        other => {
            return Err(format!(
                "{v:?}: unknown unit {other:?}; use ms, s, m or h (like 500ms or 1s)"
            ));
        }
    };
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| format!("{v:?} is out of range"))
}

/// Raises this process's open-files soft limit to its hard limit: a master
/// with thousands of members needs a descriptor for each connection, and
/// the usual soft limit is 1,024. Returns the soft limit before and after.
pub fn raise_open_files() -> nix::Result<(u64, u64)> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok((soft, hard.max(soft)))
}

/// This host's name (`localhost` if it cannot be read).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::{parse_bytes, parse_duration};
    use std::time::Duration;

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        let rows = [
            ("512MiB", 512 << 20),
            ("1GiB", 1 << 30),
            ("64 KiB", 64 << 10),
            ("500MB", 500_000_000),
            ("1.5G", 3 << 29),
            ("4096", 4096),
        ];
        for (text, want) in rows {
            assert_eq!(parse_bytes(text), Ok(want), "{text}");
        }
        let bad = parse_bytes("5 parsecs").expect_err("parsecs");
        assert!(bad.contains("KiB, MiB, GiB"), "{bad}");
    }

    #[test]
    fn durations_name_the_units_they_accept() {
        assert_eq!(parse_duration("5 s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        let unknown = parse_duration("5 parsecs").expect_err("parsecs");
        assert!(unknown.contains("unknown unit \"parsecs\""), "{unknown}");
        assert!(unknown.contains("ms, s, m or h"), "{unknown}");
        let bare = parse_duration("5").expect_err("no unit");
        assert!(bare.contains("needs a unit: ms, s, m or h"), "{bare}");
    }
}
