//! `cohort-bench members`: what membership costs the real `cohort-master`
//! with its default configuration: joining N members (over ~100 streams per
//! connection, heartbeats at 1 s, each reporting ready), the master's RSS
//! and `ListMembers` latency with them joined, and a storm of 2,000 Join
//! streams that send a hello and never read or report ready (CPU-s, peak
//! RSS, what is left after they are dropped at `start_timeout`).

use crate::cluster::{Master, rss_kib, start_master};
use crate::{cpu_seconds, percentile, runtime, us};
use cohort_proto::pb::{self, member_frame::Kind as Frame};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const PER_CONNECTION: usize = 100;

/// N raw members; dropping it ends their streams.
struct Members {
    senders: Vec<mpsc::Sender<pb::MemberFrame>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Members {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn frame(kind: Frame) -> pb::MemberFrame {
    pb::MemberFrame { kind: Some(kind) }
}

/// Joins `n` members named `{prefix}-i`; with `ready`, each reports ready
/// and heartbeats every second, and its stream is read.
async fn join(addr: &str, n: usize, prefix: &str, ready: bool) -> anyhow::Result<Members> {
    let mut members = Members {
        senders: Vec::with_capacity(n),
        tasks: Vec::new(),
    };
    let mut channel = None;
    for i in 0..n {
        if i % PER_CONNECTION == 0 {
            channel = Some(
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .connect()
                    .await?,
            );
        }
        let Some(ch) = channel.clone() else {
            anyhow::bail!("no connection");
        };
        let (tx, rx) = mpsc::channel(16);
        tx.send(frame(Frame::Hello(pb::Hello {
            role: pb::Role::Worker as i32,
            name: format!("{prefix}-{i}"),
            ..Default::default()
        })))
        .await?;
        if ready {
            tx.send(frame(Frame::Ready(pb::Ready {}))).await?;
        }
        let task = tokio::spawn(async move {
            let mut client = pb::membership_client::MembershipClient::new(ch);
            let Ok(response) = client
                .join(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
            else {
                return;
            };
            if ready {
                let mut inbound = response.into_inner();
                while let Ok(Some(_)) = inbound.message().await {}
            } else {
                // Never read.
                let _keep = response;
                std::future::pending::<()>().await;
            }
        });
        members.tasks.push(task);
        members.senders.push(tx);
    }
    if ready {
        let senders = members.senders.clone();
        members.tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                seq += 1;
                for tx in &senders {
                    let hb = pb::Heartbeat {
                        seq,
                        ..Default::default()
                    };
                    let _ = tx.try_send(frame(Frame::Heartbeat(hb)));
                }
            }
        }));
    }
    Ok(members)
}

async fn list(addr: &str) -> anyhow::Result<(usize, usize, Vec<Duration>)> {
    let mut control = pb::control_client::ControlClient::connect(format!("http://{addr}"))
        .await?
        .max_decoding_message_size(64 << 20);
    let mut times = Vec::new();
    let (mut n, mut bytes) = (0, 0);
    for _ in 0..5 {
        let t = Instant::now();
        let r = control
            .list_members(pb::ListMembersRequest::default())
            .await?
            .into_inner();
        times.push(t.elapsed());
        n = r.members.len();
        bytes = prost::Message::encoded_len(&r);
    }
    times.sort();
    Ok((n, bytes, times))
}

async fn ready_count(addr: &str) -> anyhow::Result<usize> {
    let info = pb::control_client::ControlClient::connect(format!("http://{addr}"))
        .await?
        .cluster_info(pb::ClusterInfoRequest {})
        .await?
        .into_inner();
    Ok(info
        .counts
        .iter()
        .filter(|c| c.state == pb::MemberState::Ready as i32)
        .map(|c| c.count as usize)
        .sum())
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// One row per N: join time, RSS, ListMembers.
async fn scale(n: usize) -> anyhow::Result<String> {
    let master = start_master(&["--agent-count", "0", "--worker-count", "0"], None)?;
    let pid = master.child.id();
    let before = rss_kib(pid);
    let cpu0 = cpu_seconds(pid);
    let t = Instant::now();
    let members = join(&master.addr, n, "m", true).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ready = 0;
    while ready < n && Instant::now() < deadline {
        ready = ready_count(&master.addr).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let joined = t.elapsed();
    let joined_text = if ready < n {
        format!("**only {ready} of {n} ready after 60 s**")
    } else {
        format!("{:.2} s", joined.as_secs_f64())
    };
    let cpu = cpu_seconds(pid) - cpu0;
    // Idle with heartbeats for a few seconds.
    let cpu1 = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle = (cpu_seconds(pid) - cpu1) / 5.0 * 100.0;
    let after = rss_kib(pid);
    let (listed, bytes, times) = list(&master.addr).await?;
    drop(members);
    drop(master);
    Ok(format!(
        "| {n} members ready | {joined_text} ({cpu:.2} CPU-s) | {} → {} ({:.1} KiB per member) | {idle:.1} % of a core | {} (p50 of 5; {listed} listed, {} KiB) |\n",
        mib(before),
        mib(after),
        (after.saturating_sub(before)) as f64 / n as f64,
        us(percentile(&times, 0.5)),
        bytes / 1024,
    ))
}

/// 2,000 Join streams that say hello and nothing else, all at once.
async fn storm(n: usize) -> anyhow::Result<String> {
    let dir = std::env::temp_dir().join(format!("cohort-bench-storm-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("cohort.toml");
    std::fs::write(&cfg, "[restart]\nstart_timeout = \"5s\"\n")?;
    let cfg_path = cfg.to_string_lossy().to_string();
    let master: Master = start_master(
        &[
            "--agent-count",
            "0",
            "--worker-count",
            "0",
            "--config",
            &cfg_path,
        ],
        None,
    )?;
    let pid = master.child.id();
    let before = rss_kib(pid);
    let cpu0 = cpu_seconds(pid);
    let t = Instant::now();
    let silent = join(&master.addr, n, "s", false).await?;
    let mut peak = before;
    let deadline = Instant::now() + Duration::from_secs(60);
    // Until the master has dropped them all (not ready within 5 s).
    loop {
        peak = peak.max(rss_kib(pid));
        let (listed, _, _) = list(&master.addr).await?;
        if listed == 0 && t.elapsed() > Duration::from_secs(1) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "storm not cleared in 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu = cpu_seconds(pid) - cpu0;
    let after = rss_kib(pid);
    drop(silent);
    drop(master);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(format!(
        "| {n} silent Join streams at once (hello, never read, never ready) | master {cpu:.2} CPU-s | RSS {} → peak {} → {} once all were dropped ({:.1} s) |\n",
        mib(before),
        mib(peak),
        mib(after),
        t.elapsed().as_secs_f64(),
    ))
}

/// Runs the scenarios; `quick` uses fewer members.
pub fn run(options: &crate::Options) -> anyhow::Result<()> {
    let (quick, out) = options.resolve("members");
    let sizes: &[usize] = if quick { &[200, 1000] } else { &[1000, 5000] };
    let storm_n = if quick { 500 } else { 2000 };
    let rows = runtime()?.block_on(async {
        let mut rows = String::new();
        for &n in sizes {
            rows.push_str(&scale(n).await?);
        }
        let storm_row = storm(storm_n).await?;
        anyhow::Ok((rows, storm_row))
    })?;
    let text = format!(
        "# Membership benchmark\n\nCommand: `cargo build --release --bins && cargo run --release -p cohort-bench -- members{}`\n\
         Machine: {}; the real cohort-master with its default configuration; members are raw gRPC streams from one\n\
         driver process, {PER_CONNECTION} per connection, heartbeating every second.\n\n\
         | members | join + ready | master RSS before → after | master CPU idle with heartbeats | ListMembers |\n|---|---|---|---|---|\n{}\n\
         | storm | cost | memory |\n|---|---|---|\n{}",
        if quick { " --quick" } else { "" },
        crate::machine(),
        rows.0,
        rows.1,
    );
    crate::write_report(&out, &text)
}
