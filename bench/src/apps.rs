//! `cohort-bench apps`: several apps under one master (issue 21), with the
//! default settings. (1) Reload of one app of 4 members among 4 apps of 4
//! (16 `cohort-worker` processes): the time from `cohortctl reload` to its
//! answer (every new instance ready; the roll replaces one member at a time),
//! and the failed HTTP requests on the shared port meanwhile. (2) What health
//! probes cost the master: its CPU time with 20 members and no probe, with
//! HTTP probes at the default interval (5 s), and with HTTP and exec probes
//! every 20 ms (1,000 probes a second: the default interval would need 5,000
//! members for that rate, so the interval is what changes).

use crate::cluster::binary;
use crate::{Options, percentile, write_report};
use anyhow::{Context, bail};
use cohort_e2e::{Proc, cpu_seconds, http};
use cohort_proto::pb;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

/// A master with its config file in a temp directory.
struct Cluster {
    dir: tempfile::TempDir,
    master: Proc,
    addr: String,
}

impl Cluster {
    fn start(apps: &str) -> anyhow::Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("cohort.toml");
        std::fs::write(&path, config(apps))?;
        let mut cmd = Command::new(binary("cohort-master")?);
        cmd.arg("--config")
            .arg(&path)
            .env("RUST_LOG", "warn")
            .env("TMPDIR", dir.path());
        let mut master = Proc::spawn("cohort-master", cmd);
        let line = master.wait_line("READY master", |l| l.starts_with("READY master "));
        let addr = line.trim_start_matches("READY master ").to_string();
        Ok(Cluster { dir, master, addr })
    }

    fn rewrite(&self, apps: &str) -> anyhow::Result<()> {
        Ok(std::fs::write(
            self.dir.path().join("cohort.toml"),
            config(apps),
        )?)
    }

    async fn control(
        &self,
    ) -> anyhow::Result<pb::control_client::ControlClient<tonic::transport::Channel>> {
        Ok(pb::control_client::ControlClient::connect(format!("http://{}", self.addr)).await?)
    }

    /// Waits until `n` members are READY and ClusterReady was announced.
    async fn ready(&self, n: usize) -> anyhow::Result<Vec<pb::MemberInfo>> {
        let end = Instant::now() + LIMIT;
        let mut c = self.control().await?;
        loop {
            let members = c
                .list_members(pb::ListMembersRequest::default())
                .await?
                .into_inner()
                .members;
            let ready = members
                .iter()
                .filter(|m| m.state == pb::MemberState::Ready as i32)
                .count();
            let info = c
                .cluster_info(pb::ClusterInfoRequest {})
                .await?
                .into_inner();
            if ready == n && info.cluster_ready {
                return Ok(members);
            }
            if Instant::now() > end {
                bail!("{ready} of {n} members ready after {LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn http_addr(&self) -> anyhow::Result<String> {
        let info = self
            .control()
            .await?
            .cluster_info(pb::ClusterInfoRequest {})
            .await?
            .into_inner();
        info.listeners
            .into_iter()
            .find(|l| l.name == "http")
            .map(|l| l.addr)
            .context("http listener")
    }
}

fn config(apps: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\n[[listener]]\nname = \"http\"\naddr = \"127.0.0.1:0\"\n{apps}"
    )
}

/// web (on the shared port) and three more apps, 4 members each.
fn four_apps(version: u32) -> String {
    let mut text = format!(
        "[[app]]\nname = \"web\"\ncommand = [\"cohort-worker\"]\ncount = 4\nlisteners = [\"http\"]\nenv = {{ VERSION = \"{version}\" }}\n"
    );
    for name in ["queue", "mail", "cron"] {
        text.push_str(&format!(
            "[[app]]\nname = \"{name}\"\ncommand = [\"cohort-worker\"]\ncount = 4\nlisteners = []\n"
        ));
    }
    text
}

/// GETs `/` on `addr` in a loop until stopped: (requests, failures).
fn load(
    addr: String,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let end = Instant::now() + LIMIT * 4;
        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
            match http(&addr, "GET", "/") {
                Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                _ => failed.fetch_add(1, Ordering::Relaxed),
            };
        }
    })
}

pub(crate) fn run(o: &Options) -> anyhow::Result<()> {
    let (quick, out) = o.resolve("apps");
    let rounds = if quick { 3 } else { 10 };
    let rt = crate::runtime()?;
    let reload = rt.block_on(reloads(rounds))?;
    let probes = rt.block_on(probe_cost(if quick { 5 } else { 10 }))?;
    write_report(&out, &format!("{reload}\n{probes}"))
}

async fn reloads(rounds: u32) -> anyhow::Result<String> {
    let cluster = Cluster::start(&four_apps(0))?;
    let before = cluster.ready(16).await?;
    let (stop, ok, failed) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let loader = load(
        cluster.http_addr().await?,
        stop.clone(),
        ok.clone(),
        failed.clone(),
    );
    let ctl = binary("cohortctl")?;
    let mut times = Vec::new();
    let mut others_touched = 0;
    let pid_of =
        |ms: &[pb::MemberInfo], name: &str| ms.iter().find(|m| m.name == name).map(|m| m.pid);
    let mut last = before;
    for round in 1..=rounds {
        cluster.rewrite(&four_apps(round))?;
        let t0 = Instant::now();
        let done = Command::new(&ctl)
            .env("COHORT_MASTER", &cluster.addr)
            .arg("reload")
            .output()?;
        let took = t0.elapsed();
        if !done.status.success() {
            bail!(
                "cohortctl reload: {}",
                String::from_utf8_lossy(&done.stderr)
            );
        }
        let now = cluster.ready(16).await?;
        for m in &now {
            let (old, new) = (pid_of(&last, &m.name), Some(m.pid));
            let is_web = m.name.starts_with("web-");
            if is_web && old == new {
                bail!("{} kept its pid through a reload that changed web", m.name);
            }
            if !is_web && old != new {
                others_touched += 1;
            }
        }
        last = now;
        times.push(took);
        println!("reload {round}: {took:.2?}");
    }
    stop.store(true, Ordering::Relaxed);
    let _ = loader.join();
    times.sort();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    Ok(format!(
        "## Reload of one app (4 members) among 4 apps of 4\n\n\
         Defaults (`cohortctl reload` after web's `env` changed; the roll replaces one member at a time, each new instance READY before the old one is asked to stop); {rounds} reloads.\n\n\
         | measure | p50 | p90 | max |\n|---|---|---|---|\n\
         | `cohortctl reload` → its answer (all 4 new instances ready) | {:.2} s | {:.2} s | {:.2} s |\n\n\
         HTTP GETs on the shared port during the reloads: {ok} answered, **{failed} failed**. \
         Members of the other apps replaced: {others_touched} (of 12, each reload).\n",
        percentile(&times, 0.5).as_secs_f64(),
        percentile(&times, 0.9).as_secs_f64(),
        times.last().copied().unwrap_or_default().as_secs_f64(),
    ))
}

/// The master's CPU over `secs` seconds with 20 members and each probe
/// setting.
async fn probe_cost(secs: u64) -> anyhow::Result<String> {
    let members = 20;
    let app = |health: &str| {
        format!(
            "[[app]]\nname = \"web\"\ncommand = [\"cohort-worker\", \"--http\", \"127.0.0.1:0\"]\ncount = {members}\nlisteners = []\n{health}\n"
        )
    };
    let cases = [
        ("no probe", String::new(), 0.0),
        (
            "HTTP, default interval (5 s)",
            "health = { http = \"/healthz\" }".to_string(),
            members as f64 / 5.0,
        ),
        (
            "HTTP, every 20 ms",
            "health = { http = \"/healthz\", interval = \"20ms\" }".to_string(),
            members as f64 / 0.02,
        ),
        (
            "exec `true`, every 20 ms",
            "health = { exec = [\"true\"], interval = \"20ms\" }".to_string(),
            members as f64 / 0.02,
        ),
    ];
    let mut rows = String::new();
    let mut base = 0.0;
    for (what, health, rate) in cases {
        let cluster = Cluster::start(&app(&health))?;
        cluster.ready(members).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pid = cluster.master.id();
        let (c0, t0) = (cpu_seconds(pid), Instant::now());
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let cpu = (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64();
        if rate == 0.0 {
            base = cpu;
        }
        // Scaled to 1,000/s from the fast rows only: at 4/s the difference
        // is within the noise.
        let per_thousand = match rate >= 100.0 {
            false => "-".to_string(),
            true => format!("{:.1} % of a core", (cpu - base) * 100.0 * 1000.0 / rate),
        };
        rows.push_str(&format!(
            "| {what} | {rate:.0} | {:.1} % | {per_thousand} |\n",
            cpu * 100.0
        ));
        println!("{what}: {:.1} % CPU", cpu * 100.0);
    }
    Ok(format!(
        "## What health probes cost the master\n\n\
         20 `cohort-worker --http 127.0.0.1:0` members of one app, the master's CPU time over {secs} s. \
         Every setting is the default but, in the last two rows, `interval` (20 ms, for 1,000 probes a second).\n\n\
         | probes | probes/s | master CPU | per 1,000 probes/s (above no probe) |\n|---|---|---|---|\n{rows}"
    ))
}
