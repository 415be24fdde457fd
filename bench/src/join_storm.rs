//! What a join storm costs the members already there: two SDK members
//! exchange requests back to back while N light members join at once;
//! the request latency over the storm, with the master's default join
//! admission (`[limits] join_rate`) and without it (`--join-rate 0`).

use crate::cluster::start_master;
use crate::{percentile, us};
use cohort::{MemberBuilder, Role, Target};
use cohort_e2e::light::{Light, ready_count};
use std::time::{Duration, Instant};

/// One row: the storm of `n` against a master started with `extra` flags.
pub async fn row(n: usize, what: &str, extra: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["--agent-count", "0", "--worker-count", "0"];
    args.extend_from_slice(extra);
    let master = start_master(&args, None)?;
    let url = format!("http://{}", master.addr);
    let responder = MemberBuilder::new(url.clone(), Role::Worker)
        .name("responder")
        .join()
        .await?;
    let mut asked = responder.on_with_capacity("req", 1024);
    responder.ready().await?;
    let answering = tokio::spawn(async move {
        while let Some(msg) = asked.recv().await {
            let _ = msg.reply(msg.data.clone()).await;
        }
    });
    let asker = MemberBuilder::new(url, Role::Agent)
        .name("asker")
        .join()
        .await?;
    asker.ready().await?;
    let target = Target::Member("responder".into());
    for _ in 0..200 {
        asker
            .request(target.clone(), "req", "warm", Duration::from_secs(5))
            .await?;
    }

    let started = Instant::now();
    let light = Light::start(&master.addr, n, "m", "none");
    let counting = {
        let addr = master.addr.clone();
        tokio::spawn(async move {
            // The light members, plus the two.
            while ready_count(&addr).await < n + 2 && started.elapsed() < Duration::from_secs(120) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            started.elapsed()
        })
    };
    let mut latencies = Vec::new();
    let mut failed = 0;
    while !counting.is_finished() && latencies.len() < 1_000_000 {
        let t = Instant::now();
        match asker
            .request(
                target.clone(),
                "req",
                "0123456789abcdef",
                Duration::from_secs(10),
            )
            .await
        {
            Ok(_) => latencies.push(t.elapsed()),
            Err(_) => failed += 1,
        }
    }
    let ready = counting.await?;
    drop(light);
    answering.abort();
    latencies.sort();
    let max = latencies.last().copied().unwrap_or_default();
    Ok(format!(
        "| {n} at once, {what} | {:.2} s | {} | {} / {} / {} | {failed} |\n",
        ready.as_secs_f64(),
        latencies.len(),
        us(percentile(&latencies, 0.5)),
        us(percentile(&latencies, 0.99)),
        us(max),
    ))
}

/// The table's head.
pub const HEAD: &str = "| join storm | all READY | requests between two members meanwhile | request p50 / p99 / max | failed |\n|---|---|---|---|---|\n";
