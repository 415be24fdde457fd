//! Runs the apps' health probes: an HTTP GET on the address a member
//! reports (its label `http`), or a command run by the master for a local
//! member; every member of a probed app every `interval`, each check within
//! `timeout`. Results go to the registry, which decides readiness and
//! replacement ([`crate::registry::ProbeTarget`]).

use crate::config::Probe;
use crate::registry::{ProbeTarget, Registry};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often the runner looks for probes that are due.
const TICK: Duration = Duration::from_millis(10);
/// How often it lists the members anyway (to find new ones).
const LIST_EVERY: Duration = Duration::from_millis(100);
/// Probes in flight at once, at most; more wait for the next tick.
const MAX_IN_FLIGHT: usize = 512;

/// Probes until `stop`.
pub async fn run(registry: Arc<Registry>, stop: CancellationToken) {
    let mut due: HashMap<String, Instant> = HashMap::new();
    let mut busy: HashSet<String> = HashSet::new();
    let mut running: JoinSet<(ProbeTarget, Result<(), String>)> = JoinSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut listed = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            Some(done) = running.join_next(), if !running.is_empty() => {
                if let Ok((t, result)) = done {
                    busy.remove(&t.instance_id);
                    registry.probe_result(&t.name, &t.instance_id, result);
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                let earliest = due.values().min().copied();
                if earliest.is_none_or(|t| t > now) && now < listed + LIST_EVERY {
                    continue;
                }
                listed = now;
                let targets = registry.probe_targets();
                let live: HashSet<&str> = targets.iter().map(|t| t.instance_id.as_str()).collect();
                due.retain(|i, _| live.contains(i.as_str()));
                for t in targets {
                    if running.len() >= MAX_IN_FLIGHT || busy.contains(&t.instance_id) {
                        continue;
                    }
                    let next = due.entry(t.instance_id.clone()).or_insert(now);
                    if *next > now {
                        continue;
                    }
                    *next = now + t.check.interval;
                    busy.insert(t.instance_id.clone());
                    running.spawn(async move {
                        let result = check(&t).await;
                        (t, result)
                    });
                }
            }
        }
    }
}

/// One check of `t`, within its timeout.
async fn check(t: &ProbeTarget) -> Result<(), String> {
    let limit = t.check.timeout;
    let late = || format!("no answer within {} ms (timeout)", limit.as_millis());
    match &t.check.probe {
        Probe::Http(path) => {
            let addr = t.http.as_deref().ok_or(
                "it reports no address to probe: a member of an app with an http probe gives its own HTTP address in the label http (HOST:PORT)",
            )?;
            tokio::time::timeout(limit, get(addr, path))
                .await
                .unwrap_or_else(|_| Err(late()))
        }
        Probe::Exec(command) => exec(command, t, limit)
            .await
            .map_err(|e| e.unwrap_or_else(late)),
    }
}

/// `GET path` on `addr`: a 2xx or 3xx answer passes.
async fn get(addr: &str, path: &str) -> Result<(), String> {
    use http_body_util::Empty;
    use hyper::body::Bytes;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr)
        .header(hyper::header::USER_AGENT, "cohort-master health probe")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET http://{addr}{path}: {e}"))?;
    let status = response.status();
    match status.is_success() || status.is_redirection() {
        true => Ok(()),
        false => Err(format!("GET http://{addr}{path}: HTTP {}", status.as_u16())),
    }
}

/// Runs `command` for member `t`: exit 0 passes. Its process group is
/// killed if it outlives `limit` (then the error is `None`: the timeout).
async fn exec(command: &[String], t: &ProbeTarget, limit: Duration) -> Result<(), Option<String>> {
    let Some((program, args)) = command.split_first() else {
        return Err(Some("empty command".into()));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env(cohort_proto::env::NAME, &t.name)
        .env(cohort_proto::env::APP, &t.app)
        .env("COHORT_PID", t.pid.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    // As the master's children: ended with it, even by kill -9.
    cohort_process::child::prepare(&mut cmd, Vec::new(), 3);
    let mut child = cmd.spawn().map_err(|e| Some(format!("{program}: {e}")))?;
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status.map_err(|e| Some(format!("{program}: {e}")))?,
        Err(_) => {
            if let Some(pid) = child.id() {
                cohort_process::child::signal_group(pid, cohort_process::child::SIGKILL);
            }
            let _ = child.wait().await;
            return Err(None);
        }
    };
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => Err(Some(format!("{program} exited with status {code}"))),
        None => Err(Some(format!("{program} was killed by a signal"))),
    }
}
