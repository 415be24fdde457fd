//! The rows of the messaging benchmark, one function each: every row runs
//! against the same master and members, in the order `messaging` calls
//! them, and returns its line of the table.

use crate::{BROADCAST_MEMBERS, Guard, LOG_RATE, now_ns, percentile, spawn_self, us, wait_ready};
use anyhow::Context;
use cohort::{Member, Role, Subscription, Target};
use cohort_e2e::cpu_seconds;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What the relay rows share: the driver, where the sink's `done` comes,
/// the master, and how many to relay.
pub(crate) struct Run {
    pub a: Member,
    pub done: Subscription,
    pub url: String,
    pub master_pid: u32,
    pub relay: usize,
}

/// Request/reply A → master → B → master → A, after `warm` unmeasured.
pub(crate) async fn request_reply(a: &Member, n: usize, warm: usize) -> anyhow::Result<String> {
    let target = Target::Member("responder".into());
    for _ in 0..warm {
        a.request(target.clone(), "req", "warm", Duration::from_secs(5))
            .await?;
    }
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        a.request(
            target.clone(),
            "req",
            "0123456789abcdef",
            Duration::from_secs(5),
        )
        .await?;
        lat.push(t.elapsed());
    }
    lat.sort();
    Ok(format!(
        "| request/reply A→master→B→master→A ({n} requests) | p50 {} | p99 {} |\n",
        us(percentile(&lat, 0.5)),
        us(percentile(&lat, 0.99))
    ))
}

/// One-way relay A → master → B, 64-byte payloads, from the SDK.
pub(crate) async fn relay(run: &mut Run) -> anyhow::Result<String> {
    let (rate, received, cpu_per_million) = relay_run(run).await?;
    let n = run.relay;
    Ok(format!(
        "| one-way relay A→master→B, 64 B, SDK sender ({n} sent) | {rate:.0} msg/s | {received} received ({} lost), master {cpu_per_million:.2} CPU-s per million |\n",
        n as u64 - received
    ))
}

/// The relay while `/metrics` is scraped back to back (far more than any
/// Prometheus would).
pub(crate) async fn relay_while_scraped(run: &mut Run, metrics: &str) -> anyhow::Result<String> {
    let scraping = Arc::new(AtomicBool::new(true));
    let scraper = {
        let (on, metrics) = (scraping.clone(), metrics.to_string());
        std::thread::spawn(move || {
            let mut n = 0u32;
            while on.load(Ordering::Relaxed) && n < 1_000_000 {
                n += 1;
                let _ = cohort_e2e::http(&metrics, "GET", "/metrics");
            }
            n
        })
    };
    let (rate, received, _) = relay_run(run).await?;
    scraping.store(false, Ordering::Relaxed);
    let scrapes = scraper.join().unwrap_or(0);
    Ok(format!(
        "| the same while /metrics is scraped back to back ({scrapes} scrapes) | {rate:.0} msg/s | {received} received |\n"
    ))
}

/// The relay while a remote member logs [`LOG_RATE`] lines a second
/// (forwarded to the master, which keeps what its rate allows).
pub(crate) async fn relay_while_a_member_logs(run: &mut Run) -> anyhow::Result<String> {
    let logger = spawn_self(&["member", &run.url, "logger", "logger"])?;
    wait_ready(&run.a, &["logger".to_string()]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rate, received, _) = relay_run(run).await?;
    let rss = cohort_e2e::rss_bytes(run.master_pid);
    drop(logger);
    Ok(format!(
        "| the same while a remote member logs {LOG_RATE} lines/s | {rate:.0} msg/s | {received} received; master RSS {:.1} MiB |\n",
        rss as f64 / (1024.0 * 1024.0)
    ))
}

/// The relay while the master's local child floods its output, which the
/// master reads, parses and logs; the child is scaled away after.
pub(crate) async fn relay_while_a_child_floods(run: &mut Run) -> anyhow::Result<String> {
    run.a
        .post(Target::Member("worker-1".into()), "flood", "")
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rate, received, _) = relay_run(run).await?;
    let mut control =
        cohort_proto::pb::control_client::ControlClient::connect(run.url.clone()).await?;
    control
        .scale(cohort_proto::pb::ScaleRequest {
            role: cohort_proto::pb::Role::Worker as i32,
            count: 0,
            ..Default::default()
        })
        .await?;
    Ok(format!(
        "| the same while a local child prints as fast as it can | {rate:.0} msg/s | {received} received |\n"
    ))
}

/// The relay from a plain gRPC client: one frame per message, no batches,
/// no acks, as a Python or Go member is usually written.
pub(crate) async fn plain_relay(url: &str, n: usize) -> anyhow::Result<String> {
    let (rate, received) = plain_relay_run(url, n).await?;
    Ok(format!(
        "| one-way relay, 64 B, plain unbatched gRPC sender ({n} sent) | {rate:.0} msg/s | {received} received ({} lost) |\n",
        n as u64 - received
    ))
}

/// Broadcast to the [`BROADCAST_MEMBERS`] members until the last has it;
/// `pair` (the responder and the sink) goes first, so only they remain.
pub(crate) async fn broadcast(
    a: &Member,
    pair: Vec<Guard>,
    rounds: usize,
) -> anyhow::Result<String> {
    drop(pair);
    for gone in ["responder", "sink"] {
        while a.send_to(gone, "noop", "").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut lats = a.on_with_capacity("lat", 1 << 16);
    let mut bl = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        a.post(Target::Role(Role::Worker), "bcast", now_ns().to_string())
            .await?;
        let mut worst = 0u128;
        for _ in 0..BROADCAST_MEMBERS {
            let m = tokio::time::timeout(Duration::from_secs(10), lats.recv())
                .await
                .context("broadcast answer")?
                .context("closed")?;
            worst = worst.max(m.text().unwrap_or("0").parse()?);
        }
        bl.push(Duration::from_nanos(
            u64::try_from(worst).unwrap_or(u64::MAX),
        ));
    }
    bl.sort();
    Ok(format!(
        "| broadcast to {BROADCAST_MEMBERS}, until the last has it ({rounds} rounds) | p50 {} | p99 {} |\n",
        us(percentile(&bl, 0.5)),
        us(percentile(&bl, 0.99))
    ))
}

/// Relays `run.relay` 64-byte messages from the driver to `sink` through
/// the SDK: msg/s, how many the sink counted, and the master's CPU-s per
/// million.
async fn relay_run(run: &mut Run) -> anyhow::Result<(f64, u64, f64)> {
    let (a, n, master_pid) = (&run.a, run.relay, run.master_pid);
    let payload = bytes_64();
    let cpu0 = cpu_seconds(master_pid);
    let t = Instant::now();
    let sink = Target::Member("sink".into());
    for _ in 0..n {
        a.post(sink.clone(), "relay", payload.clone()).await?;
    }
    a.post(sink.clone(), "relay", "END").await?;
    let got = tokio::time::timeout(Duration::from_secs(120), run.done.recv())
        .await
        .context("relay did not finish")?
        .context("closed")?;
    let elapsed = t.elapsed();
    let cpu = cpu_seconds(master_pid) - cpu0;
    let received: u64 = got.text().unwrap_or("0").parse()?;
    let rate = received as f64 / elapsed.as_secs_f64();
    Ok((rate, received, cpu / (received.max(1) as f64) * 1e6))
}

/// Relays `n` 64-byte messages to `sink` from a raw tonic Join stream, one
/// `send` frame each; returns messages/s and how many the sink counted.
async fn plain_relay_run(url: &str, n: usize) -> anyhow::Result<(f64, u64)> {
    use cohort_proto::pb::{self, master_frame::Kind as In, member_frame::Kind as Out};
    let mut client = pb::membership_client::MembershipClient::connect(url.to_string()).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    let frame = |kind| pb::MemberFrame { kind: Some(kind) };
    tx.send(frame(Out::Hello(pb::Hello {
        role: pb::Role::Worker as i32,
        name: "plain".into(),
        ..Default::default()
    })))
    .await?;
    let mut inbound = client
        .join(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut done_tx = Some(done_tx);
        while let Ok(Some(f)) = inbound.message().await {
            if let Some(In::Deliver(env)) = f.kind
                && env.action == "done"
                && let Some(tx) = done_tx.take()
            {
                let _ = tx.send(env.data);
            }
        }
    });
    let envelope = |data: Vec<u8>| {
        frame(Out::Send(pb::Envelope {
            action: "relay".into(),
            data: data.into(),
            target: Some(Target::Member("sink".into()).into()),
            ..Default::default()
        }))
    };
    let t = Instant::now();
    for _ in 0..n {
        tx.send(envelope(bytes_64())).await?;
    }
    tx.send(envelope(b"END".to_vec())).await?;
    let data = tokio::time::timeout(Duration::from_secs(120), done_rx)
        .await
        .context("plain relay did not finish")??;
    let elapsed = t.elapsed();
    let received: u64 = std::str::from_utf8(&data)?.parse()?;
    Ok((received as f64 / elapsed.as_secs_f64(), received))
}

fn bytes_64() -> Vec<u8> {
    vec![b'x'; 64]
}
