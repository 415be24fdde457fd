//! `cohort-agent [--config FILE] [--watch PATH]`: reads `COHORT_*`, joins as
//! the agent, runs its duties, exits 0 on SIGTERM or drain (64: bad
//! settings, 1: failure).

use clap::Parser;
use cohort_agent::AgentConfig;
use std::path::PathBuf;
use std::process::ExitCode;

/// The Cohort agent: joins the master named by COHORT_MASTER as the agent
/// and runs the cluster's shared duties.
#[derive(Parser, Debug)]
#[command(name = "cohort-agent", version)]
struct Flags {
    /// TOML with [[schedule]] entries (interval, type = "all"|"worker",
    /// action, data) and `watch`.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Broadcast `refresh` with the file's content whenever it changes.
    #[arg(long, value_name = "PATH")]
    watch: Option<PathBuf>,
}

fn load(flags: Flags) -> Result<AgentConfig, String> {
    let mut config = match &flags.config {
        Some(path) => {
            let shown = path.display();
            let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
            AgentConfig::parse(&text).map_err(|e| format!("{shown}: {e}"))?
        }
        None => AgentConfig::default(),
    };
    if flags.watch.is_some() {
        config.watch = flags.watch;
    }
    Ok(config)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    cohort_process::init_from_env(Some(Box::new(cohort::logs::layer())));
    let flags = match Flags::try_parse() {
        Ok(f) => f,
        // --help and --version come back from clap as "errors" too.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cohort-agent: {}", e.to_string().trim_end());
            return ExitCode::from(64);
        }
    };
    let (config, builder) = match (load(flags), cohort::MemberBuilder::from_env()) {
        (Ok(c), Ok(b)) => (c, b.role(cohort::Role::Agent)),
        (Err(e), _) => {
            eprintln!("cohort-agent: {e}");
            return ExitCode::from(64);
        }
        (_, Err(e)) => {
            eprintln!("cohort-agent: {e}");
            return ExitCode::from(64);
        }
    };
    let shutdown = cohort_process::shutdown_signal();
    let result = async {
        // SIGTERM while still joining ends the agent at once (as PID 1 in a
        // container nothing else would).
        let mut shutdown = std::pin::pin!(shutdown);
        let member = tokio::select! {
            m = builder.join() => m?,
            _ = &mut shutdown => {
                tracing::info!("stopped before joining the master");
                return Ok(());
            }
        };
        cohort_agent::run(member, config, shutdown).await
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cohort-agent failed");
            ExitCode::FAILURE
        }
    }
}
