//! `cohort-master`: parse config, set up logs, bind, announce, serve.

use cohort_master::config::{Config, ConfigError};
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match Config::load(&args, &|k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(ConfigError::Info(text)) => {
            println!("{}", text.trim_end());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cohort-master: bad configuration: {e}");
            return ExitCode::from(64);
        }
    };
    cohort_process::init_from_env(None);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    open_files(config.limits.max_connections);
    // Before binding: a dead master's leftovers may hold our ports.
    let reaped = cohort_master::reap(&std::env::temp_dir());
    for run in &reaped.runs {
        tracing::warn!(run = %run.display(), killed = ?reaped.killed, "removed what a master that died without cleaning up left behind");
    }
    // One thread: routing is short non-blocking work under one lock, and
    // measured here a current-thread master relays ~40 % more messages with
    // lower latency than a multi-thread one (no cross-thread wake-ups).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cohort-master: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        // An address that cannot be had is a configuration problem.
        Err(e) if e.downcast_ref::<cohort_master::BindError>().is_some() => {
            eprintln!("cohort-master: bad configuration: {e:#}");
            ExitCode::from(64)
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cohort-master failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    use anyhow::Context;

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| cohort_master::BindError {
            what: "the gRPC address (listen)".into(),
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().context("reading the bound address")?;
    let shared = cohort_master::bind_listeners(&config)?;
    let signal = cohort_process::shutdown_signal();
    let mut out = std::io::stdout();
    writeln!(out, "READY master {addr}")?;
    out.flush()?;
    cohort_master::run(listener, shared, config, async {
        signal.await;
        tracing::info!("shutdown signal received");
    })
    .await
}

/// Descriptors the master needs beside its connections: listeners, its
/// children's pipes and sockets, logs.
const OWN_FILES: u64 = 256;

/// Raises the open-files soft limit to the hard one, and says so; warns when
/// even that is too few for `max_connections`.
fn open_files(max_connections: usize) {
    match cohort_process::raise_open_files() {
        Ok((before, now)) => {
            tracing::info!(soft_before = before, soft = now, "open-files limit");
            let needed = max_connections as u64 + OWN_FILES;
            if now < needed {
                tracing::warn!(
                    limit = now,
                    max_connections,
                    "the open-files limit is below [limits] max_connections plus the master's own: \
                     connections past it fail at accept; raise LimitNOFILE (systemd) or ulimit -Hn"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-files limit"),
    }
}
