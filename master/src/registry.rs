//! The registry owns the cluster's membership and routes every envelope.
//!
//! One mutex guards the whole state; every critical section is short and
//! never awaits: routing only resolves targets and pushes into the members'
//! bounded outbound queues ([`crate::outbound`]). A delivery that finds its
//! receiver's queue full comes back as a [`Stall`] for the sender's reader
//! to wait out ([`crate::flow`]), or, with `overflow = "drop"`, is dropped
//! and counted. Per-sender FIFO follows from each member's frames being
//! handled in order by one task and pushed into FIFO queues.
//!
//! The state is composed of parts that own theirs, each in its file with
//! private fields: the [`roster`] (members by name, in order, and by
//! instance), the pending [`requests`], the [`barrier`] (ClusterReady and
//! what it holds), the slots' [`secrets`], the heartbeat [`budget`] and the
//! [`counters`] routing keeps. The operations over them, one concept a
//! file: [`join`] (admission), [`members`], [`router`], [`health`] (the
//! sweep), [`events`] and [`listing`].

use crate::config::{Expect, HealthConfig, MessagingConfig, Overflow};
use crate::flow::Stall;
use crate::model::{ClusterEvent, EventKind, MemberState, Notice};
use crate::outbound::{Outbound, OutboundStream};
use cohort_proto::pb::{self, master_frame::Kind as Out, member_frame::Kind as In};
use cohort_proto::time::{duration, span};
use cohort_proto::{MemberName, Role};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;

mod barrier;
mod budget;
mod counters;
mod error;
mod events;
mod health;
mod join;
mod listing;
mod members;
mod probing;
mod requests;
mod roster;
mod router;
mod secrets;
pub use probing::ProbeTarget;
#[cfg(test)]
mod tests;
mod watching;

use barrier::Barrier;
use budget::{Budget, Timing};
use events::event;
use listing::Counts;
use members::{Presence, not_found, resolve_member};
use requests::Requests;
use roster::Roster;
use router::Mode;
use secrets::Secrets;

pub use counters::RoutingMetrics;
pub use error::{RouteError, StreamError};
pub use join::{Via, check_hello};
pub use members::InstanceId;
pub use router::Routed;

/// How long a request waits for its reply when the sender names no timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The `from` of envelopes sent through `Control/Send` (a reserved name).
pub const CONTROL_SENDER: &str = "control";

/// The registry's settings.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Heartbeat timings.
    pub health: HealthConfig,
    /// Queue sizes.
    pub messaging: MessagingConfig,
    /// Members to wait for before ClusterReady.
    pub expect: Expect,
    /// A member not ready this long after its hello is dropped.
    pub join_timeout: Duration,
    /// How long a draining member may take (told in `Drain.deadline`).
    pub drain_timeout: Duration,
    /// The master runs its own agent: the agent role is reserved for it.
    pub local_agent: bool,
    /// Memory limits per app (`max_rss` of `[agent]`, `[worker]`,
    /// `[[app]]`; a reload replaces them).
    pub max_rss: MaxRss,
    /// Members at once (`[limits] max_members`; 0 = no limit).
    pub max_members: usize,
    /// Health probes by app (`[[app]] health`; a reload replaces them).
    pub health_checks: HashMap<String, crate::config::HealthCheck>,
    /// With several masters: this leader's term and fence (nothing is
    /// registered or routed once the fence is down), and whether an
    /// earlier leader already announced ClusterReady.
    pub leadership: Option<Leadership>,
}

/// What a leader of several masters adds to the registry.
#[derive(Clone, Debug)]
pub struct Leadership {
    /// The term, told in every Welcome.
    pub term: u64,
    /// Down when the leader may no longer act.
    pub fence: crate::ha::Fence,
    /// A leader before this one announced ClusterReady: this one starts
    /// ready and does not hold messages.
    pub was_ready: bool,
}

/// Memory limits by app (the agent's under `agent`): a member whose
/// heartbeats report more for [`health::OVER_MEMORY_BEATS`] in a row is drained
/// (and, if local, replaced).
#[derive(Clone, Debug, Default)]
pub struct MaxRss(pub HashMap<String, u64>);

fn frame(kind: Out) -> pb::MasterFrame {
    pb::MasterFrame { kind: Some(kind) }
}

/// `timing` as members are told it.
fn settings(timing: Timing) -> pb::Settings {
    pb::Settings {
        heartbeat_interval: Some(duration(timing.heartbeat_interval)),
        suspect_after: Some(duration(timing.suspect_after)),
        dead_after: Some(duration(timing.dead_after)),
        max_message_bytes: u32::try_from(cohort_proto::MAX_MESSAGE_BYTES).unwrap_or(u32::MAX),
    }
}

struct State {
    members: Roster,
    last_random: HashMap<router::Pool, MemberName>,
    barrier: Barrier,
    pending: Requests,
    /// The master's own slots' names and one-time secrets.
    secrets: Secrets,
    /// While a sweep runs: its events, sent to members as one frame each
    /// at its end (`bool`: members may hear it).
    coalesce: Option<Vec<(ClusterEvent, bool)>>,
    /// Members by role and state, kept as they change: ClusterInfo in O(1).
    counts: Counts,
    /// The heartbeat timings the cluster's size allows.
    budget: Budget,
}

/// A registered member's stream: what the Join handler needs.
pub struct Joined {
    /// The member's new instance id.
    pub instance_id: InstanceId,
    /// Its (possibly assigned) name.
    pub name: MemberName,
    /// Frames for the member, welcome first.
    pub stream: OutboundStream,
    /// Cancelled when the registry evicts the member.
    pub cancel: CancellationToken,
    /// Its queue, for its reader to pause on ([`crate::flow`]).
    pub outbound: Outbound,
}

/// Counts by role and state, for `ClusterInfo`.
pub struct Summary {
    /// `(role, state, count)`.
    pub counts: Vec<(Role, MemberState, u32)>,
    /// Whether ClusterReady was announced.
    pub cluster_ready: bool,
}

/// The cluster's membership and router. Cheap to share behind an `Arc`.
pub struct Registry {
    state: Mutex<State>,
    events: broadcast::Sender<ClusterEvent>,
    ready_tx: watch::Sender<bool>,
    cfg: RegistryConfig,
    /// The memory limits now (from `cfg`, then each reload's).
    max_rss: Mutex<MaxRss>,
    /// The health probes by app now (from `cfg`, then each reload's).
    health: Mutex<HashMap<String, crate::config::HealthCheck>>,
    notices: Option<tokio::sync::mpsc::Sender<Notice>>,
    /// What routing counts, for `[metrics]`.
    pub metrics: RoutingMetrics,
    /// Members' recent log lines, for `Control/Logs`.
    pub logs: std::sync::Arc<crate::logs::LogStore>,
    /// Cancelled by [`Registry::close_all`].
    closed: CancellationToken,
}

impl Registry {
    /// An empty registry. ClusterReady is announced at once when nothing is
    /// expected.
    pub fn new(
        cfg: RegistryConfig,
        notices: Option<tokio::sync::mpsc::Sender<Notice>>,
    ) -> Registry {
        let (events, _) = broadcast::channel(1024);
        let ready = (cfg.expect.agents == 0
            && cfg.expect.workers == 0
            && cfg.expect.apps.iter().all(|a| a.count == 0))
            || cfg.leadership.as_ref().is_some_and(|l| l.was_ready);
        let (ready_tx, _) = watch::channel(ready);
        Registry {
            state: Mutex::new(State {
                members: Roster::default(),
                last_random: HashMap::new(),
                barrier: Barrier::new(ready),
                pending: Requests::default(),
                secrets: Secrets::default(),
                coalesce: None,
                counts: Counts::default(),
                budget: Budget::new(cfg.health),
            }),
            events,
            ready_tx,
            max_rss: Mutex::new(cfg.max_rss.clone()),
            health: Mutex::new(cfg.health_checks.clone()),
            cfg,
            notices,
            metrics: Default::default(),
            logs: Default::default(),
            closed: CancellationToken::new(),
        }
    }

    /// Refuses to act once a leader's fence is down ([ha]).
    pub fn check_fence(&self) -> Result<(), StreamError> {
        match &self.cfg.leadership {
            Some(l) if !l.fence.holds() => Err(StreamError::NotLeading),
            _ => Ok(()),
        }
    }

    /// How long a member may take from its hello to ready
    /// (`[restart] start_timeout`).
    pub fn join_timeout(&self) -> Duration {
        self.cfg.join_timeout
    }

    /// The leader's term (0 for a single master).
    pub fn term(&self) -> u64 {
        self.cfg.leadership.as_ref().map_or(0, |l| l.term)
    }

    /// How deliveries that find a full queue are handled.
    fn mode(&self) -> Mode {
        match self.cfg.messaging.overflow {
            Overflow::Block => Mode::Wait,
            Overflow::Drop => Mode::Drop,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters more than stopping routing would.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Watches whether ClusterReady has been announced.
    pub fn ready_watch(&self) -> watch::Receiver<bool> {
        self.ready_tx.subscribe()
    }

    /// How often members heartbeat now.
    pub fn heartbeat_interval(&self) -> Duration {
        self.lock().budget.timing().heartbeat_interval
    }

    /// The settings members must follow now.
    pub fn settings(&self) -> pb::Settings {
        settings(self.lock().budget.timing())
    }

    /// Handles one frame from a member's stream. An error ends that stream;
    /// a [`Stall`] is deliveries the member's reader must wait out
    /// ([`crate::flow`]) before it reads on.
    pub fn on_frame(
        &self,
        instance: &InstanceId,
        kind: In,
        now: Instant,
    ) -> Result<Option<Stall>, StreamError> {
        self.check_fence()?;
        let mut st = self.lock();
        let name = self.seen(&mut st, instance, now)?;
        match kind {
            In::Hello(_) => return Err(StreamError::HelloAgain),
            In::Heartbeat(hb) => {
                let mut over = None;
                if let Some(m) = st.members.get_mut(&name) {
                    // Timings it was told to shorten apply once it beats
                    // again: it has heard of them by its next beat.
                    if let Some(t) = m.next_timing.take() {
                        m.timing = t;
                    }
                    // Acked at least every quarter of dead_after, not each
                    // one: the member's one-way-partition watchdog waits
                    // dead_after for an ack, and 10,000 members' acks every
                    // second would be most of an idle master's work.
                    let mut every = m.timing.dead_after / 4;
                    // With several masters a member leaves one silent for
                    // suspect_after: between two acks there must be less
                    // (at most this plus one interval).
                    if self.cfg.leadership.is_some() {
                        let t = m.timing;
                        every = every.min(t.suspect_after.saturating_sub(t.heartbeat_interval) / 2);
                    }
                    m.cpu_percent = hb.cpu_percent;
                    m.rss_bytes = hb.rss_bytes;
                    if let Some(rtt) = span(hb.rtt.as_ref()) {
                        m.heartbeat_rtt = Some(rtt);
                        self.metrics
                            .heartbeat_rtt_seconds
                            .observe(rtt.as_secs_f64());
                    }
                    over = self.over_memory(m);
                    if m.acked_at
                        .is_none_or(|t| now.saturating_duration_since(t) >= every)
                    {
                        m.acked_at = Some(now);
                        let ack = pb::HeartbeatAck { seq: hb.seq };
                        let _ = m.push(frame(Out::HeartbeatAck(ack)));
                    }
                }
                if let Some(reason) = over {
                    self.drain_unhealthy(&mut st, &name, reason);
                }
            }
            In::Logs(batch) => {
                // Kept beside the registry (crate::logs), within its bounds,
                // and not under the registry's lock.
                let who = st
                    .members
                    .get(&name)
                    .filter(|m| !m.local)
                    .map(|m| (m.role, m.app.clone()));
                drop(st);
                if let Some((role, app)) = who {
                    self.logs
                        .forwarded(name.as_str(), role, &app, batch.lines, now);
                }
                return Ok(None);
            }
            In::Ready(ready) => {
                if !ready.labels.is_empty() {
                    join::check_labels("ready", &ready.labels)
                        .map_err(|s| StreamError::BadLabels(s.message().to_string()))?;
                    if let Some(m) = st.members.get_mut(&name) {
                        let new = ready.labels.keys().filter(|k| !m.labels.contains_key(*k));
                        if m.labels.len() + new.count() > cohort_proto::MAX_LABELS {
                            return Err(StreamError::BadLabels(format!(
                                "hello.labels and ready.labels make more than {} labels",
                                cohort_proto::MAX_LABELS
                            )));
                        }
                        m.labels.extend(ready.labels);
                    }
                }
                // A member with a health probe is ready when it passes.
                let probed = st.members.get(&name).is_some_and(|m| self.probed(m));
                if !probed {
                    self.mark_ready(&mut st, &name, now);
                }
            }
            In::Leaving(l) => {
                if let Some(m) = st.members.get_mut(&name) {
                    let before = m.state();
                    m.presence = Presence::Draining;
                    let (role, after, info) = (m.role, m.state(), m.info());
                    st.counts.moved(role, before, after);
                    tracing::info!(member.name = %name, replace = l.replace, reason = %l.reason, "member leaving");
                    if info.local {
                        self.notify(Notice::Leaving {
                            name: info.name.clone(),
                            pid: info.pid,
                            replace: l.replace,
                        });
                    }
                    self.publish(&mut st, event(EventKind::Draining, Some(info), &l.reason));
                }
            }
            In::Send(env) => return Ok(self.accept(&mut st, &name, env, false, now)),
            In::Request(env) => return Ok(self.accept(&mut st, &name, env, true, now)),
            In::SendBatch(batch) => {
                return Ok(self.accept_all(&mut st, &name, batch.envelopes, now));
            }
            In::Reply(env) => return Ok(self.reply(&mut st, &name, env)),
        }
        Ok(None)
    }

    /// A joined member is ready: it takes work, and may complete the
    /// cluster's readiness.
    fn mark_ready(&self, st: &mut State, name: &MemberName, now: Instant) {
        let changed = st.members.get_mut(name).and_then(|m| {
            (m.presence == Presence::Joined).then(|| {
                let before = m.state();
                m.presence = Presence::Ready;
                (m.role, before, m.state(), m.info())
            })
        });
        if let Some((role, before, after, info)) = changed {
            st.counts.moved(role, before, after);
            tracing::info!(member.name = %name, "member ready");
            if info.local {
                self.notify(Notice::Ready {
                    name: info.name.clone(),
                    pid: info.pid,
                });
            }
            self.publish(st, event(EventKind::Ready, Some(info), ""));
            self.check_cluster_ready(st, now);
        }
    }

    /// Removes a member whose stream ended or broke the protocol, if it is
    /// still this instance; `status` ends its stream.
    pub fn disconnect(&self, instance: &InstanceId, status: Status) {
        let mut st = self.lock();
        if let Some(name) = st.members.by_instance(instance).cloned() {
            self.remove(&mut st, &name, status);
        }
    }

    fn evict(&self, st: &mut State, name: &MemberName, reason: &str) {
        let status = Status::unavailable(format!("removed from the cluster: {reason}"));
        self.remove(st, name, status);
    }

    /// Removes a member and ends its stream with `status`.
    fn remove(&self, st: &mut State, name: &MemberName, status: Status) {
        let Some(m) = st.members.remove(name) else {
            return;
        };
        st.counts.remove(m.role, m.state());
        self.rebudget(st, st.members.len());
        m.cancel.cancel();
        let mut info = m.info();
        info.state = MemberState::Gone;
        let reason = status.message().to_string();
        tracing::info!(member.name = %name, instance = %m.instance_id, reason, "member left");
        m.outbound.close(status);
        let was_ready = m.presence != Presence::Joined;
        self.publish_to(st, event(EventKind::Left, Some(info), &reason), was_ready);
    }

    /// Asks a member to drain.
    pub fn drain(&self, member: &str) -> Result<(), RouteError> {
        let mut st = self.lock();
        let name = resolve_member(&st, member)?;
        let Some(m) = st.members.get_mut(&name) else {
            return Err(not_found(member));
        };
        let before = m.state();
        m.presence = Presence::Draining;
        let (role, after, info) = (m.role, m.state(), m.info());
        let _ = m.push(frame(Out::Drain(pb::Drain {
            reason: "drain requested by an operator".into(),
            deadline: Some(duration(self.cfg.drain_timeout)),
        })));
        st.counts.moved(role, before, after);
        self.publish(
            &mut st,
            event(EventKind::Draining, Some(info), "operator drain"),
        );
        Ok(())
    }

    /// Fits the heartbeat budget to a cluster of `members`; when the
    /// timings change, every member registered is told. Longer silences apply at once,
    /// shorter ones from each member's next heartbeat, when it has had the
    /// chance to hear of them.
    fn rebudget(&self, st: &mut State, members: usize) {
        let Some(timing) = st.budget.fit(members) else {
            return;
        };
        tracing::info!(
            members,
            heartbeat_interval_ms = timing.heartbeat_interval.as_millis() as u64,
            dead_after_ms = timing.dead_after.as_millis() as u64,
            "heartbeat budget: members heartbeat at a new interval"
        );
        let told = frame(Out::Settings(settings(timing)));
        for m in st.members.values_mut() {
            if timing.dead_after >= m.timing.dead_after {
                m.timing = timing;
                m.next_timing = None;
            } else {
                m.next_timing = Some(timing);
            }
            let _ = m.push(told.clone());
        }
    }

    fn notify(&self, notice: Notice) {
        if let Some(tx) = &self.notices
            && tx.try_send(notice).is_err()
        {
            tracing::warn!("supervisor notice dropped: its queue is full");
        }
    }

    /// Ends every member stream (master shutdown).
    pub fn close_all(&self, reason: &str) {
        let mut st = self.lock();
        st.counts = Counts::default();
        for m in st.members.take_all() {
            m.cancel.cancel();
            m.outbound.finish(Status::unavailable(reason.to_string()));
        }
        self.closed.cancel();
    }

    /// Cancelled once [`close_all`](Self::close_all) ended every member
    /// stream: what watches the cluster (event and log feeds, a
    /// `Control/Send` waiting for room) goes on through a shutdown's drain
    /// and ends then.
    pub fn closed(&self) -> CancellationToken {
        self.closed.clone()
    }
}
