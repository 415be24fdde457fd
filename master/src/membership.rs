//! `cohort.v1.Membership/Join`: one bidirectional stream per member. The
//! handler waits for `hello`, registers the member, and hands each later
//! frame to the registry from one reader task, which keeps that member's
//! sends in order.

use crate::admission::Admission;
use crate::flow::{self, Stall};
use crate::outbound::OutboundStream;
use crate::registry::{InstanceId, Registry, Via, check_hello};
use cohort_proto::pb::{self, member_frame::Kind as In};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// How long a new stream may take to send its `hello`.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The Membership service.
pub struct MembershipService {
    registry: Arc<Registry>,
    via: Via,
    admission: Option<Arc<Admission>>,
    mtls: bool,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl MembershipService {
    /// A service over `registry` for members coming in `via` one socket,
    /// admitted by `admission` (if any); reader tasks are tracked by
    /// `tasks`. From `shutdown` on, joins are refused; the readers end when
    /// the registry removes their members (`Registry::close_all`).
    pub fn new(
        registry: Arc<Registry>,
        via: Via,
        admission: Option<Arc<Admission>>,
        mtls: bool,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        MembershipService {
            registry,
            via,
            admission,
            mtls,
            tasks,
            shutdown,
        }
    }
}

fn frame_name(kind: &In) -> &'static str {
    match kind {
        In::Hello(_) => "hello",
        In::Heartbeat(_) => "heartbeat",
        In::Logs(_) => "logs",
        In::Ready(_) => "ready",
        In::Send(_) => "send",
        In::Request(_) => "request",
        In::Reply(_) => "reply",
        In::Leaving(_) => "leaving",
        In::SendBatch(_) => "send_batch",
    }
}

#[tonic::async_trait]
impl cohort_proto::server::membership_server::Membership for MembershipService {
    type JoinStream = OutboundStream;

    async fn join(
        &self,
        request: Request<Streaming<pb::MemberFrame>>,
    ) -> Result<Response<Self::JoinStream>, Status> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        // Over mTLS the client's certificate decides which name it may use
        // (crate::auth has refused a client without one; none fits no
        // name); the master's own children come over its private Unix
        // socket (no certificate) and prove themselves with their one-time
        // secret.
        let certs = (self.mtls && self.via == Via::Network)
            .then(|| request.peer_certs().unwrap_or_default());
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("no hello within 10 s: send hello as the first frame")
            })??;
        let hello = match first.and_then(|f| f.kind) {
            Some(In::Hello(h)) => h,
            Some(other) => {
                return Err(Status::failed_precondition(format!(
                    "the first frame of a Join stream must be hello, not {}",
                    frame_name(&other)
                )));
            }
            None => {
                return Err(Status::failed_precondition(
                    "the stream ended or sent an empty frame before hello",
                ));
            }
        };
        if let Some(certs) = certs {
            check_certificate(&certs, &hello.name)?;
        }
        if let Some(admission) = &self.admission {
            // What waits is checked first, so it is small.
            check_hello(&hello)?;
            tokio::select! {
                admitted = admission.admit() => admitted?,
                _ = self.shutdown.cancelled() => {
                    return Err(Status::unavailable("the master is shutting down"));
                }
            }
        }
        // Nothing new joins a master on its way out (those already in are
        // read until the end: draining members may still need the others).
        if self.shutdown.is_cancelled() {
            return Err(Status::unavailable("the master is shutting down"));
        }
        let joined = self
            .registry
            .register(hello, self.via, Instant::now().into_std())?;
        let span = tracing::info_span!("member", member.name = %joined.name, peer.addr = %peer);
        let registry = self.registry.clone();
        let (instance, cancel, own) = (joined.instance_id, joined.cancel, joined.outbound);
        let heartbeat = self.registry.heartbeat_interval();
        self.tasks.spawn(
            async move {
                // Made once, not per frame: 10,000 members' heartbeats are
                // most of an idle master's work. At shutdown the member is
                // read on while the master drains its local members (they
                // may need it to finish) and removed after, with the rest.
                let removed = cancel.cancelled();
                tokio::pin!(removed);
                loop {
                    let msg = tokio::select! {
                        biased;
                        _ = &mut removed => break,
                        msg = inbound.message() => msg,
                    };
                    let now = Instant::now().into_std();
                    match msg {
                        Ok(Some(pb::MemberFrame { kind: Some(kind) })) => {
                            let stall = match registry.on_frame(&instance, kind, now) {
                                Ok(stall) => stall,
                                Err(e) => {
                                    tracing::warn!(error = %e, "closing member stream");
                                    registry.disconnect(&instance, e.into());
                                    break;
                                }
                            };
                            if let Some(stall) = stall
                                && !wait_out(&registry, &instance, stall, heartbeat, &cancel).await
                            {
                                break;
                            }
                            if own.control_over() {
                                registry.hold_back(&instance, true, Instant::now().into_std());
                                let vouch = || registry.vouch(&instance);
                                let caught_up =
                                    flow::pause_for_own_room(&own, vouch, heartbeat, &cancel).await;
                                if !caught_up {
                                    break;
                                }
                                registry.hold_back(&instance, false, Instant::now().into_std());
                            }
                        }
                        Ok(Some(_)) => {} // an empty frame carries nothing
                        Ok(None) => {
                            registry.disconnect(&instance, Status::unavailable("stream closed"));
                            break;
                        }
                        Err(status) => {
                            tracing::warn!(error = %status.message(), "member stream failed");
                            let reason = format!("stream failed: {}", status.message());
                            registry.disconnect(&instance, Status::new(status.code(), reason));
                            break;
                        }
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::new(joined.stream))
    }
}

/// Waits out a stall ([`crate::flow`]): delivers what waits for room, tells
/// the sender how it went, and routes the rest of its batch. Returns false
/// if the reader must stop (`stop`: the member was removed; at shutdown
/// every member is).
async fn wait_out(
    registry: &Registry,
    instance: &InstanceId,
    mut stall: Stall,
    heartbeat: Duration,
    stop: &CancellationToken,
) -> bool {
    registry.hold_back(instance, true, Instant::now().into_std());
    loop {
        let waits = std::mem::take(&mut stall.waits);
        let Some(outcome) =
            flow::wait_for_room(waits, || registry.vouch(instance), heartbeat, stop).await
        else {
            return false;
        };
        let now = Instant::now().into_std();
        let rest = std::mem::take(&mut stall.rest);
        match registry.settle(instance, stall.then, outcome, rest, now) {
            Some(next) => stall = next,
            None => break,
        }
    }
    registry.hold_back(instance, false, Instant::now().into_std());
    true
}

/// Whether the client certificate is valid for member `name` (one of its
/// DNS subject alternative names).
fn check_certificate(
    certs: &[rustls_pki_types::CertificateDer<'static>],
    name: &str,
) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(
            "with mTLS a member must name itself (hello.name / COHORT_NAME): the name must match its certificate",
        ));
    }
    let valid = certs.first().is_some_and(|leaf| {
        let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
            return false;
        };
        let Ok(dns) = rustls_pki_types::DnsName::try_from(name.to_string()) else {
            return false;
        };
        cert.verify_is_valid_for_subject_name(&rustls_pki_types::ServerName::DnsName(dns))
            .is_ok()
    });
    if valid {
        Ok(())
    } else {
        Err(Status::permission_denied(format!(
            "the client certificate is not for member {name}: its DNS subject alternative names must include {name}"
        )))
    }
}
