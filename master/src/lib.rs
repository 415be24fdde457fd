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
//!
//! [`run`] takes an already-bound listener and a shutdown future, so tests
//! pass port 0 and their own shutdown.

pub mod auth;
pub mod config;
pub mod control;
pub mod flow;
pub mod json;
pub mod listen;
pub mod membership;
pub mod outbound;
pub mod registry;
pub mod supervisor;

use anyhow::Context;
use cohort_proto::pb;
use config::Config;
use registry::{Registry, RegistryConfig};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The master's private socket for its own children: a fresh directory
/// only this user can enter, removed on drop.
struct LocalSocket {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
    listener: Option<std::os::unix::net::UnixListener>,
}

impl LocalSocket {
    fn bind() -> anyhow::Result<LocalSocket> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!(
            "cohort-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("master.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .with_context(|| format!("binding {}", path.display()))?;
        listener.set_nonblocking(true)?;
        Ok(LocalSocket {
            dir,
            path,
            listener: Some(listener),
        })
    }

    fn listener(&mut self) -> anyhow::Result<tokio::net::UnixListener> {
        let l = self
            .listener
            .take()
            .context("local socket already served")?;
        Ok(tokio::net::UnixListener::from_std(l)?)
    }
}

impl Drop for LocalSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads the `[tls]` PEM files into tonic's server TLS settings.
fn server_tls(
    cfg: &config::TlsConfig,
) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
        return Ok(None);
    };
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).with_context(|| format!("reading {}", p.display()))
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &cfg.client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read(ca)?));
        tracing::info!("mTLS on: clients need a certificate naming their member name");
    }
    Ok(Some(tls))
}

/// Sends `READY=1` to systemd's notify socket (a path, or `@name` for the
/// abstract namespace).
fn notify_systemd(socket: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let addr = match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(socket),
    };
    let sent = addr.and_then(|addr| {
        let sock = UnixDatagram::unbound()?;
        sock.send_to_addr(b"READY=1", &addr)
    });
    match sent {
        Ok(_) => tracing::info!("told systemd READY=1"),
        Err(e) => tracing::warn!(error = %e, socket, "cannot notify systemd"),
    }
}

/// How long shutdown waits for connections to close before it stops anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long clients have to read the end of their streams at shutdown.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// HTTP/2 receive window of one member stream: what a sender held back by
/// flow control ([`flow`]) can have in flight to the master.
const STREAM_WINDOW: u32 = 256 * 1024;
/// HTTP/2 receive window of one connection, well above one stream's, so
/// senders held back on a shared connection leave room for the others.
const CONNECTION_WINDOW: u32 = 16 * STREAM_WINDOW;

/// A shared listener the master bound for its workers.
pub struct SharedListener {
    /// Its name (`LISTEN_FDNAMES`).
    pub name: String,
    /// The bound socket; it stays open for the master's whole life.
    pub listener: std::net::TcpListener,
}

/// Binds every `[[listener]]` of the config (parse first, bind second).
pub fn bind_listeners(config: &Config) -> anyhow::Result<Vec<SharedListener>> {
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
pub async fn run(
    listener: TcpListener,
    shared: Vec<SharedListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let addr = listener.local_addr().context("reading the bound address")?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (agents, workers) = (config.agent.count, config.worker_count(cpus));
    let (notice_tx, notice_rx) = tokio::sync::mpsc::channel(256);
    let registry = Arc::new(Registry::new(
        RegistryConfig {
            health: config.health,
            messaging: config.messaging,
            expect: config::Expect {
                agents: config.expect.agents + agents,
                workers: config.expect.workers + workers,
            },
            join_timeout: config.restart.start_timeout,
            local_agent: agents > 0,
        },
        Some(notice_tx),
    ));
    let mut listeners_info = Vec::new();
    let mut fds = Vec::new();
    for l in &shared {
        let bound = l
            .listener
            .local_addr()
            .context("reading a listener's address")?;
        tracing::info!(listener = %l.name, addr = %bound, "shared listener bound");
        listeners_info.push(pb::ListenerInfo {
            name: l.name.clone(),
            addr: bound.to_string(),
        });
        fds.push((l.name.clone(), l.listener.as_raw_fd()));
    }
    // Local children reach the master over a private Unix socket: no TLS
    // or client certificate to hand out, and no loopback TCP hop.
    let mut local = LocalSocket::bind().context("creating the local members' socket")?;
    let (supervisor, supervisor_task) = supervisor::start(
        supervisor::SupervisorConfig {
            agents,
            workers,
            agent_command: config.agent.command.clone(),
            worker_command: config.worker.command.clone(),
            policy: supervisor::slot::Policy {
                min_uptime: config.restart.min_uptime,
                backoff_initial: config.restart.backoff_initial,
                backoff_max: config.restart.backoff_max,
                max_restarts: config.restart.max_restarts,
                restart_window: config.restart.restart_window,
                start_timeout: config.restart.start_timeout,
            },
            drain_timeout: config.restart.drain_timeout,
            kill_timeout: config.restart.kill_timeout,
            start_timeout: config.restart.start_timeout,
            master_url: format!("unix://{}", local.path.display()),
            token: config.tokens.first().map(|t| t.expose().to_string()),
            listeners: fds,
        },
        registry.clone(),
        notice_rx,
    );
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::membership_server::MembershipServer<membership::MembershipService>>()
        .await;
    health
        .set_serving::<pb::control_server::ControlServer<control::ControlService>>()
        .await;
    // The whole service ("") is SERVING once the cluster is ready.
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let mut ready = registry.ready_watch();
    let notify_socket = config.notify_socket.clone();
    let health_stop = stop.clone();
    tasks.spawn(async move {
        let became_ready = tokio::select! {
            _ = health_stop.cancelled() => false,
            r = ready.wait_for(|r| *r) => r.is_ok(),
        };
        if became_ready {
            health
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            if let Some(socket) = notify_socket {
                notify_systemd(&socket);
            }
        }
    });

    let sweeper = registry.clone();
    let tick = (config.health.suspect_after / 10)
        .clamp(Duration::from_millis(10), Duration::from_millis(250));
    let sweep_stop = stop.clone();
    tasks.spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = sweep_stop.cancelled() => return,
                _ = interval.tick() => sweeper.sweep(std::time::Instant::now()),
            }
        }
    });

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cohort_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building reflection v1")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(cohort_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building reflection v1alpha")?;

    let max = cohort_proto::MAX_MESSAGE_BYTES;
    let auth = auth::Auth::new(&config.tokens);
    if auth.enabled() {
        tracing::info!(
            tokens = config.tokens.len(),
            "bearer-token authentication on for Join and Control"
        );
    }
    // One Membership service per socket: the one-time secrets of local
    // children count only on the private socket.
    let membership = |via| {
        let service = membership::MembershipService::new(
            registry.clone(),
            via,
            config.tls.client_ca.is_some(),
            tasks.clone(),
            stop.clone(),
        );
        let server = pb::membership_server::MembershipServer::new(service)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        tonic::service::interceptor::InterceptedService::new(server, auth.clone())
    };
    let local_membership = membership(registry::Via::LocalSocket);
    let membership = membership(registry::Via::Network);
    let control = pb::control_server::ControlServer::new(control::ControlService::new(
        registry.clone(),
        addr,
        (config.expect.agents, config.expect.workers),
        supervisor.clone(),
        listeners_info,
        tasks.clone(),
        stop.clone(),
    ))
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let control = tonic::service::interceptor::InterceptedService::new(control, auth);

    let signal_stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => signal_stop.cancel(),
            _ = signal_stop.cancelled() => {}
        }
    });
    let drain_registry = registry.clone();
    let server_stop = stop.clone();
    let drain_supervisor = supervisor.clone();
    let tls = server_tls(&config.tls)?;
    let streams_closed = CancellationToken::new();
    let local_server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(1024))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .add_service(health_service.clone())
        .add_service(local_membership)
        .add_service(control.clone())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(local.listener()?),
            streams_closed.clone().cancelled_owned(),
        );
    let local_served = tokio::spawn(local_server);
    let closed = streams_closed.clone();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).context("configuring TLS")?;
    }
    let server = builder
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(1024))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(membership)
        .add_service(control)
        .serve_with_incoming_shutdown(listen::incoming(listener, config.limits), async move {
            server_stop.cancelled().await;
            drain_supervisor.shutdown().await;
            tracing::info!("shutting down: closing member streams");
            drain_registry.close_all("the master is shutting down");
            closed.cancel();
        });
    tracing::info!(listen.addr = %addr, "master serving");
    let mut served = tokio::spawn(server);
    let early = tokio::select! {
        biased;
        _ = stop.cancelled() => None,
        r = &mut served => Some(r),
    };
    // The server ends by itself right after `stop` too; only an end
    // without `stop` is a failure.
    let ended_early = !stop.is_cancelled();
    stop.cancel();
    tasks.close();
    let grace = SHUTDOWN_GRACE + config.restart.kill_timeout * 2;
    let result = match early {
        Some(r) => Some(r),
        None => {
            // Once every member stream has been ended, clients get a short
            // while to read their final status; one that never reads must
            // not hold the master up for the whole grace.
            let closed = streams_closed.clone();
            let after_close = async move {
                closed.cancelled().await;
                tokio::time::sleep(CLOSE_GRACE).await;
            };
            tokio::select! {
                r = &mut served => Some(r),
                _ = tokio::time::sleep(grace) => None,
                _ = after_close => None,
            }
        }
    };
    supervisor.shutdown().await;
    if tokio::time::timeout(SHUTDOWN_GRACE, supervisor_task)
        .await
        .is_err()
    {
        tracing::warn!("the supervisor did not stop in time");
    }
    streams_closed.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, local_served)
        .await
        .is_err()
    {
        tracing::warn!("the local members' socket did not close in time");
    }
    drop(local);
    drop(shared);
    match result {
        Some(Ok(r)) => r.context("serving gRPC")?,
        Some(Err(join)) => return Err(join).context("the gRPC server task failed"),
        None => {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; stopping anyway")
        }
    }
    // The server may only end after `stop`: anything else is a failure the
    // supervisor (systemd, Kubernetes) must see.
    if ended_early {
        anyhow::bail!("the gRPC server stopped on its own");
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("background tasks still running after shutdown grace");
    }
    tracing::info!("master stopped");
    Ok(())
}
