//! `cohort-agent [--config FILE] [--watch PATH]`: reads `COHORT_*`, joins as
//! the agent, runs its duties, exits 0 on SIGTERM or drain (64: bad
//! settings, 1: failure).

use cohort_agent::AgentConfig;
use std::process::ExitCode;

const USAGE: &str = "usage: cohort-agent [--config FILE] [--watch PATH]
  --config FILE   TOML with [[schedule]] entries (interval, type = \"all\"|\"worker\", action, data) and watch
  --watch PATH    broadcast `refresh` with the file's content whenever it changes";

fn load(args: &[String]) -> Result<AgentConfig, String> {
    let mut config = AgentConfig::default();
    let mut watch = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--config" => {
                let path = it.next().ok_or("--config needs a file")?;
                let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
                config = AgentConfig::parse(&text).map_err(|e| format!("{path}: {e}"))?;
            }
            "--watch" => watch = Some(it.next().ok_or("--watch needs a path")?.into()),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if watch.is_some() {
        config.watch = watch;
    }
    Ok(config)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    cohort_process::init_from_env();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (config, builder) = match (load(&args), cohort::MemberBuilder::from_env()) {
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
        let member = builder.join().await?;
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
