//! `cohort-bench failover`: three real `cohort-master`s campaign through a
//! real etcd (Debian's `etcd-server`, one node: a single point of failure,
//! fine for a measurement) with the default `[ha]` settings (lease TTL
//! 2 s), and 20 `cohort-worker` processes, each on its own connection,
//! list all three in `COHORT_MASTER`. Then, repeatedly, the leader is
//! killed (`kill -9`, a dead host) or stopped (SIGTERM, an upgrade: it
//! gives its lease back), and restarted on its address as a standby;
//! measured: the time to a new leader, and to every worker READY on it.

use crate::cluster::binary;
use crate::{Options, percentile, write_report};
use anyhow::{Context, bail};
use cohort_e2e::Proc;
use cohort_e2e::etcd::{Etcd, free_port};
use cohort_proto::pb;
use std::process::Command;
use std::time::{Duration, Instant};

const WORKERS: usize = 20;
const ROUNDS: usize = 20;
const LIMIT: Duration = Duration::from_secs(30);

struct Masters {
    etcd: String,
    ports: Vec<u16>,
    procs: Vec<Option<Proc>>,
}

impl Masters {
    fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let mut cmd = Command::new(binary("cohort-master")?);
        cmd.args(["--listen", &self.addr(i), "--ha-etcd", &self.etcd])
            .env("RUST_LOG", "warn");
        let mut proc = Proc::spawn("cohort-master", cmd);
        proc.wait_line("READY master", |l| l.starts_with("READY master "));
        self.procs[i] = Some(proc);
        Ok(())
    }

    fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    /// The master that says it leads, and how many READY members it lists.
    async fn leader(&self) -> Option<(usize, usize)> {
        for i in 0..self.ports.len() {
            if self.procs[i].is_none() {
                continue;
            }
            let ask = async {
                let url = format!("http://{}", self.addr(i));
                let mut c = pb::control_client::ControlClient::connect(url).await.ok()?;
                let info = c.cluster_info(pb::ClusterInfoRequest {}).await.ok()?;
                if info.into_inner().master_role != "leader" {
                    return None;
                }
                let list = c
                    .list_members(pb::ListMembersRequest::default())
                    .await
                    .ok()?;
                let ready = pb::MemberState::Ready as i32;
                let n = list
                    .into_inner()
                    .members
                    .iter()
                    .filter(|m| m.state == ready)
                    .count();
                Some((i, n))
            };
            if let Ok(Some(found)) = tokio::time::timeout(Duration::from_secs(1), ask).await {
                return Some(found);
            }
        }
        None
    }

    /// Polls (every 20 ms) until a master other than `old` leads, then until
    /// it lists every worker READY; both times from `since`.
    async fn await_new(
        &self,
        old: Option<usize>,
        since: Instant,
    ) -> anyhow::Result<(usize, Duration, Duration)> {
        let mut elected = None;
        loop {
            if let Some((i, ready)) = self.leader().await
                && Some(i) != old
            {
                let at = *elected.get_or_insert(since.elapsed());
                if ready == WORKERS {
                    return Ok((i, at, since.elapsed()));
                }
            }
            if since.elapsed() > LIMIT {
                bail!("no leader with all {WORKERS} workers within {LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let (quick, out) = o.resolve("failover");
    let rounds = if quick { 4 } else { ROUNDS };
    let etcd = Etcd::start();
    let mut masters = Masters {
        etcd: etcd.url.clone(),
        ports: (0..3).map(|_| free_port()).collect(),
        procs: vec![None, None, None],
    };
    for i in 0..3 {
        masters.start(i)?;
    }
    let list: Vec<String> = (0..3)
        .map(|i| format!("http://{}", masters.addr(i)))
        .collect();
    let worker = binary("cohort-worker")?;
    let _workers: Vec<Proc> = (0..WORKERS)
        .map(|n| {
            let mut cmd = Command::new(&worker);
            cmd.env(cohort::env::MASTER, list.join(","))
                .env(cohort::env::NAME, format!("w{n}"))
                .env("RUST_LOG", "warn");
            Proc::spawn("cohort-worker", cmd)
        })
        .collect();
    let rt = crate::runtime()?;
    let (mut leader, _, _) = rt.block_on(masters.await_new(None, Instant::now()))?;
    let mut rows = String::new();
    for (how, signal) in [
        ("kill -9 (a dead host)", "KILL"),
        ("SIGTERM (an upgrade)", "TERM"),
    ] {
        let (mut elected, mut settled) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let proc = masters.procs[leader].take().context("the leader runs")?;
            let since = Instant::now();
            proc.signal(signal);
            let (next, e, s) = rt.block_on(masters.await_new(Some(leader), since))?;
            elected.push(e);
            settled.push(s);
            drop(proc);
            masters.start(leader)?;
            leader = next;
            // Settled again with the restarted master as a standby.
            std::thread::sleep(Duration::from_secs(1));
        }
        elected.sort();
        settled.sort();
        let s = |d: Duration| format!("{:.2} s", d.as_secs_f64());
        rows.push_str(&format!(
            "| {how} → a new leader ({rounds} times) | {} | {} | {} |\n| {how} → all {WORKERS} workers READY on it | {} | {} | {} |\n",
            s(percentile(&elected, 0.5)),
            s(percentile(&elected, 0.9)),
            s(elected[elected.len() - 1]),
            s(percentile(&settled, 0.5)),
            s(percentile(&settled, 0.9)),
            s(settled[settled.len() - 1]),
        ));
    }
    let text = format!(
        "# Failover benchmark\n\nCommand: `cargo build --release --bins && cargo run --release -p cohort-bench -- failover{}`\n\
         Machine: {}; one etcd ({}), three cohort-master with the default [ha] settings (lease TTL 2 s), \
         {WORKERS} cohort-worker processes on their own connections; the stopped leader is started again as a standby \
         before the next round.\n\n\
         | measure | p50 | p90 | max |\n|---|---|---|---|\n{rows}",
        if quick { " --quick" } else { "" },
        crate::machine(),
        etcd_version(),
    );
    write_report(&out, &text)
}

fn etcd_version() -> String {
    Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "etcd".into())
}
