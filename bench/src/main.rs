//! Benchmarks, each writing a markdown table to `bench/results/`:
//!
//! - `messaging`: request/reply latency, one-way relay throughput (from an
//!   SDK member and from a plain unbatched gRPC client) and broadcast-to-8
//!   latency, with the master and every member in its own process (this
//!   binary re-executes itself for each role), against the master's
//!   default messaging configuration, then the same relay while `/metrics`
//!   is scraped, a local child floods its output and a remote member logs;
//! - `cluster`: respawn latency, startup time and RSS of the real
//!   `cohort-master`, `cohort-agent` and `cohort-worker` binaries (built
//!   next to this one: `cargo build --release --bins` first).
//!
//! - `members`: joining 1,000 and 5,000 members, the master's RSS and
//!   `ListMembers` latency with them, and a storm of 2,000 silent joins,
//!   against the real `cohort-master` (`cargo build --release --bins` first).
//!
//! ```text
//! cargo run --release -p cohort-bench -- messaging [--out FILE] [--quick]
//! cargo build --release --bins && cargo run --release -p cohort-bench -- cluster [--out FILE] [--quick]
//! ```

mod cluster;
mod join_storm;
mod members;

use anyhow::{Context, bail};
use cohort::{Member, MemberBuilder, Role, Target};
use cohort_e2e::cpu_seconds;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const REQUESTS: usize = 20_000;
const RELAY: usize = 200_000;
const BROADCAST_ROUNDS: usize = 2_000;
const BROADCAST_MEMBERS: usize = 8;
/// Lines a second the logging member writes, and for how long at most.
const LOG_RATE: u64 = 50_000;
const LOG_FOR: Duration = Duration::from_secs(300);

/// Kills the child when dropped, so a failed run leaves nothing behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Benchmarks of Cohort; each writes a markdown table to bench/results/.
#[derive(clap::Parser)]
#[command(name = "cohort-bench", version)]
enum Bench {
    /// Request/reply, relay (SDK and plain client), broadcast to 8.
    Messaging(Options),
    /// Respawn latency, startup and RSS of the real binaries.
    Cluster(Options),
    /// Joining 1,000 and 5,000 members, ListMembers, a storm of silent joins.
    Members(Options),
    /// The master of a messaging run, in its own process (internal).
    #[command(hide = true)]
    Master {
        /// The master's own flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A member of a messaging run, in its own process (internal).
    #[command(hide = true)]
    Member {
        /// The master's URL.
        url: String,
        /// The member's name.
        name: String,
        /// responder, sink, bcast or logger.
        mode: String,
    },
}

/// What every benchmark takes.
#[derive(clap::Args)]
pub(crate) struct Options {
    /// A tenth of the counts (or fewer members).
    #[arg(long)]
    quick: bool,
    /// Where to write the table [default: bench/results/NAME.md].
    #[arg(long, value_name = "FILE")]
    out: Option<String>,
}

impl Options {
    /// `quick`, and the results file of benchmark `name`.
    pub(crate) fn resolve(&self, name: &str) -> (bool, String) {
        let out = self
            .out
            .clone()
            .unwrap_or_else(|| format!("bench/results/{name}.md"));
        (self.quick, out)
    }
}

fn main() -> anyhow::Result<()> {
    match <Bench as clap::Parser>::parse() {
        Bench::Messaging(o) => messaging(&o),
        Bench::Cluster(o) => cluster::run(&o),
        Bench::Members(o) => members::run(&o),
        Bench::Master { args } => run_master(&args),
        Bench::Member { url, name, mode } => run_member(&url, &name, &mode),
    }
}

pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting tokio")
}

/// The master, in this process (spawned by `messaging`).
fn run_master(args: &[String]) -> anyhow::Result<()> {
    // Logging as cohort-master does (what it prints of its children too).
    cohort_process::init_from_env(None);
    let config =
        cohort_master::config::Config::load(args, &|_| None).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The same runtime as cohort-master's main.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen).await?;
        println!("READY master {}", listener.local_addr()?);
        std::io::stdout().flush()?;
        cohort_master::run(listener, Vec::new(), config, std::future::pending()).await
    })
}

/// A member process: `member URL NAME MODE`.
fn run_member(url: &str, name: &str, mode: &str) -> anyhow::Result<()> {
    if mode == "logger" {
        // Every line goes to the forwarder only (RUST_LOG does not apply).
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(cohort::logs::layer());
        tracing::subscriber::set_global_default(subscriber)?;
    }
    runtime()?.block_on(async move {
        let member = MemberBuilder::new(url.to_string(), Role::Worker)
            .name(name.to_string())
            .join()
            .await?;
        match mode {
            "responder" => {
                let mut sub = member.on_with_capacity("req", 1 << 16);
                member.ready().await?;
                while let Some(msg) = sub.recv().await {
                    msg.reply(msg.data.clone()).await?;
                }
            }
            "sink" => {
                // The default subscription: when it is full the member
                // stops reading and the master holds the senders back.
                let mut sub = member.on("relay");
                member.ready().await?;
                let mut count = 0u64;
                while let Some(msg) = sub.recv().await {
                    if &msg.data[..] == b"END" {
                        member
                            .post(Target::Member(msg.from.clone()), "done", count.to_string())
                            .await?;
                        count = 0;
                    } else {
                        count += 1;
                    }
                }
            }
            "bcast" => {
                let mut sub = member.on_with_capacity("bcast", 1 << 16);
                member.ready().await?;
                while let Some(msg) = sub.recv().await {
                    let sent: u128 = std::str::from_utf8(&msg.data)?.parse()?;
                    let delta = now_ns().saturating_sub(sent);
                    member
                        .post(Target::Member(msg.from.clone()), "lat", delta.to_string())
                        .await?;
                }
            }
            "logger" => {
                // LOG_RATE lines a second, for at most LOG_FOR.
                member.ready().await?;
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                let t = Instant::now();
                let mut n = 0u64;
                while t.elapsed() < LOG_FOR {
                    tick.tick().await;
                    for _ in 0..LOG_RATE / 1000 {
                        n += 1;
                        tracing::info!(n, path = "/api/items", status = 200, "handled a request");
                    }
                }
            }
            other => bail!("unknown member mode {other}"),
        }
        Ok(())
    })
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn spawn_self(args: &[&str]) -> anyhow::Result<Guard> {
    spawn_self_logging(args, "warn", Stdio::inherit())
}

/// [`spawn_self`] with the log filter and stderr given (the master logs at
/// its default, info, as in production, into `stderr`).
fn spawn_self_logging(args: &[&str], filter: &str, stderr: Stdio) -> anyhow::Result<Guard> {
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args(args)
        .env("RUST_LOG", filter)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()?;
    Ok(Guard(child))
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

async fn wait_ready(member: &Member, names: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    for name in names {
        loop {
            match member.send_to(name.clone(), "noop", "").await {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => bail!("{name} never joined: {e}"),
            }
        }
    }
    Ok(())
}

fn messaging(options: &Options) -> anyhow::Result<()> {
    let (quick, out) = options.resolve("messaging");
    let scale = if quick { 10 } else { 1 };
    let (requests, relay, rounds) = (REQUESTS / scale, RELAY / scale, BROADCAST_ROUNDS / scale);

    let cfg = std::env::temp_dir().join(format!("cohort-bench-{}.toml", std::process::id()));
    // One local worker, quiet until its row: then its payload prints as
    // fast as it can (a chatty child).
    let worker = cluster::binary("cohort-worker")?;
    std::fs::write(&cfg, cohort_e2e::chatty_config(&worker))?;
    let cfg_path = cfg.to_string_lossy().to_string();
    // A metrics listener (off by default), scraped only during its row.
    let metrics = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let mut master = spawn_self_logging(
        &[
            "master",
            "--listen",
            "127.0.0.1:0",
            "--config",
            &cfg_path,
            "--metrics-listen",
            &metrics,
        ],
        "info",
        Stdio::null(),
    )?;
    let mut lines = BufReader::new(master.0.stdout.take().context("master stdout")?).lines();
    let line = lines.next().context("master exited")??;
    let addr = line
        .strip_prefix("READY master ")
        .context("no READY line")?
        .to_string();
    std::thread::spawn(move || for _ in lines {});
    let url = format!("http://{addr}");
    let master_pid = master.0.id();

    let pair = vec![
        spawn_self(&["member", &url, "responder", "responder"])?,
        spawn_self(&["member", &url, "sink", "sink"])?,
    ];
    let bcast: Vec<String> = (1..=BROADCAST_MEMBERS).map(|i| format!("b-{i}")).collect();
    let mut members = Vec::new();
    for name in &bcast {
        members.push(spawn_self(&["member", &url, name, "bcast"])?);
    }

    let report = runtime()?.block_on(async {
        let a = MemberBuilder::new(url.clone(), Role::Agent).name("driver").join().await?;
        let mut all = vec!["responder".to_string(), "sink".to_string()];
        all.extend(bcast.iter().cloned());
        wait_ready(&a, &all).await?;

        // 1. request/reply, A → master → B → master → A.
        let target = Target::Member("responder".into());
        for _ in 0..1000 / scale {
            a.request(target.clone(), "req", "warm", Duration::from_secs(5)).await?;
        }
        let mut lat = Vec::with_capacity(requests);
        for _ in 0..requests {
            let t = Instant::now();
            a.request(target.clone(), "req", "0123456789abcdef", Duration::from_secs(5)).await?;
            lat.push(t.elapsed());
        }
        lat.sort();
        let rr = (percentile(&lat, 0.5), percentile(&lat, 0.99));

        // 2. one-way relay A → master → B, 64-byte payloads; then again
        // while a remote member logs LOG_RATE lines a second (forwarded
        // to the master, which keeps what its rate allows).
        let mut done = a.on("done");
        let (rate, received, cpu_per_million) = relay_run(&a, &mut done, master_pid, relay).await?;
        // Again while /metrics is scraped back to back (far more than any
        // Prometheus would).
        let scraping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let scraper = {
            let (on, metrics) = (scraping.clone(), metrics.clone());
            std::thread::spawn(move || {
                let mut n = 0u32;
                while on.load(std::sync::atomic::Ordering::Relaxed) && n < 1_000_000 {
                    n += 1;
                    let _ = cohort_e2e::http(&metrics, "GET", "/metrics");
                }
                n
            })
        };
        let (scraped_rate, scraped_received, _) = relay_run(&a, &mut done, master_pid, relay).await?;
        scraping.store(false, std::sync::atomic::Ordering::Relaxed);
        let scrapes = scraper.join().unwrap_or(0);
        let logger = spawn_self(&["member", &url, "logger", "logger"])?;
        wait_ready(&a, &["logger".to_string()]).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (log_rate, log_received, _) = relay_run(&a, &mut done, master_pid, relay).await?;
        let rss_logging = cohort_e2e::rss_bytes(master_pid) / 1024;
        drop(logger);
        // Again while a local child floods its output, which the master
        // reads, parses and logs.
        a.post(Target::Member("worker-1".into()), "flood", "").await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (chatty_rate, chatty_received, _) = relay_run(&a, &mut done, master_pid, relay).await?;
        let mut control = cohort_proto::pb::control_client::ControlClient::connect(url.clone()).await?;
        control
            .scale(cohort_proto::pb::ScaleRequest {
                role: cohort_proto::pb::Role::Worker as i32,
                count: 0,
            })
            .await?;

        // 2b. the same from a plain gRPC client: one frame per message, no
        // batches, no acks, as a Python or Go member is usually written.
        let (plain_rate, plain_received) = plain_relay(&url, relay).await?;

        // 3. broadcast to 8 members until the last one has it: only the
        // eight broadcast members stay.
        drop(pair);
        for gone in ["responder", "sink"] {
            while a.send_to(gone, "noop", "").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let mut lats = a.on_with_capacity("lat", 1 << 16);
        let mut bl = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            a.post(Target::Role(Role::Worker), "bcast", now_ns().to_string()).await?;
            let mut worst = 0u128;
            for _ in 0..BROADCAST_MEMBERS {
                let m = tokio::time::timeout(Duration::from_secs(10), lats.recv())
                    .await
                    .context("broadcast answer")?
                    .context("closed")?;
                worst = worst.max(m.text().unwrap_or("0").parse()?);
            }
            bl.push(Duration::from_nanos(u64::try_from(worst).unwrap_or(u64::MAX)));
        }
        bl.sort();
        a.close().await;
        anyhow::Ok(format!(
            "| request/reply A→master→B→master→A ({requests} requests) | p50 {} | p99 {} |\n\
             | one-way relay A→master→B, 64 B, SDK sender ({relay} sent) | {:.0} msg/s | {received} received ({} lost), master {cpu_per_million:.2} CPU-s per million |\n\
             | the same while /metrics is scraped back to back ({scrapes} scrapes) | {scraped_rate:.0} msg/s | {scraped_received} received |\n\
             | the same while a local child prints as fast as it can | {chatty_rate:.0} msg/s | {chatty_received} received |\n\
             | the same while a remote member logs {LOG_RATE} lines/s | {log_rate:.0} msg/s | {log_received} received; master RSS {:.1} MiB |\n\
             | one-way relay, 64 B, plain unbatched gRPC sender ({relay} sent) | {plain_rate:.0} msg/s | {plain_received} received ({} lost) |\n\
             | broadcast to {BROADCAST_MEMBERS}, until the last has it ({rounds} rounds) | p50 {} | p99 {} |\n",
            us(rr.0),
            us(rr.1),
            rate,
            relay as u64 - received,
            rss_logging as f64 / 1024.0,
            relay as u64 - plain_received,
            us(percentile(&bl, 0.5)),
            us(percentile(&bl, 0.99)),
        ))
    })?;
    drop(members);
    drop(master);
    let _ = std::fs::remove_file(&cfg);

    let text = format!(
        "# Messaging benchmark\n\nCommand: `cargo run --release -p cohort-bench -- messaging{}`\n\
         Machine: {}; master, driver and 10 members each in their own process.\n\
         The master runs its default messaging configuration (queues of 1,024 messages / 8 MiB, overflow = block,\n\
         logging at info) with no agent and one local `--exec` worker that is quiet until its row, plus a metrics\n\
         listener (off by default) that only the scraped row touches; its routing counters are always on.\n\n\
         | measure | result | |\n|---|---|---|\n{report}",
        if quick { " --quick" } else { "" },
        machine()
    );
    write_report(&out, &text)
}

/// Cores and CPU model, for the results file.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

/// Prints the report and writes it to `out`.
pub(crate) fn write_report(out: &str, text: &str) -> anyhow::Result<()> {
    println!("{text}");
    if let Some(dir) = std::path::Path::new(out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, text)?;
    Ok(())
}

/// Relays `n` 64-byte messages from `a` to `sink` through the SDK: msg/s,
/// how many the sink counted, and the master's CPU-s per million.
async fn relay_run(
    a: &Member,
    done: &mut cohort::Subscription,
    master_pid: u32,
    n: usize,
) -> anyhow::Result<(f64, u64, f64)> {
    let payload = bytes_64();
    let cpu0 = cpu_seconds(master_pid);
    let t = Instant::now();
    let sink = Target::Member("sink".into());
    for _ in 0..n {
        a.post(sink.clone(), "relay", payload.clone()).await?;
    }
    a.post(sink.clone(), "relay", "END").await?;
    let got = tokio::time::timeout(Duration::from_secs(120), done.recv())
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
async fn plain_relay(url: &str, n: usize) -> anyhow::Result<(f64, u64)> {
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
