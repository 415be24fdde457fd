//! Telling the world how the master is: gRPC health and systemd.
//!
//! - The per-service statuses (`cohort.v1.Membership`, `cohort.v1.Control`)
//!   are SERVING as soon as the master serves: that is what a readiness or
//!   liveness probe asks. The whole-server status `""` turns SERVING at
//!   ClusterReady, for whoever waits for the cluster.
//! - systemd (`Type=notify`) gets `READY=1` as soon as the master serves,
//!   whether or not any member has joined yet, so `systemctl start` returns
//!   and a restarted master is up at once; progress goes in `STATUS=`.
//!   With `WatchdogSec=`, `WATCHDOG=1` follows at half the interval from the
//!   same thread that routes (a master stuck under its lock stops pinging);
//!   `STOPPING=1` at shutdown.

use crate::registry::Registry;
use crate::{control, membership};
use sd_notify::NotifyState;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Reports the master's state to health checkers and systemd.
pub struct Readiness {
    reporter: tonic_health::server::HealthReporter,
    registry: Arc<Registry>,
    /// With several masters ([ha]), whether this phase leads.
    phase: Option<bool>,
}

/// The health name a liveness probe asks: `SERVING` whenever the process
/// serves, standby or not (a standby is healthy; restarting it helps
/// nobody).
pub const LIVENESS: &str = "liveness";
const MEMBERSHIP: &str = "cohort.v1.Membership";

impl Readiness {
    /// Sets the initial statuses: the services SERVING, the whole server not
    /// until ClusterReady; tells systemd the master serves. `phase`: with
    /// several masters, whether this one leads (`Some(false)`: a standby,
    /// Membership NOT_SERVING).
    pub async fn new(
        reporter: tonic_health::server::HealthReporter,
        registry: Arc<Registry>,
        phase: Option<bool>,
    ) -> Readiness {
        let standby = phase == Some(false);
        reporter
            .set_service_status(LIVENESS, tonic_health::ServingStatus::Serving)
            .await;
        if standby {
            reporter
                .set_service_status(MEMBERSHIP, tonic_health::ServingStatus::NotServing)
                .await;
            reporter
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            systemd(&[
                NotifyState::Ready,
                NotifyState::Status("standby: another master leads"),
            ]);
            return Readiness {
                reporter,
                registry,
                phase,
            };
        }
        reporter
            .set_serving::<cohort_proto::server::membership_server::MembershipServer<membership::MembershipService>>()
            .await;
        reporter
            .set_serving::<cohort_proto::server::control_server::ControlServer<control::ControlService>>()
            .await;
        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let summary = registry.summary();
        let status = match summary.cluster_ready {
            true => "serving; cluster ready".to_string(),
            false => format!("serving; waiting for {}", registry.expected()),
        };
        systemd(&[NotifyState::Ready, NotifyState::Status(&status)]);
        Readiness {
            reporter,
            registry,
            phase,
        }
    }

    /// Reports ClusterReady when it comes and pings systemd's watchdog when
    /// it asks for it, until `stop`; then tells systemd the master stops.
    pub async fn run(self, stop: CancellationToken) {
        let mut ready = self.registry.ready_watch();
        let mut usec = 0;
        let watchdog = sd_notify::watchdog_enabled(false, &mut usec)
            .then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(10)));
        let mut ping = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
        // A standby's (empty) registry is never the cluster's readiness.
        let mut announced = self.phase == Some(false);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                ok = async { ready.wait_for(|r| *r).await.is_ok() }, if !announced => {
                    announced = true;
                    if !ok {
                        continue;
                    }
                    self.reporter
                        .set_service_status("", tonic_health::ServingStatus::Serving)
                        .await;
                    let status = format!("serving; cluster ready: {} members", self.registry.member_count());
                    systemd(&[NotifyState::Status(&status)]);
                }
                _ = ping.tick(), if watchdog.is_some() => {
                    // Takes the registry's lock: a master wedged under it
                    // misses its pings and systemd restarts it.
                    let _ = self.registry.member_count();
                    systemd(&[NotifyState::Watchdog]);
                }
            }
        }
        // A phase of a master of several ends without the process ending:
        // systemd hears STOPPING=1 only when the master stops (ha::run).
        if self.phase.is_none() {
            stopping();
        }
    }
}

/// Tells systemd the master is stopping.
pub fn stopping() {
    systemd(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining local members, closing member streams"),
    ]);
}

/// Sends `states` to systemd if it asked for them (`NOTIFY_SOCKET`).
fn systemd(states: &[NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
