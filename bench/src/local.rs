//! `cohort-bench local`: request/reply between two members on the master's
//! own host, beside Node's cluster IPC in the same run. Cohort: the real
//! master starts both as its local children (this binary again), which
//! reach it over its Unix socket; one asks, the other answers, A → master
//! → B → master → A. Node: `cluster` with two workers; one `process.send`s
//! to the primary, which forwards to the other, whose answer comes back
//! the same way (the messenger Egg builds on).

use crate::{Options, percentile, runtime, spawn_self_logging, us};
use anyhow::Context;
use cohort::{MemberBuilder, Target};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const REQUESTS: usize = 20_000;
const WARM: usize = 2_000;

/// Node's side: the primary relays between two workers.
const NODE_SCRIPT: &str = r#"
const cluster = require('node:cluster');
const n = Number(process.argv[2]), warm = Number(process.argv[3]);
if (cluster.isPrimary) {
  const a = cluster.fork({ ROLE: 'asker' }), b = cluster.fork({ ROLE: 'answerer' });
  a.on('message', (m) => { if (m.done) { console.log(m.done); a.kill(); b.kill(); } else b.send(m); });
  b.on('message', (m) => a.send(m));
} else if (process.env.ROLE === 'answerer') {
  process.on('message', (m) => process.send({ id: m.id, data: m.data }));
} else {
  const lat = [];
  let i = 0, t = 0n;
  const ask = () => { t = process.hrtime.bigint(); process.send({ id: i, data: '0123456789abcdef' }); };
  process.on('message', () => {
    if (i >= warm) lat.push(Number(process.hrtime.bigint() - t) / 1000);
    if (++i < n + warm) return ask();
    lat.sort((x, y) => x - y);
    const at = (p) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))];
    process.send({ done: `${at(0.5).toFixed(0)} ${at(0.99).toFixed(0)}` });
  });
  setTimeout(ask, 500);
}
"#;

/// How the members' tokio runtime is built.
const FLAVORS: [(&str, &str); 2] = [
    (
        "current-thread",
        "members on a current-thread runtime (one thread, as a Node worker; `cohort-worker` and `cohort-agent` run so)",
    ),
    (
        "multi-thread",
        "members on tokio's multi-thread runtime (`#[tokio::main]`'s default)",
    ),
];

/// Runs both sides and writes the table.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let (quick, out) = options.resolve("local");
    let n = if quick { REQUESTS / 10 } else { REQUESTS };
    let dir = tempdir()?;
    let mut rows = String::new();
    for (flavor, what) in FLAVORS {
        let cells = cohort(&dir, n, flavor)?;
        rows.push_str(&format!(
            "| Cohort: two local SDK members over the master's Unix socket (A → master → B → master → A), {what} | {} |\n",
            cells.trim()
        ));
    }
    let node = node(&dir, n);
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!(
        "# Local request/reply benchmark\n\nCommand: `cargo build --release --bins && cargo run --release -p cohort-bench -- local{}`\n\
         Machine: {}; {n} request/reply round trips after {WARM} unmeasured, one at a time, 16-byte payloads.\n\n\
         | between two members on one host | p50 | p99 |\n|---|---|---|\n{rows}\
         | Node {}: `cluster`, two workers, `process.send` through the primary and back | {} |\n",
        if quick { " --quick" } else { "" },
        crate::machine(),
        node.as_ref().map_or("(not run)", |(v, _)| v.as_str()),
        node.as_ref()
            .map_or_else(|e| format!("{e} |"), |(_, r)| r.clone()),
    );
    crate::write_report(&out, &text)
}

/// One master whose two local children are this binary on a `flavor`
/// runtime; the asker's p50 and p99 cells.
fn cohort(dir: &std::path::Path, n: usize, flavor: &str) -> anyhow::Result<String> {
    let result = dir.join(format!("result-{flavor}"));
    let exe = std::env::current_exe()?;
    let cfg = dir.join(format!("cohort-{flavor}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[agent]\ncount = 0\n[worker]\ncount = 2\ncommand = [{:?}, \"local-member\", {:?}, \"{n}\", \"{flavor}\"]\n",
            exe.display().to_string(),
            result.display().to_string()
        ),
    )?;
    let cfg_path = cfg.to_string_lossy().to_string();
    let master = spawn_self_logging(
        &[
            "master",
            "--listen",
            "127.0.0.1:0",
            "--listener",
            "http=127.0.0.1:0",
            "--config",
            &cfg_path,
        ],
        "warn",
        Stdio::null(),
    )?;
    let t = Instant::now();
    let cells = loop {
        if let Ok(text) = std::fs::read_to_string(&result)
            && text.ends_with('\n')
        {
            break text;
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(120),
            "no result from the local members"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(master);
    Ok(cells)
}

/// Node's p50 and p99 in µs, and its version.
fn node(dir: &std::path::Path, n: usize) -> anyhow::Result<(String, String)> {
    let script = dir.join("ipc.js");
    std::fs::write(&script, NODE_SCRIPT)?;
    let version = Command::new("node")
        .arg("--version")
        .output()
        .context("node")?;
    let out = Command::new("node")
        .arg(&script)
        .args([n.to_string(), WARM.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("running node")?;
    anyhow::ensure!(out.status.success(), "node failed");
    let line = BufReader::new(&out.stdout[..])
        .lines()
        .next()
        .context("node printed nothing")??;
    let (p50, p99) = line.split_once(' ').context("node's answer")?;
    Ok((
        String::from_utf8_lossy(&version.stdout).trim().to_string(),
        format!("{p50} µs | {p99} µs"),
    ))
}

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("cohort-bench-local-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// One local child of the bench's master, on a `flavor` runtime:
/// `worker-1` asks `n` times and writes its p50 and p99 to `result`; the
/// other answers.
pub fn member(result: &str, n: usize, flavor: &str) -> anyhow::Result<()> {
    let rt = match flavor {
        "current-thread" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        _ => runtime()?,
    };
    rt.block_on(async move {
        let member = MemberBuilder::from_env()?.join().await?;
        if member.name() != "worker-1" {
            let mut asks = member.on_with_capacity("ask", 1 << 12);
            member.ready().await?;
            while let Some(msg) = asks.recv().await {
                msg.reply(msg.data.clone()).await?;
            }
            return anyhow::Ok(());
        }
        member.ready().await?;
        let target = Target::Member("worker-2".into());
        let wait = Duration::from_secs(5);
        // Until the answerer is there.
        while member
            .request(target.clone(), "ask", "warm", wait)
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 0..WARM {
            member.request(target.clone(), "ask", "warm", wait).await?;
        }
        let mut lat = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            member
                .request(target.clone(), "ask", "0123456789abcdef", wait)
                .await?;
            lat.push(t.elapsed());
        }
        lat.sort();
        // The table's two cells.
        let line = format!(
            "{} | {}\n",
            us(percentile(&lat, 0.5)),
            us(percentile(&lat, 0.99))
        );
        let tmp = format!("{result}.tmp");
        std::fs::write(&tmp, line)?;
        std::fs::rename(&tmp, result)?;
        member.serve(std::future::pending()).await?;
        anyhow::Ok(())
    })
}
