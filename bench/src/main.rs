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
//! - `members`: 1,000, 5,000 and 10,000 members, each on its own
//!   connection (and 10,000 multiplexed, labelled): joining, the heartbeat
//!   interval handed out, the master's memory, idle CPU, `ListMembers`,
//!   `cohortctl ls`, broadcast to all beside a floor row (64 bytes to each
//!   of N sockets), a `kill -9` of the master; a storm of 2,000 silent
//!   joins; what a join storm costs two members already there; against
//!   the real `cohort-master` (`cargo build --release --bins` first);
//! - `local`: request/reply between two local members over the master's
//!   Unix socket (current-thread and multi-thread runtimes), beside Node's
//!   `cluster` IPC in the same run;
//! - `failover`: three masters through a real etcd, 20 workers: `kill -9`
//!   and SIGTERM of the leader → a new leader, → every worker on it.
//!
//! ```text
//! cargo run --release -p cohort-bench -- messaging [--out FILE] [--quick]
//! cargo build --release --bins && cargo run --release -p cohort-bench -- cluster|members|local|failover [--out FILE] [--quick]
//! ```

mod apps;
mod cluster;
mod failover;
mod floor;
mod join_storm;
mod local;
mod members;
mod rows;

use anyhow::{Context, bail};
use cohort::{Member, MemberBuilder, Role, Target};
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
pub(crate) struct Guard(Child);

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
    /// 1,000 to 10,000 members on their own connections, a floor, storms.
    Members(Options),
    /// Request/reply between two local members, beside Node's cluster IPC.
    Local(Options),
    /// Three masters through etcd: kill -9 / SIGTERM of the leader → a
    /// new leader, and every worker on it.
    Failover(Options),
    /// Several apps from one file: reload of one app among four, and what
    /// health probes cost the master.
    Apps(Options),
    /// The master of a messaging run, in its own process (internal).
    #[command(hide = true)]
    Master {
        /// The master's own flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A local child of `local`'s master (internal).
    #[command(hide = true)]
    LocalMember {
        /// Where the asker writes its figures.
        result: String,
        /// How many requests it times.
        n: usize,
        /// `current-thread` or `multi-thread`.
        flavor: String,
    },
    /// The readers of the floor row of `members`, in their own process
    /// (internal).
    #[command(hide = true)]
    FloorReaders {
        /// Where the writer listens.
        addr: String,
        /// How many connections.
        n: usize,
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
        Bench::Local(o) => local::run(&o),
        Bench::Failover(o) => failover::run(&o),
        Bench::Apps(o) => apps::run(&o),
        Bench::Master { args } => run_master(&args),
        Bench::Member { url, name, mode } => run_member(&url, &name, &mode),
        Bench::FloorReaders { addr, n } => floor::readers(&addr, n),
        Bench::LocalMember { result, n, flavor } => local::member(&result, n, &flavor),
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

pub(crate) fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

pub(crate) fn spawn_self(args: &[&str]) -> anyhow::Result<Guard> {
    spawn_self_logging(args, "warn", Stdio::inherit())
}

/// [`spawn_self`] with the log filter and stderr given (the master logs at
/// its default, info, as in production, into `stderr`).
pub(crate) fn spawn_self_logging(
    args: &[&str],
    filter: &str,
    stderr: Stdio,
) -> anyhow::Result<Guard> {
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
        let a = MemberBuilder::new(url.clone(), Role::Agent)
            .name("driver")
            .join()
            .await?;
        let mut all = vec!["responder".to_string(), "sink".to_string()];
        all.extend(bcast.iter().cloned());
        wait_ready(&a, &all).await?;
        let mut run = rows::Run {
            done: a.on("done"),
            a,
            url: url.clone(),
            master_pid,
            relay,
        };
        let request_reply = rows::request_reply(&run.a, requests, 1000 / scale).await?;
        let relay_row = rows::relay(&mut run).await?;
        let scraped = rows::relay_while_scraped(&mut run, &metrics).await?;
        let logging = rows::relay_while_a_member_logs(&mut run).await?;
        let chatty = rows::relay_while_a_child_floods(&mut run).await?;
        let plain = rows::plain_relay(&url, relay).await?;
        let broadcast = rows::broadcast(&run.a, pair, rounds).await?;
        run.a.close().await;
        anyhow::Ok(
            [
                request_reply,
                relay_row,
                scraped,
                chatty,
                logging,
                plain,
                broadcast,
            ]
            .concat(),
        )
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
