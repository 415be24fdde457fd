//! `cohort-worker [--http ADDR] [--demo-faults] [--ready-after DUR] [--exec -- CMD ARGS]`: reads
//! `COHORT_*` and `LISTEN_FDS`, runs the demo worker (or CMD). Exit codes:
//! 0 after a clean leave, the payload's status with `--exec`, 70 after the
//! fatal-error path, 64 for bad settings, 1 on failure.

use clap::Parser;
use cohort_worker::{Settings, listeners::Inherited};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// A Cohort worker: joins the master named by COHORT_MASTER and runs the
/// demo app on the inherited `http` listener, or CMD as its payload.
#[derive(Parser, Debug)]
#[command(name = "cohort-worker", version)]
struct Flags {
    /// Serve HTTP here too (port 0 ok), beside an inherited `http`
    /// listener; reported to the master as the label `http`, where an
    /// app's health probe (GET /healthz) goes.
    #[arg(long, value_name = "ADDR")]
    http: Option<SocketAddr>,
    /// Enable POST /crash (the fatal-error path), POST /grow?mib=N (a
    /// memory leak, for max_rss) and POST /sick (GET /healthz fails from
    /// then on), for demos and tests only.
    #[arg(long)]
    demo_faults: bool,
    /// Run CMD as the payload: `--exec -- CMD ARGS`; the messenger speaks
    /// JSON lines on fd $COHORT_CHANNEL_FD.
    #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "CMD")]
    exec: Vec<String>,
    /// With --exec: report ready once CMD has run this long (1s, 500ms),
    /// unless it says so first on its channel.
    #[arg(long, value_name = "DUR", value_parser = cohort_process::parse_duration, requires = "exec")]
    ready_after: Option<Duration>,
}

/// The environment variable twin of `--http`.
const ENV_HTTP: &str = "COHORT_HTTP_ADDR";

/// Why the command line was not used: clap's answer (a bad flag, or
/// `--help` / `--version`), or a bad setting.
#[derive(Debug)]
enum ParseError {
    Clap(clap::Error),
    Bad(String),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::Clap(e) => write!(f, "{}", e.to_string().trim_end()),
            ParseError::Bad(m) => f.write_str(m),
        }
    }
}

fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Settings, ParseError> {
    let argv = std::iter::once("cohort-worker".to_string()).chain(args.iter().cloned());
    let flags = Flags::try_parse_from(argv).map_err(ParseError::Clap)?;
    let bad = |m: String| ParseError::Bad(m);
    let http = match (flags.http, env(ENV_HTTP)) {
        (Some(addr), _) => Some(addr),
        (None, Some(addr)) => Some(addr.parse().map_err(|_| {
            bad(format!(
                "{ENV_HTTP}: {addr:?} is not an address like 127.0.0.1:8080"
            ))
        })?),
        (None, None) => None,
    };
    let exec: Vec<String> = flags.exec.into_iter().skip_while(|a| a == "--").collect();
    if exec.is_empty() && args.iter().any(|a| a == "--exec") {
        return Err(bad("--exec needs a command: --exec -- CMD ARGS".into()));
    }
    Ok(Settings {
        inherited: Inherited::parse(
            env("LISTEN_FDS").as_deref(),
            env("LISTEN_FDNAMES").as_deref(),
        ),
        drain: Duration::from_secs(30),
        http,
        demo_faults: flags.demo_faults,
        exec,
        ready_after: flags.ready_after,
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    cohort_process::init_from_env(Some(Box::new(cohort::logs::layer())));
    let args: Vec<String> = std::env::args().skip(1).collect();
    let settings = match parse(&args, |k| std::env::var(k).ok()) {
        Ok(s) => s,
        // --help and --version come back from clap as "errors" too.
        Err(ParseError::Clap(e)) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cohort-worker: {e}");
            return ExitCode::from(64);
        }
    };
    let builder = match cohort::MemberBuilder::from_env() {
        Ok(b) => b.role(cohort::Role::Worker),
        Err(e) => {
            eprintln!("cohort-worker: {e}");
            return ExitCode::from(64);
        }
    };
    let shutdown = cohort_process::shutdown_signal();
    match cohort_worker::run(builder, settings, shutdown).await {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cohort-worker failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_env() {
        let none = |_: &str| None;
        let s = parse(
            &[
                "--http".into(),
                "127.0.0.1:0".into(),
                "--demo-faults".into(),
            ],
            none,
        )
        .expect("ok");
        assert!(s.demo_faults && s.http.is_some());
        let s = parse(
            &[
                "--exec".into(),
                "--".into(),
                "sh".into(),
                "-c".into(),
                "x".into(),
            ],
            none,
        )
        .expect("ok");
        assert_eq!(s.exec, ["sh", "-c", "x"]);
        let s = parse(
            &["--ready-after", "1s", "--exec", "--", "true"].map(String::from),
            none,
        )
        .expect("ok");
        assert_eq!(s.ready_after, Some(Duration::from_secs(1)));
        assert!(parse(&["--ready-after".into(), "1s".into()], none).is_err());
        assert!(parse(&["--exec".into()], none).is_err());
        assert!(
            parse(&["--nope".into()], none)
                .expect_err("bad")
                .to_string()
                .contains("--nope")
        );
        let s = parse(&[], |k| (k == "LISTEN_FDS").then(|| "1".to_string())).expect("ok");
        assert_eq!(s.inherited.names, ["unknown"]);
    }
}
