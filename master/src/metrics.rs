//! Prometheus metrics on their own HTTP listener (`[metrics] listen`,
//! `GET /metrics`), with the prometheus-client crate and the usual names:
//! `cohort_…_total` counters, base units (`_bytes`, `_seconds`, `_ratio`).
//!
//! Counters the registry bumps live in its `RoutingMetrics`; everything
//! that is a state (members by role and state, each member's CPU, memory,
//! queue, drops, a local slot's restarts) is read at scrape time by
//! [`ClusterCollector`], so nothing is kept twice.

use crate::admission::Admission;
use crate::listen::Refusals;
use crate::model::{MemberSnapshot, MemberState};
use crate::registry::{Registry, RoutingMetrics};
use crate::supervisor::SupervisorHandle;
use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Connections to the metrics listener at once; more are closed at accept.
/// Scrapers are few (a Prometheus or two, a person with curl), and the
/// port usually has no token: anyone who reaches it must not be able to
/// spend the master's file descriptors.
const MAX_CONNECTIONS: usize = 64;
/// A connection that has not sent a whole request's headers this long
/// after it opened, or after its last answer, is closed.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the cluster at scrape time.
pub struct ClusterCollector {
    registry: Arc<Registry>,
    supervisor: SupervisorHandle,
    /// Series per member too (`[metrics] per_member`).
    per_member: bool,
    election: Option<crate::ha::Election>,
}

impl std::fmt::Debug for ClusterCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterCollector")
    }
}

fn state_name(s: MemberState) -> &'static str {
    match s {
        MemberState::Starting => "starting",
        MemberState::Joined => "joined",
        MemberState::Ready => "ready",
        MemberState::Suspect => "suspect",
        MemberState::Draining => "draining",
        MemberState::Gone => "gone",
        MemberState::Backoff => "backoff",
        MemberState::Failed => "failed",
    }
}

/// One family: `name` with `help`, a series per item.
fn family<T, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    items: &[T],
    series: impl Fn(&T) -> (Vec<(&'static str, String)>, M),
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for item in items {
        let (labels, value) = series(item);
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for ClusterCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let summary = self.registry.summary();
        family(
            &mut encoder,
            "cohort_members",
            "Members by role and state.",
            MetricType::Gauge,
            &summary.counts,
            |(role, state, n)| {
                let labels = vec![
                    ("role", role.to_string()),
                    ("state", state_name(*state).into()),
                ];
                (labels, ConstGauge::new(i64::from(*n)))
            },
        )?;
        // A standby's registry is empty: the cluster's readiness is the
        // leader's to report.
        let standby = self
            .election
            .as_ref()
            .is_some_and(|e| !(e.view().leading && e.fence().holds()));
        if !standby {
            let ready = [i64::from(summary.cluster_ready)];
            family(
                &mut encoder,
                "cohort_cluster_ready",
                "1 once every expected member was ready.",
                MetricType::Gauge,
                &ready,
                |v| (Vec::new(), ConstGauge::new(*v)),
            )?;
        }
        if let Some(election) = &self.election {
            let view = election.view();
            let leading = [i64::from(view.leading && election.fence().holds())];
            family(
                &mut encoder,
                "cohort_leader",
                "1 on the master that leads ([ha]), 0 on a standby.",
                MetricType::Gauge,
                &leading,
                |v| (Vec::new(), ConstGauge::new(*v)),
            )?;
            let term = [i64::try_from(view.term).unwrap_or(i64::MAX)];
            family(
                &mut encoder,
                "cohort_term",
                "The leader's term as this master knows it (0 while none is known).",
                MetricType::Gauge,
                &term,
                |v| (Vec::new(), ConstGauge::new(*v)),
            )?;
            let failures = [election.renewal_failures()];
            family(
                &mut encoder,
                "cohort_lease_renewal_failures",
                "Lease keep-alives etcd did not acknowledge in time.",
                MetricType::Counter,
                &failures,
                |v| (Vec::new(), ConstCounter::new(*v)),
            )?;
        }
        let version = [env!("CARGO_PKG_VERSION")];
        family(
            &mut encoder,
            "cohort_build_info",
            "The master's version.",
            MetricType::Gauge,
            &version,
            |v| (vec![("version", v.to_string())], ConstGauge::new(1)),
        )?;
        if !self.per_member {
            return Ok(());
        }
        let members = self.registry.list();
        let who =
            |m: &MemberSnapshot| vec![("member", m.name.clone()), ("role", m.role.to_string())];
        family(
            &mut encoder,
            "cohort_member_cpu_ratio",
            "A member's CPU use from its last heartbeat (1 = one core).",
            MetricType::Gauge,
            &members,
            |m| (who(m), ConstGauge::new(f64::from(m.cpu_percent) / 100.0)),
        )?;
        family(
            &mut encoder,
            "cohort_member_resident_memory_bytes",
            "A member's resident memory from its last heartbeat.",
            MetricType::Gauge,
            &members,
            |m| {
                (
                    who(m),
                    ConstGauge::new(i64::try_from(m.rss_bytes).unwrap_or(i64::MAX)),
                )
            },
        )?;
        family(
            &mut encoder,
            "cohort_member_heartbeat_rtt_seconds",
            "A member's last heartbeat round trip, as it measured it.",
            MetricType::Gauge,
            &members,
            |m| {
                let rtt = m.heartbeat_rtt.unwrap_or_default().as_secs_f64();
                (who(m), ConstGauge::new(rtt))
            },
        )?;
        family(
            &mut encoder,
            "cohort_member_queue_frames",
            "Frames waiting in the master's queue towards a member.",
            MetricType::Gauge,
            &members,
            |m| {
                (
                    who(m),
                    ConstGauge::new(i64::try_from(m.queued).unwrap_or(i64::MAX)),
                )
            },
        )?;
        family(
            &mut encoder,
            "cohort_member_frames_sent",
            "Frames a member's stream has taken from the master's queue.",
            MetricType::Counter,
            &members,
            |m| (who(m), ConstCounter::new(m.frames_sent)),
        )?;
        family(
            &mut encoder,
            "cohort_member_messages_dropped",
            "Messages dropped for a member (full queue, it left).",
            MetricType::Counter,
            &members,
            |m| (who(m), ConstCounter::new(m.dropped_messages)),
        )?;
        let slots = self.supervisor.views();
        family(
            &mut encoder,
            "cohort_member_restarts",
            "Restarts of a local member's slot after deaths.",
            MetricType::Counter,
            &slots,
            |v| {
                let labels = vec![("member", v.name.clone()), ("role", v.role.to_string())];
                (labels, ConstCounter::new(u64::from(v.restarts)))
            },
        )?;
        Ok(())
    }
}

/// The metrics registry: routing counters plus the scrape-time collector.
pub fn registry(
    routing: &RoutingMetrics,
    admission: &Admission,
    refusals: &Refusals,
    cluster: Arc<Registry>,
    supervisor: SupervisorHandle,
    per_member: bool,
    election: Option<crate::ha::Election>,
) -> prometheus_client::registry::Registry {
    let mut r = prometheus_client::registry::Registry::default();
    r.register(
        "cohort_messages_routed",
        "Deliveries the master queued for members (a broadcast to N counts N).",
        routing.messages_routed.clone(),
    );
    r.register(
        "cohort_request_duration_seconds",
        "Request to reply through the master.",
        routing.request_seconds.clone(),
    );
    r.register(
        "cohort_heartbeat_rtt_seconds",
        "A heartbeat to its ack and back, as the members measured it.",
        routing.heartbeat_rtt_seconds.clone(),
    );
    r.register(
        "cohort_joins_waiting",
        "Joins waiting for their turn under [limits] join_rate.",
        admission.waiting.clone(),
    );
    r.register(
        "cohort_joins_refused",
        "Joins refused because their turn was more than 10 s away.",
        admission.refused.clone(),
    );
    r.register(
        "cohort_connections_refused",
        "Connections refused because [limits] max_connections were open.",
        refusals.count.clone(),
    );
    r.register(
        "cohort_joins_refused_full",
        "Joins refused because the cluster had [limits] max_members members.",
        routing.joins_refused_full.clone(),
    );
    r.register_collector(Box::new(ClusterCollector {
        registry: cluster,
        supervisor,
        per_member,
        election,
    }));
    r
}

/// Serves `GET /metrics` on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<prometheus_client::registry::Registry>,
    stop: CancellationToken,
) {
    let places = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    // Out of file descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            tracing::debug!(
                max = MAX_CONNECTIONS,
                "metrics listener: too many connections, closing a new one"
            );
            continue;
        };
        let metrics = metrics.clone();
        let service =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&req, &metrics)) }
            });
        tokio::spawn(async move {
            let _place = place;
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(io, service)
                .await;
        });
    }
}

fn answer<B>(
    req: &hyper::Request<B>,
    metrics: &prometheus_client::registry::Registry,
) -> hyper::Response<Full<Bytes>> {
    let reply = |code: u16, kind: &str, body: String| {
        let mut r = hyper::Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap_or_default();
        if let Ok(v) = kind.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    if req.method() != hyper::Method::GET || req.uri().path() != "/metrics" {
        return reply(
            404,
            "text/plain",
            "not found: metrics are at GET /metrics\n".into(),
        );
    }
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, metrics) {
        Ok(()) => reply(
            200,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            text,
        ),
        Err(e) => reply(
            500,
            "text/plain",
            format!("encoding the metrics failed: {e}\n"),
        ),
    }
}
