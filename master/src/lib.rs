//! The Cohort master: a gRPC server that registers members, checks their
//! health, routes their messages, and answers operators.
//!
//! - [`auth`]: bearer tokens on `Membership` and `Control`.
//! - [`config`]: file, environment and flags (SPEC §6).
//! - [`registry`]: membership, health states, routing, the pre-ready hold.
//! - [`outbound`]: each member's bounded, batching outbound queue.
//! - [`flow`]: waiting for room in a receiver's queue (backpressure).
//! - [`listen`]: accepting connections, with a limit and a handshake timeout.
//! - [`membership`]: the `Membership/Join` stream.
//! - [`control`]: the `Control` API.
//! - [`json`]: JSON ⇄ `google.protobuf.Value` for `Control/Send`.
//! - [`supervisor`]: the local agent and workers: spawn, respawn, replace, stop.
//! - [`ha`]: several masters, one leader elected through etcd.
//! - [`server`]: the gRPC services and server settings; [`local`]: the
//!   private socket of local children; [`readiness`]: gRPC health and
//!   systemd notifications.
//!
//! [`run`] takes an already-bound listener and a shutdown future, so tests
//! pass port 0 and their own shutdown.

pub(crate) mod admission;
pub(crate) mod auth;
pub mod config;
pub(crate) mod control;
pub(crate) mod feed;
pub(crate) mod flow;
pub(crate) mod ha;
pub mod json;
pub(crate) mod listen;
pub(crate) mod local;
pub(crate) mod logs;
pub(crate) mod membership;
pub(crate) mod metrics;
pub(crate) mod model;
pub(crate) mod outbound;
pub(crate) mod probe;
pub(crate) mod readiness;
pub(crate) mod registry;
pub(crate) mod reload;
pub(crate) mod roll;
pub(crate) mod server;
pub(crate) mod supervisor;
pub(crate) mod wire;

pub use supervisor::stale::{Reaped, reap};

use anyhow::Context;
use cohort_proto::pb;
use config::Config;
use local::LocalSocket;
use readiness::Readiness;
use registry::{Registry, RegistryConfig};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long shutdown waits for connections to close before it stops anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long clients have to read the end of their streams at shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A shared listener the master bound for its workers.
pub struct SharedListener {
    /// Its name (`LISTEN_FDNAMES`).
    pub name: String,
    /// The bound socket; it stays open for the master's whole life.
    pub listener: std::net::TcpListener,
}

/// Binds every `[[listener]]` of the config (parse first, bind second),
/// or none when the master runs no local members: a coordinator-only
/// master holds no port it does not serve.
pub fn bind_listeners(config: &Config) -> anyhow::Result<Vec<SharedListener>> {
    if !runs_local_members(config) {
        return Ok(Vec::new());
    }
    config
        .listeners
        .iter()
        .map(|l| {
            let listener = std::net::TcpListener::bind(l.addr).map_err(|source| BindError {
                what: format!("shared listener {}", l.name),
                addr: l.addr,
                source,
            })?;
            Ok(SharedListener {
                name: l.name.clone(),
                listener,
            })
        })
        .collect()
}

/// An address the master was configured to listen on cannot be had (in
/// use, not this host's, not allowed): the binary exits 64 naming it.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for {what}")]
pub struct BindError {
    /// Which listener.
    pub what: String,
    /// The address.
    pub addr: std::net::SocketAddr,
    /// What the OS said.
    #[source]
    pub source: std::io::Error,
}

/// Serves the master on `listener`, starts the local agent and workers (who
/// inherit `shared`), and runs until `shutdown` completes or an operator
/// calls `Control/Shutdown`; then stops the workers, then the agent, ends
/// every member stream and returns.
///
/// With `[ha]`, it campaigns through etcd and serves as a standby or as the
/// leader, as the election goes ([`ha`]).
pub async fn run(
    listener: TcpListener,
    shared: Vec<SharedListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = match config.metrics_listen {
        Some(at) => {
            let listener = std::net::TcpListener::bind(at).map_err(|source| BindError {
                what: "metrics ([metrics] listen)".into(),
                addr: at,
                source,
            })?;
            listener
                .set_nonblocking(true)
                .context("setting up the metrics socket")?;
            let bound = listener
                .local_addr()
                .context("reading the metrics address")?;
            tracing::info!(metrics.addr = %bound, "serving Prometheus metrics at GET /metrics");
            // After `READY master`: where to scrape (port 0 is resolved here).
            println!("READY metrics {bound}");
            Some(listener)
        }
        None => None,
    };
    match config.ha.clone() {
        None => serve(listener, shared, config, shutdown, metrics.as_ref(), None).await,
        Some(ha) => ha::run(listener, config, ha, shutdown, metrics).await,
    }
}

/// Serves one master (or one phase of a master of several, `phase`).
async fn serve(
    listener: TcpListener,
    shared: Vec<SharedListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    metrics_socket: Option<&std::net::TcpListener>,
    phase: Option<ha::Phase>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("reading the bound address")?;
    let apps = supervisor::app::from_config(&config, cpus());
    let (notice_tx, notice_rx) = tokio::sync::mpsc::channel(256);
    let leadership = phase.as_ref().and_then(|p| p.leading.clone());
    let standby = phase.is_some() && leadership.is_none();
    let what = match (&phase, &leadership) {
        (None, _) => "master",
        (Some(_), Some(_)) => "leader",
        (Some(_), None) => "standby",
    };
    // What members whose streams end are told.
    let closing = match what {
        "leader" => "this master no longer leads (or is stopping): join the leader",
        _ => "the master is shutting down",
    };
    let registry = Arc::new(Registry::new(
        registry_config(&config, &apps, leadership.clone()),
        Some(notice_tx),
    ));
    let (listeners, fds) = describe(&shared)?;
    // Local children reach the master over a private Unix socket: no TLS
    // or client certificate to hand out, and no loopback TCP hop. A master
    // with no local members writes nothing (a read-only root is fine).
    let mut local = match runs_local_members(&config) {
        false => None,
        true => Some(LocalSocket::bind().context("creating the local members' socket")?),
    };
    let supervisor_config = supervisor_config(&config, apps, local.as_ref(), fds);
    let (supervisor, supervisor_task) =
        supervisor::start(supervisor_config, registry.clone(), notice_rx);

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let (reporter, health) = tonic_health::server::health_reporter();
    let readiness =
        Readiness::new(reporter, registry.clone(), phase.as_ref().map(|_| !standby)).await;
    tasks.spawn(readiness.run(stop.clone()));
    tasks.spawn(probe::run(registry.clone(), stop.clone()));
    // Through a shutdown's drain too: members are still read and routed.
    tasks.spawn(registry.clone().sweep_every(registry.closed()));
    let admission = Arc::new(admission::Admission::new(config.join_rate));
    let refusals = listen::Refusals {
        answer: !config.tls.enabled(),
        ..Default::default()
    };
    let election = phase.as_ref().map(|p| p.election.clone());
    if let Some(socket) = metrics_socket {
        let listener = socket
            .try_clone()
            .and_then(TcpListener::from_std)
            .context("serving metrics")?;
        let metrics = metrics::registry(
            &registry.metrics,
            &admission,
            &refusals,
            registry.clone(),
            supervisor.clone(),
            config.metrics_per_member,
            election.clone(),
        );
        tasks.spawn(metrics::serve(listener, Arc::new(metrics), stop.clone()));
    }
    if let (Some(election), Some(l)) = (&election, &leadership)
        && !l.was_ready
    {
        tasks.spawn(mark_ready(
            election.clone(),
            registry.clone(),
            l.term,
            stop.clone(),
        ));
    }
    let reloader = Arc::new(reload::Reloader::new(config.clone(), supervisor.clone()));
    tasks.spawn(reload_on_sighup(reloader.clone(), stop.clone()));
    let parts = server::Parts {
        reloader,
        registry: &registry,
        admission: &admission,
        config: &config,
        addr,
        supervisor: supervisor.clone(),
        listeners,
        tasks: &tasks,
        stop: &stop,
        gate: election
            .as_ref()
            .map(|e| ha::Gate::new(e.clone(), leadership.is_some())),
        election: election.clone(),
    };
    let services = server::Services::build(parts, health)?;
    tokio::spawn(cancel_on(shutdown, stop.clone()));

    let streams_closed = CancellationToken::new();
    let local_served = match local.as_mut() {
        Some(local) => Some(tokio::spawn(
            server::builder(None)?
                .add_routes(services.local)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(local.listener()?),
                    streams_closed.clone().cancelled_owned(),
                ),
        )),
        None => None,
    };
    // At `stop`: the supervisor drains its children, then every member
    // stream ends, then the server waits for its connections.
    let drained = {
        let (stop, supervisor, registry) = (stop.clone(), supervisor.clone(), registry.clone());
        let closed = streams_closed.clone();
        async move {
            stop.cancelled().await;
            supervisor.shutdown().await;
            if registry.member_count() > 0 {
                tracing::info!("shutting down: closing member streams");
            }
            registry.close_all(closing);
            closed.cancel();
        }
    };
    let mut served = tokio::spawn(
        server::builder(server::server_tls(
            &config.tls,
            config.limits.handshake_timeout,
        )?)?
        .add_routes(services.network)
        .serve_with_incoming_shutdown(listen::incoming(listener, config.limits, refusals), drained),
    );
    tracing::info!(listen.addr = %addr, "{what} serving");
    let early = tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        r = &mut served => Some(r),
    };
    // The server ends by itself right after `stop` too; only an end
    // without `stop` is a failure the supervisor (systemd, Kubernetes) must
    // see.
    let ended_early = !stop.is_cancelled();
    stop.cancel();
    tasks.close();
    let result = match early {
        Some(r) => Some(r),
        None => wait_served(&mut served, &streams_closed, &config).await,
    };
    supervisor.shutdown().await;
    within("the supervisor", supervisor_task).await;
    // Done already unless the server ended on its own.
    registry.close_all(closing);
    streams_closed.cancel();
    if let Some(local_served) = local_served {
        within("the local members' socket", local_served).await;
    }
    drop((local, shared));
    match result {
        Some(r) => r
            .context("the gRPC server task failed")?
            .context("serving gRPC")?,
        None => tracing::warn!("connections still open at the end of the grace; stopping anyway"),
    }
    if ended_early {
        anyhow::bail!("the gRPC server stopped on its own");
    }
    within("background tasks", tasks.wait()).await;
    tracing::info!("{what} stopped");
    Ok(())
}

/// Whether the master runs members of its own (or may, after a reload:
/// it has `[[app]]`s): then it binds the shared listeners and its local
/// members' socket; a coordinator-only master binds and writes neither.
fn runs_local_members(config: &Config) -> bool {
    config.agent.count > 0 || config.worker_count(cpus()) > 0 || !config.apps.is_empty()
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The registry's settings: the expected members include the local ones
/// (but one-shot jobs, which exit).
fn registry_config(
    config: &Config,
    apps: &[supervisor::AppSpec],
    leadership: Option<registry::Leadership>,
) -> RegistryConfig {
    let local = |role| -> u32 {
        apps.iter()
            .filter(|a| a.role == role && a.restart != config::RestartMode::Never)
            .map(|a| a.count)
            .sum()
    };
    let (agents, workers) = (
        local(cohort_proto::Role::Agent),
        local(cohort_proto::Role::Worker),
    );
    RegistryConfig {
        health: config.health,
        messaging: config.messaging,
        expect: config::Expect {
            agents: config.expect.agents + agents,
            workers: config.expect.workers + workers,
            apps: config.expect.apps.clone(),
        },
        join_timeout: config.restart.start_timeout,
        drain_timeout: config.restart.drain_timeout,
        local_agent: agents > 0,
        max_rss: supervisor::reload::max_rss(apps),
        health_checks: supervisor::reload::health_checks(apps),
        max_members: config.max_members,
        leadership,
    }
}

/// Reloads the configuration at each SIGHUP (as `cohortctl reload`), and
/// logs what it did or why nothing changed.
async fn reload_on_sighup(reloader: Arc<reload::Reloader>, stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: reload with cohortctl reload");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        tracing::info!("SIGHUP: reloading the configuration");
        match reloader.reload().await {
            Ok(changes) => {
                let done: Vec<String> = changes
                    .iter()
                    .map(|c| format!("{} {}", c.app, c.action))
                    .collect();
                tracing::info!(apps = %done.join(", "), "reloaded");
            }
            Err(e) => tracing::error!("reload refused: {}", e.message()),
        }
    }
}

/// Records in etcd, as the leader of `term`, that the cluster has been
/// ready, once it is: a later leader then starts ready.
async fn mark_ready(
    election: ha::Election,
    registry: Arc<Registry>,
    term: u64,
    stop: CancellationToken,
) {
    let mut ready = registry.ready_watch();
    tokio::select! {
        _ = stop.cancelled() => return,
        r = ready.wait_for(|r| *r) => if r.is_err() { return },
    }
    match election.mark_ready(term).await {
        Ok(()) => tracing::info!(term, "recorded in etcd that the cluster has been ready"),
        Err(e) => tracing::warn!(
            error = format!("{e:#}"),
            "cannot record the ready mark in etcd"
        ),
    }
}

/// The supervisor's settings.
fn supervisor_config(
    config: &Config,
    apps: Vec<supervisor::AppSpec>,
    local: Option<&LocalSocket>,
    listeners: Vec<(String, std::os::fd::RawFd)>,
) -> supervisor::SupervisorConfig {
    let r = &config.restart;
    supervisor::SupervisorConfig {
        apps,
        policy: supervisor::slot::Policy {
            min_uptime: r.min_uptime,
            backoff_initial: r.backoff_initial,
            backoff_max: r.backoff_max,
            max_restarts: r.max_restarts,
            restart_window: r.restart_window,
            start_timeout: r.start_timeout,
            drain_timeout: r.drain_timeout,
            restart: config::RestartMode::Always,
        },
        kill_timeout: r.kill_timeout,
        master_url: local.map(|l| format!("unix://{}", l.path.display())),
        token: config.tokens.first().map(|t| t.expose().to_string()),
        listeners,
    }
}

/// Each shared listener's real address (for `ClusterInfo`) and its fd (for
/// the children).
#[allow(clippy::type_complexity)]
fn describe(
    shared: &[SharedListener],
) -> anyhow::Result<(Vec<pb::ListenerInfo>, Vec<(String, std::os::fd::RawFd)>)> {
    use std::os::fd::AsRawFd;
    let mut info = Vec::new();
    let mut fds = Vec::new();
    for l in shared {
        let bound = l
            .listener
            .local_addr()
            .context("reading a listener's address")?;
        tracing::info!(listener = %l.name, addr = %bound, "shared listener bound");
        info.push(pb::ListenerInfo {
            name: l.name.clone(),
            addr: bound.to_string(),
        });
        fds.push((l.name.clone(), l.listener.as_raw_fd()));
    }
    Ok((info, fds))
}

/// Cancels `stop` when `shutdown` completes.
pub(crate) async fn cancel_on(shutdown: impl Future<Output = ()>, stop: CancellationToken) {
    tokio::select! {
        _ = shutdown => stop.cancel(),
        _ = stop.cancelled() => {}
    }
}

/// Waits for the server to end after `stop`: at most the grace, and only
/// [`CLOSE_GRACE`] once every member stream has been ended (a client that
/// never reads must not hold the master up). `None` if it did not end.
async fn wait_served<T>(
    served: &mut tokio::task::JoinHandle<T>,
    streams_closed: &CancellationToken,
    config: &Config,
) -> Option<Result<T, tokio::task::JoinError>> {
    let grace = SHUTDOWN_GRACE + config.restart.kill_timeout * 2;
    let after_close = async {
        streams_closed.cancelled().await;
        tokio::time::sleep(CLOSE_GRACE).await;
    };
    tokio::select! {
        r = served => Some(r),
        _ = tokio::time::sleep(grace) => None,
        _ = after_close => None,
    }
}

/// Waits up to [`SHUTDOWN_GRACE`] for `what`, and says so if it is late.
async fn within<T>(what: &str, f: impl Future<Output = T>) {
    if tokio::time::timeout(SHUTDOWN_GRACE, f).await.is_err() {
        tracing::warn!("{what} did not stop within {SHUTDOWN_GRACE:?}");
    }
}
