//! Campaigning through etcd (its election recipe, by hand only as far as
//! the recipe goes): each master puts `PREFIX/masters/<lease>` = its
//! advertised address under a lease it keeps alive; the key with the lowest
//! create revision leads, and that revision is the leader's term (it only
//! grows). Every write the leader makes is a transaction guarded by its own
//! key's create revision, so a master that lost its lease writes nothing.

use super::fence::Fence;
use crate::config::HaConfig;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, SortOrder, SortTarget, Txn, TxnOp,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What this master knows of the election.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct View {
    /// The leader's advertised address, when one is known.
    pub leader: Option<String>,
    /// The leader's term (0 while none is known).
    pub term: u64,
    /// Whether this master leads (and its fence holds).
    pub leading: bool,
    /// Every master campaigning, leader first.
    pub masters: Vec<String>,
    /// The last read of etcd succeeded: what this master knows is fresh.
    pub connected: bool,
}

/// The campaign of one master: what it knows, its fence, and its guarded
/// writes. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Election {
    view: watch::Receiver<View>,
    fence: Fence,
    seat: Arc<Mutex<Option<Seat>>>,
    cfg: Arc<HaConfig>,
    advertised: Arc<str>,
    renewal_failures: Arc<AtomicU64>,
}

/// This master's key in the current session.
#[derive(Clone)]
struct Seat {
    client: Client,
    key: String,
    term: u64,
    lease: i64,
}

impl Election {
    /// Starts campaigning as `advertised` until `stop`; the task ends once
    /// the lease is given back.
    pub(crate) fn start(
        cfg: HaConfig,
        advertised: String,
        stop: CancellationToken,
    ) -> (Election, tokio::task::JoinHandle<()>) {
        let (tx, view) = watch::channel(View::default());
        let election = Election {
            view,
            fence: Fence::new(),
            seat: Arc::new(Mutex::new(None)),
            cfg: Arc::new(cfg),
            advertised: advertised.into(),
            renewal_failures: Arc::new(AtomicU64::new(0)),
        };
        let task = tokio::spawn(election.clone().campaign(tx, stop));
        (election, task)
    }

    /// What this master knows now.
    pub(crate) fn view(&self) -> View {
        self.view.borrow().clone()
    }

    /// Changes to [`Election::view`].
    pub(crate) fn watch(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// The fence of this master's leadership.
    pub(crate) fn fence(&self) -> &Fence {
        &self.fence
    }

    /// This master's own advertised address.
    pub(crate) fn advertised(&self) -> &str {
        &self.advertised
    }

    /// The lease's time to live.
    pub(crate) fn lease_ttl(&self) -> Duration {
        self.cfg.lease_ttl
    }

    /// Keep-alives etcd did not acknowledge in time, since start.
    pub(crate) fn renewal_failures(&self) -> u64 {
        self.renewal_failures.load(Ordering::Relaxed)
    }

    fn ready_key(&self) -> String {
        format!("{}/ready", self.cfg.prefix)
    }

    /// Whether a leader of this cluster has announced ClusterReady before.
    pub(crate) async fn was_ready(&self) -> anyhow::Result<bool> {
        let Some(mut seat) = self.seat() else {
            anyhow::bail!("not connected to etcd");
        };
        let timeout = self.cfg.lease_ttl / 2;
        let got = tokio::time::timeout(timeout, seat.client.get(self.ready_key(), None)).await??;
        Ok(!got.kvs().is_empty())
    }

    /// Records that the cluster has been ready, as the leader of `term`:
    /// written only while this master's key still has that term.
    pub(crate) async fn mark_ready(&self, term: u64) -> anyhow::Result<()> {
        let Some(mut seat) = self.seat().filter(|s| s.term == term) else {
            anyhow::bail!("no longer the leader of term {term}");
        };
        let txn = Txn::new().when([guard(&seat)]).and_then([TxnOp::put(
            self.ready_key(),
            term.to_string(),
            None,
        )]);
        let timeout = self.cfg.lease_ttl / 2;
        let done = tokio::time::timeout(timeout, seat.client.txn(txn)).await??;
        anyhow::ensure!(done.succeeded(), "the leader key of term {term} is gone");
        Ok(())
    }

    /// Forgets the ready mark when this master is the last one campaigning
    /// and leads: a cluster stopped whole runs its start-up barrier again.
    pub(crate) async fn forget_ready_if_last(&self) {
        let view = self.view();
        let Some(mut seat) = self.seat() else { return };
        if !(view.leading && view.masters.len() == 1 && self.fence.holds()) {
            return;
        }
        let txn = Txn::new()
            .when([guard(&seat)])
            .and_then([TxnOp::delete(self.ready_key(), None)]);
        let timeout = self.cfg.lease_ttl / 2;
        if let Ok(Ok(_)) = tokio::time::timeout(timeout, seat.client.txn(txn)).await {
            tracing::info!("the last master stopped: the next start runs the ready barrier again");
        }
    }

    fn seat(&self) -> Option<Seat> {
        self.seat.lock().ok().and_then(|s| s.clone())
    }

    /// Campaigns, session after session (a new lease each), until `stop`;
    /// then gives up its lease, so a standby takes over at once.
    async fn campaign(self, tx: watch::Sender<View>, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            let ended = tokio::select! {
                _ = stop.cancelled() => Ok(()),
                r = self.session(&tx) => r,
            };
            self.fence.lower();
            // What it knew of the election came from the lease it lost.
            let me = self.advertised.to_string();
            tx.send_modify(|v| {
                v.leading = false;
                v.connected = false;
                if v.leader.as_ref() == Some(&me) {
                    v.leader = None;
                }
            });
            if let Some(mut seat) = self.seat.lock().ok().and_then(|mut s| s.take()) {
                // Best effort: an unreachable etcd lets the lease expire.
                let revoke = seat.client.lease_revoke(seat.lease);
                let _ = tokio::time::timeout(self.cfg.lease_ttl / 2, revoke).await;
            }
            if stop.is_cancelled() {
                return;
            }
            if let Err(e) = ended {
                failures += 1;
                tracing::warn!(error = format!("{e:#}"), etcd = ?self.cfg.etcd, "campaign interrupted; campaigning again");
            }
            let pause = self.cfg.lease_ttl / 4 * failures.clamp(1, 8);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One lease: connect, put this master's key, then every quarter TTL
    /// renew the lease and read who leads. Ends with an error when the
    /// lease is lost.
    async fn session(&self, tx: &watch::Sender<View>) -> anyhow::Result<()> {
        let ttl = self.cfg.lease_ttl;
        let call = ttl / 2;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(call)
            .with_timeout(call)
            .with_keep_alive(ttl / 4, call);
        if let Some((user, file)) = &self.cfg.user {
            // Read at every connect: a rotated password is picked up.
            let text = std::fs::read_to_string(file).map_err(|e| {
                anyhow::anyhow!("reading the etcd password file {}: {e}", file.display())
            })?;
            let password = text.lines().next().unwrap_or_default().trim().to_string();
            options = options.with_user(user.clone(), password);
        }
        if let Some(tls) = &self.cfg.tls {
            options = options.with_tls(etcd_tls(tls)?);
        }
        let mut client = tokio::time::timeout(ttl, Client::connect(&self.cfg.etcd, Some(options)))
            .await
            .map_err(|_| anyhow::anyhow!("no etcd endpoint answered within {ttl:?}"))??;
        let granted_at = Instant::now();
        let lease = client
            .lease_grant(i64::try_from(ttl.as_secs()).unwrap_or(60), None)
            .await?
            .id();
        let key = format!("{}/masters/{lease:016x}", self.cfg.prefix);
        let put = client
            .put(
                key.clone(),
                self.advertised.as_bytes(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await?;
        let term = put
            .header()
            .and_then(|h| u64::try_from(h.revision()).ok())
            .ok_or_else(|| anyhow::anyhow!("etcd's put answer has no revision"))?;
        tracing::info!(key, term, "campaigning for leader");
        if let Ok(mut seat) = self.seat.lock() {
            *seat = Some(Seat {
                client: client.clone(),
                key: key.clone(),
                term,
                lease,
            });
        }
        let margin = ttl / 4;
        let mut valid_until = granted_at + ttl - margin;
        let mut keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
        let masters_prefix = format!("{}/masters/", self.cfg.prefix);
        loop {
            let sent = Instant::now();
            match renew(&mut client, &mut keeper, lease, call).await {
                Ok(true) => valid_until = sent + ttl - margin,
                Ok(false) => anyhow::bail!("etcd let the lease expire"),
                Err(e) => {
                    self.renewal_failures.fetch_add(1, Ordering::Relaxed);
                    keeper = None;
                    tracing::warn!(error = %e, "lease keep-alive failed");
                    if Instant::now() >= valid_until {
                        self.step_down(tx, "its lease could have expired");
                    }
                }
            }
            let read = client.get(
                masters_prefix.clone(),
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_sort(SortTarget::Create, SortOrder::Ascend),
                ),
            );
            match tokio::time::timeout(call, read).await {
                Ok(Ok(got)) => {
                    let first = got.kvs().first();
                    let first_is_me = first.is_some_and(|kv| kv.key() == key.as_bytes());
                    if first.is_some() && !got.kvs().iter().any(|kv| kv.key() == key.as_bytes()) {
                        anyhow::bail!("this master's key is gone from etcd");
                    }
                    let leading = first_is_me && Instant::now() < valid_until;
                    if leading {
                        self.fence.raise(valid_until);
                    } else {
                        self.fence.lower();
                    }
                    let view = View {
                        leader: first.map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                        term: first
                            .and_then(|kv| u64::try_from(kv.create_revision()).ok())
                            .unwrap_or(0),
                        leading,
                        masters: got
                            .kvs()
                            .iter()
                            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                            .collect(),
                        connected: true,
                    };
                    tx.send_if_modified(|v| {
                        let changed = *v != view;
                        if changed && view.leading != v.leading {
                            match view.leading {
                                true => tracing::info!(term, "this master leads"),
                                false => tracing::info!(leader = ?view.leader, "this master is a standby"),
                            }
                        }
                        *v = view;
                        changed
                    });
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading the masters from etcd failed");
                    tx.send_if_modified(|v| std::mem::replace(&mut v.connected, false));
                }
                Err(_) => {
                    tracing::warn!("reading the masters from etcd took over {call:?}");
                    tx.send_if_modified(|v| std::mem::replace(&mut v.connected, false));
                }
            }
            if Instant::now() >= valid_until {
                self.step_down(tx, "its lease could have expired");
            }
            tokio::time::sleep_until((sent + ttl / 4).into()).await;
        }
    }

    fn step_down(&self, tx: &watch::Sender<View>, why: &str) {
        if self.fence.deadline().is_some() {
            tracing::warn!("stepping down: {why}");
        }
        self.fence.lower();
        tx.send_if_modified(|v| std::mem::replace(&mut v.leading, false));
    }
}

/// tonic's TLS settings from the PEM files.
fn etcd_tls(tls: &crate::config::EtcdTls) -> anyhow::Result<etcd_client::TlsOptions> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))
    };
    let mut options = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?));
    if let Some((cert, key)) = &tls.identity {
        options = options.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(options)
}

/// The guard of every leader write: its key still has its term.
fn guard(seat: &Seat) -> Compare {
    let term = i64::try_from(seat.term).unwrap_or(i64::MAX);
    Compare::create_revision(seat.key.clone(), CompareOp::Equal, term)
}

/// One keep-alive: `Ok(true)` when etcd renewed the lease, `Ok(false)` when
/// the lease is gone.
async fn renew(
    client: &mut Client,
    keeper: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    lease: i64,
    within: Duration,
) -> anyhow::Result<bool> {
    let once = async {
        if keeper.is_none() {
            // Opening the stream is itself a keep-alive, answered "lease
            // not found" once etcd has let the lease expire.
            match client.lease_keep_alive(lease).await {
                Ok(opened) => *keeper = Some(opened),
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        let Some((k, acks)) = keeper.as_mut() else {
            anyhow::bail!("no keep-alive stream");
        };
        k.keep_alive().await?;
        match acks.message().await? {
            Some(ack) => Ok(ack.ttl() > 0),
            None => anyhow::bail!("etcd ended the keep-alive stream"),
        }
    };
    tokio::time::timeout(within, once)
        .await
        .map_err(|_| anyhow::anyhow!("etcd did not acknowledge within {within:?}"))?
}
