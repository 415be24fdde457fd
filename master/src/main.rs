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
    cohort_telemetry::init_from_env();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cohort-master: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
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
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    let mut out = std::io::stdout();
    writeln!(out, "READY master {addr}")?;
    out.flush()?;
    cohort_master::run(listener, config, shutdown_signal()).await
}

/// Completes on SIGTERM, SIGINT or SIGQUIT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut streams = Vec::new();
    for kind in [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::quit(),
    ] {
        match signal(kind) {
            Ok(s) => streams.push(s),
            Err(e) => tracing::warn!(error = %e, "cannot listen for a shutdown signal"),
        }
    }
    let waits = streams.iter_mut().map(|s| Box::pin(s.recv()));
    futures_select_all(waits).await;
    tracing::info!("shutdown signal received");
}

async fn futures_select_all<F: std::future::Future + Unpin>(futs: impl Iterator<Item = F>) {
    let mut futs: Vec<F> = futs.collect();
    if futs.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for f in futs.iter_mut() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}
