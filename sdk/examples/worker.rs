//! A minimal Cohort worker: joins the master named by `COHORT_MASTER`
//! (default 127.0.0.1:7420), answers `ping`, replies to `greet` requests,
//! logs `refresh` broadcasts, and leaves cleanly on Ctrl-C or drain.
//!
//! ```text
//! COHORT_MASTER=http://127.0.0.1:7420 cargo run -p cohort --example worker
//! ```

use cohort::MemberBuilder;

#[tokio::main]
async fn main() -> Result<(), cohort::Error> {
    cohort_process::init_from_env(Some(Box::new(cohort::logs::layer())));
    let member = MemberBuilder::from_env()?.join().await?;
    member.answer_pings();

    let mut greet = member.on("greet");
    tokio::spawn(async move {
        while let Some(msg) = greet.recv().await {
            let who = msg.text().unwrap_or("stranger").to_string();
            if let Err(e) = msg.reply(format!("\"hello, {who}\"")).await {
                tracing::warn!(error = %e, "reply failed");
            }
        }
    });
    let mut refresh = member.on("refresh");
    tokio::spawn(async move {
        while let Some(msg) = refresh.recv().await {
            tracing::info!(from = %msg.from, data = ?msg.text(), "refresh");
        }
    });

    let me = member.clone();
    tokio::spawn(async move {
        me.cluster_ready().await;
        tracing::info!(name = %me.name(), "the cluster is ready");
    });
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    member.serve(ctrl_c).await
}
