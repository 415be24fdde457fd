//! `cohort-agent`: reads `COHORT_*`, joins the master as the cluster's agent,
//! answers `ping`, and leaves cleanly on SIGTERM or when drained. Exit
//! codes: 0 after a clean leave, 64 for bad settings, 1 on failure.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    cohort_process::init_from_env();
    let builder = match cohort::MemberBuilder::from_env() {
        Ok(b) => b.role(cohort::Role::Agent),
        Err(e) => {
            eprintln!("cohort-agent: {e}");
            return ExitCode::from(64);
        }
    };
    let shutdown = cohort_process::shutdown_signal();
    let result = async {
        let member = builder.join().await?;
        member.answer_pings();
        member.serve(shutdown).await
    };
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "cohort-agent failed");
            ExitCode::FAILURE
        }
    }
}
