//! Restarting the members of an app (`Control/Restart` with `app`), local
//! and remote. A local member is restarted by the supervisor (its
//! replacement ready before it goes). A remote one is asked to drain; its
//! own supervisor (systemd, Kubernetes) starts it again, and the roll waits
//! until a member of the same name is READY as a new instance, up to
//! `start_timeout`, before the next; one that does not come back stops the
//! roll, naming it.

use crate::model::{MemberSnapshot, MemberState};
use crate::registry::Registry;
use crate::supervisor::SupervisorHandle;
use std::time::Duration;
use tonic::Status;

/// How often a roll looks for the member it waits for.
const POLL: Duration = Duration::from_millis(50);

/// Restarts every member of `app`, one at a time when `rolling` (else
/// all at once, without waiting); returns how many.
pub(crate) async fn restart_app(
    registry: &Registry,
    supervisor: &SupervisorHandle,
    app: &str,
    rolling: bool,
) -> Result<usize, Status> {
    cohort_proto::check_app(app).map_err(Status::invalid_argument)?;
    let mut members: Vec<MemberSnapshot> = registry
        .list()
        .into_iter()
        .filter(|m| m.app == app)
        .collect();
    if members.is_empty() {
        return Err(Status::not_found(format!(
            "no member in app {app}: cohortctl ls shows each member's app"
        )));
    }
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let total = members.len();
    let limit = registry.join_timeout();
    for (done, m) in members.iter().enumerate() {
        if m.local {
            supervisor
                .restart(Some(m.name.clone()), None, rolling)
                .await?;
            continue;
        }
        registry.drain(&m.name)?;
        if !rolling {
            continue;
        }
        let back = tokio::time::timeout(limit, async {
            loop {
                let again = registry.list().into_iter().any(|n| {
                    n.name == m.name
                        && n.instance_id != m.instance_id
                        && n.state == MemberState::Ready
                });
                if again {
                    return;
                }
                tokio::time::sleep(POLL).await;
            }
        })
        .await;
        if back.is_err() {
            return Err(Status::deadline_exceeded(format!(
                "rolling restart of app {app} stopped at {}: it was not READY again within {} ms of its drain \
                 (a remote member is started again by its own supervisor, systemd or Kubernetes); {done} of {total} restarted",
                m.name,
                limit.as_millis()
            )));
        }
        tracing::info!(member.name = %m.name, app, "restarted (remote, drained and back)");
    }
    Ok(total)
}
