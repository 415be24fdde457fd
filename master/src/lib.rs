//! The Cohort master: a gRPC server that registers members, checks their
//! health, routes their messages, and answers operators.
//!
//! - [`config`]: file, environment and flags (SPEC §6).
//! - [`registry`]: membership, health states, routing, the pre-ready hold.
//! - [`outbound`]: each member's bounded, batching outbound queue.
//! - [`membership`]: the `Membership/Join` stream.
//! - [`control`]: the `Control` API.
//! - [`json`]: JSON ⇄ `google.protobuf.Value` for `Control/Send`.
//!
//! [`run`] takes an already-bound listener and a shutdown future, so tests
//! pass port 0 and their own shutdown.

pub mod config;
pub mod control;
pub mod json;
pub mod membership;
pub mod outbound;
pub mod registry;

use anyhow::Context;
use cohort_proto::pb;
use config::Config;
use registry::{Registry, RegistryConfig};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Accepted connections with TCP_NODELAY set (tonic only sets it on
/// listeners it binds itself). A failed accept (a reset before accept, too
/// many open files) is logged and skipped instead of ending the server.
fn incoming(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).filter_map(|r| match r {
        Ok(s) => {
            if let Err(e) = s.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            Some(Ok(s))
        }
        Err(e) => {
            tracing::warn!(error = %e, "accept failed");
            None
        }
    })
}

/// How long shutdown waits for connections to close before it stops anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the master on `listener` until `shutdown` completes or an operator
/// calls `Control/Shutdown`, then ends every member stream and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("reading the bound address")?;
    let registry = Arc::new(Registry::new(RegistryConfig {
        health: config.health,
        messaging: config.messaging,
        expect: config.expect,
    }));
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
    let membership = pb::membership_server::MembershipServer::new(
        membership::MembershipService::new(registry.clone(), tasks.clone(), stop.clone()),
    )
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);
    let control = pb::control_server::ControlServer::new(control::ControlService::new(
        registry.clone(),
        addr,
        (config.expect.agents, config.expect.workers),
        tasks.clone(),
        stop.clone(),
    ))
    .max_decoding_message_size(max)
    .max_encoding_message_size(max);

    let signal_stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => signal_stop.cancel(),
            _ = signal_stop.cancelled() => {}
        }
    });
    let drain_registry = registry.clone();
    let server_stop = stop.clone();
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(1024))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(membership)
        .add_service(control)
        .serve_with_incoming_shutdown(incoming(listener), async move {
            server_stop.cancelled().await;
            tracing::info!("shutting down: closing member streams");
            drain_registry.close_all("the master is shutting down");
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
    let result = match early {
        Some(r) => Some(r),
        None => tokio::time::timeout(SHUTDOWN_GRACE, served).await.ok(),
    };
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
