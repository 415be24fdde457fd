//! One tracing setup for `cohort-master`, `cohort-agent` and
//! `cohort-worker`: a `RUST_LOG`-style filter (default `info`), output on
//! stderr, human-readable by default and JSON lines when
//! `COHORT_LOG_FORMAT=json`.

use tracing_subscriber::EnvFilter;

/// The environment variable that picks the log format (`json` or `text`).
pub const ENV_LOG_FORMAT: &str = "COHORT_LOG_FORMAT";

/// Installs the global subscriber. `log_format` is the value of
/// `COHORT_LOG_FORMAT`, `filter` the value of `RUST_LOG`; binaries read
/// them from the environment and pass them in.
pub fn init(log_format: Option<&str>, filter: Option<&str>) {
    let filter = filter
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests that run several binaries' mains) is harmless.
    let _ = if log_format == Some("json") {
        builder.json().try_init()
    } else {
        builder.with_ansi(false).try_init()
    };
}

/// Reads `COHORT_LOG_FORMAT` and `RUST_LOG` from the process environment and
/// calls [`init`]; for binaries' `main`.
pub fn init_from_env() {
    let format = std::env::var(ENV_LOG_FORMAT).ok();
    let filter = std::env::var("RUST_LOG").ok();
    init(format.as_deref(), filter.as_deref());
}
