//! `cohort-bench members`: what membership costs the real `cohort-master`
//! with its default configuration: joining N members (each on its own
//! connection, as members in separate processes are, and once 100 to a
//! connection, labelled; heartbeating at the interval the master hands
//! out, each reporting ready), the master's RSS,
//! idle CPU, `ListMembers` and `cohortctl ls` with them joined, a broadcast
//! to all (to the last receiver, and the master's CPU), all of them back
//! after a `kill -9` of the master; a storm of 2,000 Join streams that send
//! a hello and never read or report ready (CPU-s, peak RSS, what is left
//! after they are dropped at `start_timeout`); and what a join storm costs
//! the members already there ([`crate::join_storm`]).

use crate::cluster::{Master, rss_kib, start_master, start_master_on};
use crate::{percentile, runtime, us};
use cohort_e2e::cpu_seconds;
use cohort_e2e::light::{Light, ready_count, state_count};
use cohort_proto::pb::{self, member_frame::Kind as Frame};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

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

/// Streams per connection of the storm, and of the multiplexed row.
const PER_CONNECTION: usize = 100;

/// Joins `n` members named `{prefix}-i` that say hello and nothing else,
/// and never read their stream.
async fn join_silent(addr: &str, n: usize, prefix: &str) -> anyhow::Result<Members> {
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
        let task = tokio::spawn(async move {
            let mut client = pb::membership_client::MembershipClient::new(ch);
            let response = client
                .join(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await;
            // Never read.
            let _keep = response;
            std::future::pending::<()>().await;
        });
        members.tasks.push(task);
        members.senders.push(tx);
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

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Waits until `n` members are READY (or 120 s): how long it took.
async fn all_ready(addr: &str, n: usize) -> Result<Duration, usize> {
    let t = Instant::now();
    let mut ready = 0;
    while t.elapsed() < Duration::from_secs(120) {
        ready = ready_count(addr).await;
        if ready >= n {
            return Ok(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(ready)
}

fn took(r: Result<Duration, usize>, n: usize) -> String {
    match r {
        Ok(d) => format!("{:.2} s", d.as_secs_f64()),
        Err(ready) => format!("**only {ready} of {n} after 120 s**"),
    }
}

/// One row per N, with `per_connection` members on each connection: join,
/// evictions, the heartbeat interval handed out, RSS, idle CPU,
/// ListMembers, broadcast to all, and the reconnect storm after `kill -9`
/// of the master.
async fn scale(n: usize, per_connection: usize) -> anyhow::Result<String> {
    let mut master = start_master(&["--agent-count", "0", "--worker-count", "0"], None)?;
    let addr = master.addr.clone();
    let pid = master.child.id();
    let before = rss_kib(pid);
    let cpu0 = cpu_seconds(pid);
    let mut events = pb::control_client::ControlClient::connect(format!("http://{addr}"))
        .await?
        .watch_events(pb::WatchEventsRequest {})
        .await?
        .into_inner();
    let left = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = left.clone();
    let watcher = tokio::spawn(async move {
        while let Ok(Some(ev)) = events.message().await {
            if ev.kind == pb::EventKind::Left as i32 {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    let members = Light::multiplexed(&addr, n, "m", "to-all", per_connection);
    let joined = all_ready(&addr, n).await;
    let cpu = cpu_seconds(pid) - cpu0;
    // Idle with heartbeats: three windows of 5 s, the median and the
    // range (this machine's noise is about a point).
    let mut windows = Vec::new();
    for _ in 0..3 {
        let cpu1 = cpu_seconds(pid);
        tokio::time::sleep(Duration::from_secs(5)).await;
        windows.push((cpu_seconds(pid) - cpu1) / 5.0 * 100.0);
    }
    windows.sort_by(f64::total_cmp);
    let idle = windows[1];
    let after = rss_kib(pid);
    let evicted = left.load(std::sync::atomic::Ordering::Relaxed);
    let beat = heartbeat_interval(&addr).await?;
    let (listed, bytes, times) = list(&addr).await?;
    let ls = cohortctl_ls(&addr, n)?;
    // Broadcast to all: time until the last member has it.
    let mut control = pb::control_client::ControlClient::connect(format!("http://{addr}")).await?;
    let mut rounds = Vec::new();
    let (cpu2, t2) = (cpu_seconds(pid), Instant::now());
    for k in 1..=20 {
        let t = Instant::now();
        control
            .send(pb::SendRequest {
                action: "to-all".into(),
                data: b"x".to_vec().into(),
                target: Some(pb::Target {
                    kind: Some(pb::target::Kind::All(pb::All {})),
                }),
                ..Default::default()
            })
            .await?;
        while members.received() < n * k && t.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        anyhow::ensure!(members.received() >= n * k, "broadcast {k} lost");
        rounds.push(t.elapsed());
    }
    // The master's CPU for the broadcasts alone: minus what heartbeats
    // cost it in the same time (the idle rate above).
    let busy = cpu_seconds(pid) - cpu2 - idle / 100.0 * t2.elapsed().as_secs_f64();
    let per_broadcast = busy.max(0.0) / 20.0 * 1000.0;
    rounds.sort();
    // kill -9, a new master on the same address: until all are back.
    master.child.kill()?;
    master.child.wait()?;
    watcher.abort();
    let restarted = start_master_on(&addr, &["--agent-count", "0", "--worker-count", "0"], None)?;
    let back = all_ready(&addr, n).await;
    let suspect = state_count(&addr, pb::MemberState::Suspect).await;
    drop(members);
    drop(restarted);
    let topology = match per_connection {
        1 => format!("{n}, one connection each"),
        k => format!("{n}, {k} to a connection"),
    };
    Ok(format!(
        "| {topology} | {} ({cpu:.1} CPU-s) | {evicted} | {beat} | {} → {} ({:.1} KiB per member) | {idle:.1} % ({:.1}–{:.1}) | {} ({listed} listed, {} KiB) | {} | {} / {} ({per_broadcast:.1} ms master CPU) | {} ({suspect} SUSPECT) |\n",
        took(joined, n),
        mib(before),
        mib(after),
        (after.saturating_sub(before)) as f64 / n as f64,
        windows[0],
        windows[2],
        us(percentile(&times, 0.5)),
        bytes / 1024,
        us(ls),
        us(percentile(&rounds, 0.5)),
        us(percentile(&rounds, 0.99)),
        took(back, n),
    ))
}

/// The heartbeat interval the master hands out now.
async fn heartbeat_interval(addr: &str) -> anyhow::Result<String> {
    let info = pb::control_client::ControlClient::connect(format!("http://{addr}"))
        .await?
        .cluster_info(pb::ClusterInfoRequest {})
        .await?
        .into_inner();
    let interval = info
        .settings
        .and_then(|s| cohort_proto::time::span(s.heartbeat_interval.as_ref()))
        .unwrap_or_default();
    Ok(format!("{} s", interval.as_secs_f64()))
}

/// The wall time of `cohortctl ls` (the real binary, piped: every page,
/// the whole table), p50 of 5; checks it printed a row per member.
fn cohortctl_ls(addr: &str, n: usize) -> anyhow::Result<Duration> {
    let ctl = crate::cluster::binary("cohortctl")?;
    let mut times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let out = std::process::Command::new(&ctl)
            .args(["--master", &format!("http://{addr}"), "ls"])
            .output()?;
        times.push(t.elapsed());
        anyhow::ensure!(out.status.success(), "cohortctl ls failed");
        let rows = out
            .stdout
            .split(|b| *b == b'\n')
            .filter(|l| l.starts_with(b"m-"))
            .count();
        anyhow::ensure!(rows == n, "cohortctl ls listed {rows} of {n}");
    }
    times.sort();
    Ok(percentile(&times, 0.5))
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
    let silent = join_silent(&master.addr, n, "s").await?;
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
    let sizes: &[usize] = if quick {
        &[200, 1000]
    } else {
        &[1000, 5000, 10_000]
    };
    let storm_n = if quick { 500 } else { 2000 };
    let scale_n = sizes.last().copied().unwrap_or(1000);
    // A connection each: a descriptor each, here and in the master.
    cohort_process::raise_open_files()?;
    let rows = runtime()?.block_on(async {
        let mut rows = String::new();
        for &n in sizes {
            rows.push_str(&scale(n, 1).await?);
        }
        // Beside it, as the earlier figures were taken: members multiplexed
        // on HTTP/2 connections, as behind one proxy or host.
        rows.push_str(&scale(scale_n, PER_CONNECTION).await?);
        let floor = crate::floor::row(scale_n).await?;
        let storm_row = storm(storm_n).await?;
        // The default admission, and none (what it was before it) to
        // show what it is for.
        let mut during = String::from(crate::join_storm::HEAD);
        during
            .push_str(&crate::join_storm::row(scale_n, "default join_rate (5,000/s)", &[]).await?);
        during.push_str(
            &crate::join_storm::row(
                scale_n,
                "--join-rate 0 (no admission)",
                &["--join-rate", "0"],
            )
            .await?,
        );
        anyhow::Ok((rows, storm_row, during, floor))
    })?;
    let text = format!(
        "# Membership benchmark\n\nCommand: `cargo build --release --bins && cargo run --release -p cohort-bench -- members{}`\n\
         Machine: {}; the real cohort-master with its default configuration; members are raw gRPC streams from one\n\
         driver process, each on its own connection (the last row: {PER_CONNECTION} to a connection), heartbeating at the\n\
         interval the master hands out (the heartbeat budget, `[health] max_heartbeats_per_second`).\n\n\
         | members | all joined and READY | evicted | heartbeat interval | master RSS before → after | master CPU idle with heartbeats, median of three 5 s windows (range) | ListMembers (first page, p50 of 5) | `cohortctl ls`, every member (p50 of 5) | broadcast to all, last receiver p50 / p99 (20), master CPU per broadcast | all back after kill -9 + restart |\n|---|---|---|---|---|---|---|---|---|---|\n{}\n\
         | floor | p50 / p99 |\n|---|---|\n{}\n\
         | storm | cost | memory |\n|---|---|---|\n{}\n\
         While the light members join at once, two SDK members already in the cluster exchange requests back to\n\
         back; the second row turns join admission off (`--join-rate 0`, not a default) to show what it is for.\n\n{}",
        if quick { " --quick" } else { "" },
        crate::machine(),
        rows.0,
        rows.3,
        rows.1,
        rows.2,
    );
    crate::write_report(&out, &text)
}
