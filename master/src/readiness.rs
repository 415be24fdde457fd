//! Telling the world the cluster is ready: gRPC health `""` turns SERVING
//! and systemd gets `READY=1` at ClusterReady (the per-service statuses are
//! SERVING as soon as the master serves).

use crate::{control, membership};
use cohort_proto::pb;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Waits for ClusterReady and reports it.
pub struct Readiness {
    reporter: tonic_health::server::HealthReporter,
    ready: watch::Receiver<bool>,
    notify_socket: Option<String>,
}

impl Readiness {
    /// Sets the initial statuses: the services SERVING, the whole server not.
    pub async fn new(
        reporter: tonic_health::server::HealthReporter,
        ready: watch::Receiver<bool>,
        notify_socket: Option<String>,
    ) -> Readiness {
        reporter
            .set_serving::<pb::membership_server::MembershipServer<membership::MembershipService>>()
            .await;
        reporter
            .set_serving::<pb::control_server::ControlServer<control::ControlService>>()
            .await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        Readiness {
            reporter,
            ready,
            notify_socket,
        }
    }

    /// Reports ClusterReady when it comes, unless `stop` comes first.
    pub async fn run(mut self, stop: CancellationToken) {
        let became_ready = tokio::select! {
            _ = stop.cancelled() => false,
            r = self.ready.wait_for(|r| *r) => r.is_ok(),
        };
        if became_ready {
            self.reporter
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            if let Some(socket) = &self.notify_socket {
                notify_systemd(socket);
            }
        }
    }
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
