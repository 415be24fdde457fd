//! Several masters, one leader, elected through etcd (SPEC §9b).
//!
//! - [`election`]: the campaign (lease, key, who leads, guarded writes).
//! - [`fence`]: until when this master may act as leader.
//! - [`gate`]: what a standby (or a leader past its fence) answers.
//!
//! A master of several serves its gRPC address all the time, in phases: as
//! a standby (health says `NOT_SERVING` for `cohort.v1.Membership` and
//! `""`, `liveness` stays `SERVING`; Join and Control are refused with the
//! leader's address), then, once elected, as the leader: a fresh registry
//! that members rebuild by joining again. When its fence comes down it
//! stops routing at once, closes its member streams and stands by again.

mod election;
mod fence;
mod gate;

pub(crate) use election::Election;
pub(crate) use fence::Fence;
pub(crate) use gate::Gate;

use crate::config::{Config, HaConfig};
use anyhow::Context;
use std::future::Future;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// This master's part in one phase.
pub(crate) struct Phase {
    /// The campaign.
    pub election: Election,
    /// `Some` while leading: its term, fence and the ready mark.
    pub leading: Option<crate::registry::Leadership>,
}

/// Runs a master of several until `shutdown`: standby and leader phases on
/// the same socket, as the election goes.
pub(crate) async fn run(
    listener: TcpListener,
    config: Config,
    ha: HaConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
    metrics: Option<std::net::TcpListener>,
) -> anyhow::Result<()> {
    let addr = listener.local_addr().context("reading the bound address")?;
    let socket = listener.into_std().context("keeping the gRPC socket")?;
    let all = CancellationToken::new();
    tokio::spawn(crate::cancel_on(shutdown, all.clone()));
    let campaign = CancellationToken::new();
    let (election, campaigning) =
        Election::start(ha.clone(), ha.advertised(addr), campaign.clone());
    tracing::info!(etcd = ?ha.etcd, prefix = %ha.prefix, advertise = %election.advertised(), "campaigning through etcd");
    let result = loop {
        let leading = match election.view() {
            view if view.leading && election.fence().holds() => {
                let was_ready = match election.was_ready().await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "cannot read the ready mark in etcd: leading with the ready barrier closed"
                        );
                        false
                    }
                };
                Some(crate::registry::Leadership {
                    term: view.term,
                    fence: election.fence().clone(),
                    was_ready,
                })
            }
            _ => None,
        };
        let phase_end = CancellationToken::new();
        tokio::spawn(end_phase(
            election.clone(),
            leading.as_ref().map(|l| l.term),
            phase_end.clone(),
        ));
        let ends = {
            let (all, phase_end) = (all.clone(), phase_end.clone());
            async move {
                tokio::select! {
                    _ = all.cancelled() => {}
                    _ = phase_end.cancelled() => {}
                }
            }
        };
        let listener = socket
            .try_clone()
            .and_then(TcpListener::from_std)
            .context("sharing the gRPC socket with the next phase")?;
        let phase = Phase {
            election: election.clone(),
            leading,
        };
        let served = crate::serve(
            listener,
            Vec::new(),
            config.clone(),
            ends,
            metrics.as_ref(),
            Some(phase),
        )
        .await;
        // A phase ends on a change of role; anything else (shutdown,
        // Control/Shutdown, a failure) ends the master.
        if all.is_cancelled() || !phase_end.is_cancelled() || served.is_err() {
            phase_end.cancel();
            break served;
        }
    };
    crate::readiness::stopping();
    election.forget_ready_if_last().await;
    // Gives the lease back, so a standby takes over at once.
    campaign.cancel();
    let _ = tokio::time::timeout(ha.lease_ttl, campaigning).await;
    result
}

/// Cancels `end` when this phase's role no longer holds: a standby once it
/// is elected, a leader once it is not (or its fence comes down).
async fn end_phase(election: Election, term: Option<u64>, end: CancellationToken) {
    let mut watch = election.watch();
    loop {
        let now = watch.borrow_and_update().clone();
        let still = match term {
            None => !(now.leading && election.fence().holds()),
            Some(t) => now.leading && now.term == t && election.fence().holds(),
        };
        if !still {
            if term.is_some() {
                tracing::warn!(leader = ?now.leader, "no longer the leader: closing member streams and standing by");
            }
            end.cancel();
            return;
        }
        let deadline = election.fence().deadline();
        tokio::select! {
            _ = end.cancelled() => return,
            changed = watch.changed() => if changed.is_err() { end.cancel(); return },
            _ = sleep_until(deadline), if term.is_some() => {}
        }
    }
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
