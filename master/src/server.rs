//! The gRPC services, built in one place: health, reflection (v1 and
//! v1alpha), `Membership` (one per socket) and `Control`, each behind the
//! bearer-token interceptor where it must be, and the server settings both
//! sockets share.

use crate::admission::Admission;
use crate::auth::Auth;
use crate::config::Config;
use crate::registry::{Registry, Via};
use crate::supervisor::SupervisorHandle;
use crate::{control, membership};
use anyhow::Context;
use cohort_proto::pb;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;

/// HTTP/2 receive window of one member stream: what a sender held back by
/// flow control ([`crate::flow`]) can have in flight to the master.
const STREAM_WINDOW: u32 = 256 * 1024;
/// HTTP/2 receive window of one connection, well above one stream's, so
/// senders held back on a shared connection leave room for the others.
const CONNECTION_WINDOW: u32 = 16 * STREAM_WINDOW;

/// What the master serves on its two sockets.
pub struct Services {
    /// The gRPC address: everything.
    pub network: Routes,
    /// The private socket of local children: health, Membership, Control.
    pub local: Routes,
}

/// Everything the services are built from.
pub struct Parts<'a> {
    /// The registry.
    pub registry: &'a Arc<Registry>,
    /// How fast joins from the network are admitted.
    pub admission: &'a Arc<Admission>,
    /// The configuration.
    pub config: &'a Config,
    /// The bound gRPC address.
    pub addr: SocketAddr,
    /// The supervisor, for Scale/Restart/Drain.
    pub supervisor: SupervisorHandle,
    /// What `Control/Reload` calls.
    pub reloader: Arc<crate::reload::Reloader>,
    /// The shared listeners' real addresses.
    pub listeners: Vec<pb::ListenerInfo>,
    /// Where member readers and watchers are tracked.
    pub tasks: &'a TaskTracker,
    /// What `Control/Shutdown` cancels and every task stops on.
    pub stop: &'a CancellationToken,
    /// A master of several: what stands in front of Join and Control.
    pub gate: Option<crate::ha::Gate>,
    /// A master of several: its campaign, for `ClusterInfo`.
    pub election: Option<crate::ha::Election>,
}

impl Services {
    /// Builds every service.
    pub fn build(
        parts: Parts<'_>,
        health: tonic_health::pb::health_server::HealthServer<
            impl tonic_health::pb::health_server::Health,
        >,
    ) -> anyhow::Result<Services> {
        let Parts {
            registry,
            admission,
            config,
            addr,
            supervisor,
            listeners,
            tasks,
            stop,
            gate,
            election,
            reloader,
        } = parts;
        let max = cohort_proto::MAX_MESSAGE_BYTES;
        let auth = Auth::new(&config.tokens);
        let mtls = config.tls.client_ca.is_some();
        if auth.enabled() {
            tracing::info!(
                tokens = config.tokens.len(),
                "bearer-token authentication on for Join and Control"
            );
        }
        // One Membership service per socket: the one-time secrets of local
        // children count only on the private socket, and they are admitted
        // at once.
        let membership = |via| {
            let admission = (via == Via::Network).then(|| admission.clone());
            let service = membership::MembershipService::new(
                registry.clone(),
                via,
                admission,
                mtls,
                tasks.clone(),
                stop.clone(),
            );
            let server = cohort_proto::server::membership_server::MembershipServer::new(service)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max);
            let auth = auth
                .clone()
                .requiring_client_certificate(mtls && via == Via::Network);
            InterceptedService::new(server, auth)
        };
        let control = cohort_proto::server::control_server::ControlServer::new(
            control::ControlService::new(
                registry.clone(),
                addr,
                (config.expect.agents, config.expect.workers),
                supervisor,
                listeners,
                tasks.clone(),
                stop.clone(),
            )
            .with_election(election)
            .with_reloader(reloader),
        )
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
        let network_control = InterceptedService::new(
            control.clone(),
            auth.clone().requiring_client_certificate(mtls),
        );
        let control = InterceptedService::new(control, auth.clone());
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(cohort_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let network = Routes::new(health.clone())
            .add_service(reflection().build_v1().context("building reflection v1")?)
            .add_service(
                reflection()
                    .build_v1alpha()
                    .context("building reflection v1alpha")?,
            );
        let network = match gate {
            Some(gate) => network
                .add_service(gate.wrap(membership(Via::Network)))
                .add_service(gate.wrap(network_control)),
            None => network
                .add_service(membership(Via::Network))
                .add_service(network_control),
        };
        let local = Routes::new(health)
            .add_service(membership(Via::LocalSocket))
            .add_service(control);
        Ok(Services { network, local })
    }
}

/// A server with the settings both sockets share; TLS on the network one.
pub fn builder(
    tls: Option<tonic::transport::ServerTlsConfig>,
) -> anyhow::Result<tonic::transport::Server> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls).context("configuring TLS")?;
    }
    Ok(builder
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(1024))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW))
}

/// Reads the `[tls]` PEM files into tonic's server TLS settings. A TLS
/// handshake must finish within `handshake_timeout`: one that starts and
/// then stalls would otherwise hold its connection's place forever.
pub fn server_tls(
    cfg: &crate::config::TlsConfig,
    handshake_timeout: Duration,
) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) else {
        return Ok(None);
    };
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).with_context(|| format!("reading {}", p.display()))
    };
    let mut tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(cert)?, read(key)?))
        .timeout(handshake_timeout);
    if let Some(ca) = &cfg.client_ca {
        // A client without a certificate gets through the handshake and is
        // refused in words by crate::auth (health and reflection stay open).
        tls = tls
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(true);
        tracing::info!("mTLS on: clients need a certificate naming their member name");
    }
    Ok(Some(tls))
}
