//! `cohort-bench cluster`: respawn latency (SIGKILL of a worker → its
//! replacement READY, and → the first HTTP response it serves), startup
//! (master start → ClusterReady with one agent and 8 workers, timed by the
//! master's own systemd `STATUS=` "cluster ready"), and RSS of the master, the agent and a
//! demo worker. Uses the real binaries built next to this one.

use crate::{percentile, runtime, us};
use anyhow::{Context, bail};
use cohort_process::child;
use cohort_proto::pb;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KILLS: usize = 50;
const STARTS: usize = 10;

pub(crate) struct Master {
    pub(crate) child: Child,
    pub(crate) addr: String,
}

impl Drop for Master {
    fn drop(&mut self) {
        // SIGTERM lets it end its cluster.
        child::signal(self.child.id(), child::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::current_exe()?
        .parent()
        .map(PathBuf::from)
        .context("bench binary directory")?;
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build --release --bins` first",
            path.display()
        );
    }
    Ok(path)
}

pub(crate) fn start_master(
    args: &[&str],
    notify: Option<&std::path::Path>,
) -> anyhow::Result<Master> {
    start_master_on("127.0.0.1:0", args, notify)
}

/// [`start_master`] on a given address (a restart on the same one).
pub(crate) fn start_master_on(
    listen: &str,
    args: &[&str],
    notify: Option<&std::path::Path>,
) -> anyhow::Result<Master> {
    let mut cmd = Command::new(binary("cohort-master")?);
    cmd.args(["--listen", listen, "--listener", "http=127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(path) = notify {
        cmd.env("NOTIFY_SOCKET", path);
    }
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = lines.next().context("master exited")??;
    let addr = line
        .strip_prefix("READY master ")
        .context("no READY line")?
        .to_string();
    // Keep draining stdout so the master never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Ok(Master { child, addr })
}

/// Resident memory of `pid` in KiB.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    cohort_e2e::rss_bytes(pid) / 1024
}

fn get_pid(web: &str) -> Option<u64> {
    let mut s = std::net::TcpStream::connect(web).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    v["pid"].as_u64()
}

type Control = pb::control_client::ControlClient<tonic::transport::Channel>;

async fn worker_pid(control: &mut Control) -> anyhow::Result<Option<u32>> {
    let m = control
        .list_members(pb::ListMembersRequest::default())
        .await?
        .into_inner()
        .members;
    Ok(m.into_iter()
        .find(|m| m.name == "worker-1" && m.state == pb::MemberState::Ready as i32)
        .map(|m| m.pid))
}

/// Runs the benchmark and writes its report.
pub fn run(options: &crate::Options) -> anyhow::Result<()> {
    let (quick, out) = options.resolve("cluster");
    let kills = if quick { 10 } else { KILLS };
    let starts = if quick { 3 } else { STARTS };
    let rt = runtime()?;

    // Respawn: one worker, so the first HTTP response after the kill can
    // only come from its replacement; min_uptime 0 so every kill respawns
    // at once instead of backing off.
    let master = start_master(
        &[
            "--agent-count",
            "0",
            "--worker-count",
            "1",
            "--min-uptime",
            "0ms",
        ],
        None,
    )?;
    let (to_ready, to_serving, rss_master_1) = rt.block_on(async {
        let mut control = Control::connect(format!("http://{}", master.addr)).await?;
        let web = control
            .cluster_info(pb::ClusterInfoRequest {})
            .await?
            .into_inner()
            .listeners
            .first()
            .map(|l| l.addr.clone())
            .context("listener")?;
        let mut events = control
            .watch_events(pb::WatchEventsRequest {})
            .await?
            .into_inner();
        let mut pid = loop {
            if let Some(p) = worker_pid(&mut control).await? {
                break p;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let (mut ready, mut serving) = (Vec::new(), Vec::new());
        for _ in 0..kills {
            let t0 = Instant::now();
            child::signal(pid as u32, child::SIGKILL);
            let web2 = web.clone();
            let old = pid;
            let first_response = tokio::task::spawn_blocking(move || {
                loop {
                    match get_pid(&web2) {
                        Some(p) if p != u64::from(old) => return Instant::now(),
                        _ => std::thread::sleep(Duration::from_micros(200)),
                    }
                }
            });
            let new_pid = loop {
                let ev = tokio::time::timeout(Duration::from_secs(10), events.message())
                    .await
                    .context("no READY within 10 s")??
                    .context("event stream ended")?;
                if ev.kind == pb::EventKind::Ready as i32
                    && let Some(m) = ev.member
                    && m.name == "worker-1"
                    && m.pid != old
                {
                    break m.pid;
                }
            };
            ready.push(t0.elapsed());
            let served = tokio::time::timeout(Duration::from_secs(10), first_response).await??;
            serving.push(served.duration_since(t0));
            pid = new_pid;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ready.sort();
        serving.sort();
        anyhow::Ok((ready, serving, rss_kib(master.child.id())))
    })?;
    drop(master);

    // Startup: spawn → ClusterReady (the master's STATUS= to systemd).
    let mut startup = Vec::new();
    let mut rss = (0, 0, 0);
    for i in 0..starts {
        let dir =
            std::env::temp_dir().join(format!("cohort-bench-notify-{}-{i}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let socket = std::os::unix::net::UnixDatagram::bind(&dir)?;
        socket.set_read_timeout(Some(Duration::from_secs(30)))?;
        let t0 = Instant::now();
        let master = start_master(&["--worker-count", "8"], Some(&dir))?;
        // READY=1 comes as soon as the master serves; ClusterReady as its
        // STATUS= ("… cluster ready …").
        let mut buf = [0u8; 512];
        loop {
            let n = socket
                .recv(&mut buf)
                .context("no ClusterReady STATUS within 30 s")?;
            if String::from_utf8_lossy(&buf[..n]).contains("cluster ready") {
                break;
            }
        }
        startup.push(t0.elapsed());
        if i == 0 {
            std::thread::sleep(Duration::from_millis(500));
            rss = rt.block_on(async {
                let mut control = Control::connect(format!("http://{}", master.addr)).await?;
                let m = control
                    .list_members(pb::ListMembersRequest::default())
                    .await?
                    .into_inner()
                    .members;
                let of = |name: &str| {
                    m.iter()
                        .find(|m| m.name == name)
                        .map_or(0, |m| rss_kib(m.pid))
                };
                anyhow::Ok((rss_kib(master.child.id()), of("agent"), of("worker-1")))
            })?;
        }
        drop(master);
        let _ = std::fs::remove_file(&dir);
    }
    startup.sort();

    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    let text = format!(
        "# Cluster benchmark\n\nCommand: `cargo build --release --bins && cargo run --release -p cohort-bench -- cluster{}`\n\
         Machine: {}; real cohort-master / cohort-agent / cohort-worker binaries.\n\n\
         | measure | p50 | p99 |\n|---|---|---|\n\
         | SIGKILL of a worker → replacement READY ({kills} kills) | {} | {} |\n\
         | SIGKILL of a worker → first HTTP response from the replacement | {} | {} |\n\
         | master start → ClusterReady, 1 agent + 8 workers ({starts} starts, median / max) | {} | {} |\n\n\
         | process | RSS |\n|---|---|\n\
         | master (1 agent + 8 workers) | {} |\n| master (1 worker, after {kills} respawns) | {} |\n| agent | {} |\n| demo worker | {} |\n",
        if quick { " --quick" } else { "" },
        crate::machine(),
        us(percentile(&to_ready, 0.5)),
        us(percentile(&to_ready, 0.99)),
        us(percentile(&to_serving, 0.5)),
        us(percentile(&to_serving, 0.99)),
        us(percentile(&startup, 0.5)),
        us(percentile(&startup, 1.0)),
        mib(rss.0),
        mib(rss_master_1),
        mib(rss.1),
        mib(rss.2),
    );
    crate::write_report(&out, &text)
}
