//! The registry owns the cluster's membership and routes every envelope.
//!
//! One mutex guards the whole state; every critical section is short and
//! never awaits: routing only resolves targets and pushes into the members'
//! bounded outbound queues ([`crate::outbound`]). A delivery that finds its
//! receiver's queue full comes back as a [`Stall`] for the sender's reader
//! to wait out ([`crate::flow`]), or, with `overflow = "drop"`, is dropped
//! and counted. Per-sender FIFO follows from each member's frames being
//! handled in order by one task and pushed into FIFO queues.

use crate::config::{Expect, HealthConfig, MessagingConfig, Overflow};
use crate::flow::{Outcome, Stall, Then, Wait};
use crate::outbound::{self, Outbound, OutboundStream, PushError, Refused};
use cohort_proto::pb::{self, master_frame::Kind as Out, member_frame::Kind as In};
use cohort_proto::{MemberName, Role, Target};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

/// How long a request waits for its reply when the sender names no timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The `from` of envelopes sent through `Control/Send` (a reserved name).
pub const CONTROL_SENDER: &str = "control";
/// Most members listed in a welcome.
pub const WELCOME_MEMBERS: usize = 64;
/// Longest `hello.host` accepted (a DNS name is at most 253).
pub const MAX_HOST_LEN: usize = 255;
/// Longest `hello.version` accepted.
pub const MAX_VERSION_LEN: usize = 128;
/// Most `hello.labels`.
pub const MAX_LABELS: usize = 32;
/// Longest label key and value.
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// Longest label value.
pub const MAX_LABEL_VALUE_LEN: usize = 255;
/// Longest `hello.secret` accepted.
const MAX_SECRET_LEN: usize = 128;

/// Which of the master's sockets a member came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The private Unix socket of the master's own children.
    LocalSocket,
    /// The gRPC listen address.
    Network,
}

/// Refuses a hello whose free-form fields exceed their bounds: whatever a
/// member says of itself is copied into every listing and event.
fn check_hello(hello: &pb::Hello) -> Result<(), Status> {
    let too_long = |field: &str, len: usize, max: usize| {
        Status::invalid_argument(format!(
            "hello.{field} is {len} bytes: at most {max} are accepted"
        ))
    };
    if hello.host.len() > MAX_HOST_LEN {
        return Err(too_long("host", hello.host.len(), MAX_HOST_LEN));
    }
    if hello.version.len() > MAX_VERSION_LEN {
        return Err(too_long("version", hello.version.len(), MAX_VERSION_LEN));
    }
    if hello.secret.len() > MAX_SECRET_LEN {
        return Err(too_long("secret", hello.secret.len(), MAX_SECRET_LEN));
    }
    if hello.labels.len() > MAX_LABELS {
        return Err(Status::invalid_argument(format!(
            "hello.labels has {} entries: at most {MAX_LABELS} are accepted",
            hello.labels.len()
        )));
    }
    for (k, v) in &hello.labels {
        if k.len() > MAX_LABEL_KEY_LEN {
            return Err(too_long("labels key", k.len(), MAX_LABEL_KEY_LEN));
        }
        if v.len() > MAX_LABEL_VALUE_LEN {
            return Err(too_long(
                &format!("labels[{k}]"),
                v.len(),
                MAX_LABEL_VALUE_LEN,
            ));
        }
    }
    Ok(())
}

/// What the registry tells the supervisor about its own (local) members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A local member reported ready.
    Ready {
        /// Its name.
        name: String,
        /// Its pid.
        pid: u32,
    },
    /// A local member is leaving; with `replace` it asks for a replacement
    /// first (the fatal-error path).
    Leaving {
        /// Its name.
        name: String,
        /// Its pid.
        pid: u32,
        /// Start a replacement now.
        replace: bool,
    },
    /// A local member was evicted while its process may live on (silent,
    /// not reading, never ready): the supervisor kills and replaces it.
    Evicted {
        /// Its name.
        name: String,
        /// Its pid.
        pid: u32,
        /// Why it was evicted.
        reason: String,
    },
}

/// The registry's settings.
#[derive(Clone, Copy, Debug)]
pub struct RegistryConfig {
    /// Heartbeat timings.
    pub health: HealthConfig,
    /// Queue sizes.
    pub messaging: MessagingConfig,
    /// Members to wait for before ClusterReady.
    pub expect: Expect,
    /// A member not ready this long after its hello is dropped.
    pub join_timeout: Duration,
    /// The master runs its own agent: the agent role is reserved for it.
    pub local_agent: bool,
}

/// Where a member is in its life, as far as the registry knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Presence {
    /// Said hello, not ready yet.
    Joined,
    /// Takes work.
    Ready,
    /// Finishing its work before it leaves.
    Draining,
}

/// One connected member.
struct Member {
    name: MemberName,
    instance_id: String,
    role: Role,
    presence: Presence,
    suspect: bool,
    pid: u32,
    host: String,
    local: bool,
    labels: HashMap<String, String>,
    version: String,
    started_at_ms: u64,
    cpu_percent: f32,
    rss_bytes: u64,
    last_seen: Instant,
    joined_at: Instant,
    dropped: u64,
    /// Frames the member had taken when the sweep last looked.
    seen_taken: u64,
    /// Since when senders wait on this member while it takes nothing.
    stalled_since: Option<Instant>,
    /// Its reader waits for room in other queues: unread, not silent.
    held_back: bool,
    outbound: Outbound,
    cancel: CancellationToken,
}

impl Member {
    fn info(&self) -> pb::MemberInfo {
        let state = match (self.suspect, self.presence) {
            (true, _) => pb::MemberState::Suspect,
            (false, Presence::Joined) => pb::MemberState::Joined,
            (false, Presence::Ready) => pb::MemberState::Ready,
            (false, Presence::Draining) => pb::MemberState::Draining,
        };
        pb::MemberInfo {
            name: self.name.to_string(),
            instance_id: self.instance_id.clone(),
            role: self.role.into(),
            state: state as i32,
            pid: self.pid,
            host: self.host.clone(),
            local: self.local,
            restarts: 0,
            started_at: self.started_at_ms,
            cpu_percent: self.cpu_percent,
            rss_bytes: self.rss_bytes,
            labels: self.labels.clone(),
            version: self.version.clone(),
            dropped_messages: self.dropped,
            ..Default::default()
        }
    }

    /// Queues a frame of the master's own; a full control lane counts a
    /// drop and starts the slow-consumer clock.
    fn push(&mut self, frame: pb::MasterFrame) -> Result<(), PushError> {
        let r = self.outbound.push(frame);
        if r == Err(PushError::Full) {
            self.dropped += 1;
            self.outbound.mark_refused();
        }
        r
    }

    /// How long senders have waited on this member while it took nothing,
    /// as of this look (`None`: it is keeping up).
    fn stalled(&mut self, now: Instant) -> Option<Duration> {
        let taken = self.outbound.taken();
        if self.outbound.pressed() && taken == self.seen_taken {
            let since = *self.stalled_since.get_or_insert(now);
            return Some(now.saturating_duration_since(since));
        }
        self.seen_taken = taken;
        self.stalled_since = None;
        None
    }

    fn push_result(&mut self, id: String, status: Result<u32, Status>) {
        let (code, message, delivered) = match status {
            Ok(n) => (Code::Ok, String::new(), n),
            Err(s) => (s.code(), s.message().to_string(), 0),
        };
        let frame = frame(Out::SendResult(pb::SendResult {
            id,
            code: code as i32,
            message,
            delivered,
        }));
        // A result that does not fit is one more counted drop.
        let _ = self.push(frame);
    }
}

fn frame(kind: Out) -> pb::MasterFrame {
    pb::MasterFrame { kind: Some(kind) }
}

/// Who waits for a reply.
pub enum Requester {
    /// A member, by instance id.
    Member(String),
    /// A `Control/Send` call.
    Control(oneshot::Sender<pb::Envelope>),
}

struct Pending {
    requester: Requester,
    original_id: String,
    /// The instance the request was delivered to: the only one whose reply
    /// is accepted.
    responder: String,
    deadline: Instant,
}

struct Held {
    sender: String,
    request: bool,
    envelope: pb::Envelope,
}

struct State {
    members: BTreeMap<MemberName, Member>,
    by_instance: HashMap<String, MemberName>,
    last_random: HashMap<Role, MemberName>,
    cluster_ready: bool,
    held: VecDeque<Held>,
    pending: HashMap<String, Pending>,
    /// The instance that registered with each slot's current secret: a
    /// secret serves one live registration.
    secret_holders: HashMap<String, String>,
    /// Names of the master's own slots and the one-time secret of each
    /// slot's newest instance.
    secrets: HashMap<String, String>,
}

/// A registered member's stream: what the Join handler needs.
pub struct Joined {
    /// The member's new instance id.
    pub instance_id: String,
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
    pub counts: Vec<(Role, pb::MemberState, u32)>,
    /// Whether ClusterReady was announced.
    pub cluster_ready: bool,
}

/// The cluster's membership and router. Cheap to share behind an `Arc`.
pub struct Registry {
    state: Mutex<State>,
    events: broadcast::Sender<pb::ClusterEvent>,
    ready_tx: watch::Sender<bool>,
    cfg: RegistryConfig,
    notices: Option<tokio::sync::mpsc::Sender<Notice>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn event(kind: pb::EventKind, member: Option<pb::MemberInfo>, reason: &str) -> pb::ClusterEvent {
    pb::ClusterEvent {
        kind: kind as i32,
        member,
        at: now_ms(),
        reason: reason.to_string(),
    }
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl Registry {
    /// An empty registry. ClusterReady is announced at once when nothing is
    /// expected.
    pub fn new(
        cfg: RegistryConfig,
        notices: Option<tokio::sync::mpsc::Sender<Notice>>,
    ) -> Registry {
        let (events, _) = broadcast::channel(1024);
        let ready = cfg.expect.agents == 0 && cfg.expect.workers == 0;
        let (ready_tx, _) = watch::channel(ready);
        Registry {
            state: Mutex::new(State {
                members: BTreeMap::new(),
                by_instance: HashMap::new(),
                last_random: HashMap::new(),
                cluster_ready: ready,
                held: VecDeque::new(),
                pending: HashMap::new(),
                secret_holders: HashMap::new(),
                secrets: HashMap::new(),
            }),
            events,
            ready_tx,
            cfg,
            notices,
        }
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

    /// How often members heartbeat.
    pub fn heartbeat_interval(&self) -> Duration {
        self.cfg.health.heartbeat_interval
    }

    /// The settings members must follow.
    pub fn settings(&self) -> pb::Settings {
        pb::Settings {
            heartbeat_interval_ms: ms(self.cfg.health.heartbeat_interval),
            suspect_after_ms: ms(self.cfg.health.suspect_after),
            dead_after_ms: ms(self.cfg.health.dead_after),
            max_message_bytes: u32::try_from(cohort_proto::MAX_MESSAGE_BYTES).unwrap_or(u32::MAX),
        }
    }

    /// Registers a member from its hello.
    pub fn register(&self, hello: pb::Hello, via: Via, now: Instant) -> Result<Joined, Status> {
        check_hello(&hello)?;
        let role = Role::try_from(hello.role)
            .map_err(|e| Status::invalid_argument(format!("hello.{e}")))?;
        let mut st = self.lock();
        let name = if hello.name.is_empty() {
            st.free_name(role)
        } else {
            MemberName::parse(hello.name).map_err(Status::invalid_argument)?
        };
        if name.as_str() == CONTROL_SENDER {
            return Err(Status::invalid_argument(format!(
                "the member name {CONTROL_SENDER} is reserved: it is the sender of Control/Send"
            )));
        }
        let local = match st.secrets.get(name.as_str()) {
            None => false,
            Some(secret) if via == Via::LocalSocket && secrets_match(secret, &hello.secret) => {
                let holder = st.secret_holders.get(name.as_str());
                if let Some(holder) = holder
                    && st.by_instance.contains_key(holder)
                {
                    return Err(Status::already_exists(format!(
                        "the one-time COHORT_SECRET of {name} is in use by instance {holder}: \
                         it serves one registration at a time"
                    )));
                }
                true
            }
            Some(_) if via == Via::Network && !hello.secret.is_empty() => {
                return Err(Status::permission_denied(
                    "a one-time COHORT_SECRET is accepted only on the master's private socket, \
                     by the children it starts itself",
                ));
            }
            Some(_) => {
                return Err(Status::permission_denied(format!(
                    "member name {name} belongs to a member this master starts itself; \
                     only that process (holding its one-time COHORT_SECRET) may use it"
                )));
            }
        };
        let holder = st
            .members
            .get(&name)
            .map(|m| (m.suspect, m.instance_id.clone()));
        if let Some((suspect, instance)) = holder {
            // A local instance with its slot's newest secret supersedes the
            // old one (restart, fatal path): the supervisor retires the old
            // process. Anyone else may only take a suspect's name.
            if !local && !suspect {
                return Err(Status::already_exists(format!(
                    "member name {name} is taken by a live member (instance {instance}); \
                     pick another name or stop that member first"
                )));
            }
            self.evict(
                &mut st,
                &name,
                "replaced by a new instance of the same name",
            );
        }
        if role == Role::Agent && self.cfg.local_agent && !local {
            return Err(Status::permission_denied(
                "this master runs its own agent: no other member may join as the agent \
                 (run the master with [agent] count = 0 to have a remote agent)",
            ));
        }
        if role == Role::Agent
            && let Some(agent) = st
                .members
                .values()
                .find(|m| m.role == Role::Agent && !m.suspect)
        {
            return Err(Status::already_exists(format!(
                "the cluster already has a live agent ({}); a cluster runs at most one",
                agent.name
            )));
        }
        let instance_id = uuid::Uuid::new_v4().to_string();
        let m_cfg = self.cfg.messaging;
        let bounds = outbound::Bounds {
            messages: m_cfg.queue_messages,
            bytes: m_cfg.queue_bytes,
        };
        let (outbound, stream) = outbound::channel(bounds, hello.accepts_batches);
        let own = outbound.clone();
        let cancel = CancellationToken::new();
        let member = Member {
            name: name.clone(),
            instance_id: instance_id.clone(),
            role,
            presence: Presence::Joined,
            suspect: false,
            pid: hello.pid,
            host: hello.host,
            local,
            labels: hello.labels,
            version: hello.version,
            started_at_ms: now_ms(),
            cpu_percent: 0.0,
            rss_bytes: 0,
            last_seen: now,
            joined_at: now,
            dropped: 0,
            seen_taken: 0,
            stalled_since: None,
            held_back: false,
            outbound,
            cancel: cancel.clone(),
        };
        let info = member.info();
        let welcome = pb::Welcome {
            name: name.to_string(),
            instance_id: instance_id.clone(),
            settings: Some(self.settings()),
            // Bounded: a welcome must fit in a frame however large the
            // cluster; Control/ListMembers lists them all.
            members: st
                .members
                .values()
                .take(WELCOME_MEMBERS)
                .map(Member::info)
                .collect(),
            cluster_ready: st.cluster_ready,
        };
        // The queue is empty: the welcome always fits.
        let _ = member.outbound.push(frame(Out::Welcome(welcome)));
        self.publish_to(&mut st, event(pb::EventKind::Joined, Some(info), ""), false);
        st.by_instance.insert(instance_id.clone(), name.clone());
        if local {
            st.secret_holders
                .insert(name.to_string(), instance_id.clone());
        }
        st.members.insert(name.clone(), member);
        tracing::info!(member.name = %name, member.role = %role, instance = %instance_id, "member joined");
        Ok(Joined {
            instance_id,
            name,
            stream,
            cancel,
            outbound: own,
        })
    }

    /// Handles one frame from a member's stream. An error ends that stream;
    /// a [`Stall`] is deliveries the member's reader must wait out
    /// ([`crate::flow`]) before it reads on.
    pub fn on_frame(
        &self,
        instance: &str,
        kind: In,
        now: Instant,
    ) -> Result<Option<Stall>, Status> {
        let mut st = self.lock();
        let name = self.seen(&mut st, instance, now)?;
        match kind {
            In::Hello(_) => {
                return Err(Status::failed_precondition(
                    "hello may only be the first frame of a Join stream",
                ));
            }
            In::Heartbeat(hb) => {
                if let Some(m) = st.members.get_mut(&name) {
                    m.cpu_percent = hb.cpu_percent;
                    m.rss_bytes = hb.rss_bytes;
                    let _ = m.push(frame(Out::HeartbeatAck(pb::HeartbeatAck { seq: hb.seq })));
                }
            }
            In::Ready(_) => {
                let info = st.members.get_mut(&name).and_then(|m| {
                    (m.presence == Presence::Joined).then(|| {
                        m.presence = Presence::Ready;
                        m.info()
                    })
                });
                if let Some(info) = info {
                    tracing::info!(member.name = %name, "member ready");
                    if info.local {
                        self.notify(Notice::Ready {
                            name: info.name.clone(),
                            pid: info.pid,
                        });
                    }
                    self.publish(&mut st, event(pb::EventKind::Ready, Some(info), ""));
                    self.check_cluster_ready(&mut st, now);
                }
            }
            In::Leaving(l) => {
                if let Some(m) = st.members.get_mut(&name) {
                    m.presence = Presence::Draining;
                    let info = m.info();
                    tracing::info!(member.name = %name, replace = l.replace, reason = %l.reason, "member leaving");
                    if info.local {
                        self.notify(Notice::Leaving {
                            name: info.name.clone(),
                            pid: info.pid,
                            replace: l.replace,
                        });
                    }
                    self.publish(
                        &mut st,
                        event(pb::EventKind::Draining, Some(info), &l.reason),
                    );
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

    /// Notes that the member was heard from; returns its name.
    fn seen(&self, st: &mut State, instance: &str, now: Instant) -> Result<MemberName, Status> {
        let gone = || Status::unavailable("this member was evicted; reconnect and join again");
        let name = st.by_instance.get(instance).cloned().ok_or_else(gone)?;
        let m = st.members.get_mut(&name).ok_or_else(gone)?;
        m.last_seen = now;
        if std::mem::replace(&mut m.suspect, false) {
            let info = m.info();
            tracing::info!(member.name = %name, "suspect member heard from again");
            self.publish(st, event(pb::EventKind::Recovered, Some(info), ""));
        }
        Ok(name)
    }

    /// Routes the envelopes of one batch in order, up to the first that
    /// must wait; the rest wait with it.
    fn accept_all(
        &self,
        st: &mut State,
        sender: &MemberName,
        envelopes: Vec<pb::Envelope>,
        now: Instant,
    ) -> Option<Stall> {
        let mut envelopes = envelopes.into_iter();
        while let Some(env) = envelopes.next() {
            if let Some(mut stall) = self.accept(st, sender, env, false, now) {
                stall.rest = envelopes.collect();
                return Some(stall);
            }
        }
        None
    }

    /// Continues after a stall: tells the sender how its envelope fared,
    /// then routes the rest of its batch.
    pub fn settle(
        &self,
        instance: &str,
        then: Then,
        outcome: Outcome,
        rest: Vec<pb::Envelope>,
        now: Instant,
    ) -> Option<Stall> {
        let mut st = self.lock();
        let name = st.by_instance.get(instance).cloned()?;
        if let Some(rid) = &then.request
            && !outcome.cut_off.is_empty()
        {
            st.pending.remove(rid);
        }
        let result = match outcome.cut_off.first() {
            Some(cut) if then.targeted || then.request.is_some() => Err(Status::unavailable(
                format!("{cut} was disconnected before it took the message; it was dropped"),
            )),
            _ => Ok(then.reached + outcome.reached),
        };
        if (then.ack || result.is_err())
            && let Some(m) = st.members.get_mut(&name)
        {
            m.push_result(then.id, result);
        }
        self.accept_all(&mut st, &name, rest, now)
    }

    /// Marks a member's reader as waiting for room (or done waiting).
    pub fn hold_back(&self, instance: &str, held: bool, now: Instant) {
        let mut st = self.lock();
        let Some(name) = st.by_instance.get(instance).cloned() else {
            return;
        };
        if let Some(m) = st.members.get_mut(&name) {
            m.held_back = held;
            m.last_seen = now;
        }
    }

    /// Vouches for a member whose reader waits for room: it is alive, just
    /// not read; its heartbeat clock and its own ack watchdog stay content.
    pub fn vouch(&self, instance: &str) {
        let mut st = self.lock();
        let Some(name) = st.by_instance.get(instance).cloned() else {
            return;
        };
        if let Some(m) = st.members.get_mut(&name) {
            m.last_seen = Instant::now();
            let _ = m.push(frame(Out::HeartbeatAck(pb::HeartbeatAck { seq: 0 })));
        }
    }

    /// Takes a send or request from a member: held before ClusterReady,
    /// routed after it.
    fn accept(
        &self,
        st: &mut State,
        sender: &MemberName,
        env: pb::Envelope,
        request: bool,
        now: Instant,
    ) -> Option<Stall> {
        if st.cluster_ready {
            return self.dispatch(st, sender, env, request, self.mode(), now);
        }
        if st.held.len() >= self.cfg.messaging.held_messages {
            let status = Status::resource_exhausted(format!(
                "{} messages are already held until the cluster is ready; try again after ClusterReady",
                st.held.len()
            ));
            if let Some(m) = st.members.get_mut(sender) {
                m.push_result(env.id, Err(status));
            }
            return None;
        }
        let instance = st
            .members
            .get(sender)
            .map(|m| m.instance_id.clone())
            .unwrap_or_default();
        st.held.push_back(Held {
            sender: instance,
            request,
            envelope: env,
        });
        None
    }

    fn dispatch(
        &self,
        st: &mut State,
        sender: &MemberName,
        env: pb::Envelope,
        request: bool,
        mode: Mode,
        now: Instant,
    ) -> Option<Stall> {
        let instance = st.members.get(sender).map(|m| m.instance_id.clone())?;
        let (id, ack) = (env.id.clone(), env.ack);
        let outcome = if request {
            let requester = Requester::Member(instance);
            self.route_request(st, sender.as_str(), requester, env, mode, now)
        } else {
            route(st, sender.as_str(), env, mode)
        };
        match outcome {
            Ok(routed) if !routed.waits.is_empty() => Some(Stall {
                waits: routed.waits,
                then: Then {
                    id,
                    ack,
                    targeted: routed.targeted,
                    reached: routed.reached,
                    request: routed.request,
                },
                rest: Vec::new(),
            }),
            Ok(routed) => {
                if ack
                    && !request
                    && let Some(m) = st.members.get_mut(sender)
                {
                    m.push_result(id, Ok(routed.reached));
                }
                None
            }
            Err(status) => {
                tracing::debug!(member.name = %sender, error = %status.message(), "send failed");
                if let Some(m) = st.members.get_mut(sender) {
                    m.push_result(id, Err(status));
                }
                None
            }
        }
    }

    fn route_request(
        &self,
        st: &mut State,
        from: &str,
        requester: Requester,
        mut env: pb::Envelope,
        mode: Mode,
        now: Instant,
    ) -> Result<Routed, Status> {
        let target = Target::try_from(env.target.as_ref()).map_err(Status::invalid_argument)?;
        if matches!(target, Target::All | Target::Role(_)) {
            return Err(Status::invalid_argument(
                "a request goes to one member: use target.member or target.random",
            ));
        }
        if st.pending.len() >= self.cfg.messaging.pending_requests {
            return Err(Status::resource_exhausted(format!(
                "{} requests are already waiting for replies; retry later",
                st.pending.len()
            )));
        }
        // Unguessable, so no member can aim a reply at another's request.
        let rid = uuid::Uuid::new_v4().simple().to_string();
        let original_id = std::mem::replace(&mut env.id, rid.clone());
        let timeout = match env.timeout_ms {
            0 => DEFAULT_REQUEST_TIMEOUT,
            t => Duration::from_millis(u64::from(t)),
        };
        env.expects_reply = true;
        let mut routed = deliver(st, from, env, target, mode)?;
        st.pending.insert(
            rid.clone(),
            Pending {
                requester,
                original_id,
                responder: routed.to.take().unwrap_or_default(),
                deadline: now + timeout,
            },
        );
        routed.request = Some(rid);
        Ok(routed)
    }

    fn reply(&self, st: &mut State, replier: &MemberName, mut env: pb::Envelope) -> Option<Stall> {
        let replier_instance = st.members.get(replier).map(|m| m.instance_id.as_str());
        let addressed = st
            .pending
            .get(&env.reply_to)
            .is_some_and(|p| Some(p.responder.as_str()) == replier_instance);
        // A reply from anyone but the instance that got the request is
        // refused as if no such request existed: it reveals nothing.
        let pending = if addressed {
            st.pending.remove(&env.reply_to)
        } else {
            None
        };
        let Some(p) = pending else {
            let status = Status::not_found(format!(
                "no request {:?} is waiting for a reply: it timed out or was answered already",
                env.reply_to
            ));
            if let Some(m) = st.members.get_mut(replier) {
                m.push_result(env.id, Err(status));
            }
            return None;
        };
        let id = std::mem::take(&mut env.id);
        env.from = replier.to_string();
        env.reply_to = p.original_id;
        env.target = None;
        env.expects_reply = false;
        let instance = match p.requester {
            Requester::Control(tx) => {
                // The Control caller may have given up; nothing else waits.
                let _ = tx.send(env);
                return None;
            }
            Requester::Member(instance) => instance,
        };
        let requester = st.by_instance.get(&instance).cloned();
        let routed = match requester {
            Some(name) => offer_to(st, replier.as_str(), &name, env, self.mode()),
            None => Err(Status::unavailable(
                "the requester has left; the reply was dropped",
            )),
        };
        match routed {
            Ok(routed) if routed.waits.is_empty() => None,
            Ok(routed) => Some(Stall {
                waits: routed.waits,
                then: Then {
                    id,
                    targeted: true,
                    ..Then::default()
                },
                rest: Vec::new(),
            }),
            Err(status) => {
                if let Some(m) = st.members.get_mut(replier) {
                    m.push_result(id, Err(status));
                }
                None
            }
        }
    }

    /// Routes an envelope from `Control/Send`: how many it reached at once,
    /// the deliveries that wait for room, and with a reply expected, the
    /// receiver that yields it.
    pub fn control_send(
        &self,
        env: pb::Envelope,
        expect_reply: bool,
        now: Instant,
    ) -> Result<ControlSend, Status> {
        let mut st = self.lock();
        let mode = self.mode();
        if expect_reply {
            let (tx, rx) = oneshot::channel();
            let requester = Requester::Control(tx);
            let routed = self.route_request(&mut st, CONTROL_SENDER, requester, env, mode, now)?;
            Ok(ControlSend {
                routed,
                reply: Some(rx),
            })
        } else {
            let routed = route(&mut st, CONTROL_SENDER, env, mode)?;
            Ok(ControlSend {
                routed,
                reply: None,
            })
        }
    }

    fn check_cluster_ready(&self, st: &mut State, now: Instant) {
        if st.cluster_ready {
            return;
        }
        let ready = |role| {
            let n = st
                .members
                .values()
                .filter(|m| m.role == role && m.presence == Presence::Ready)
                .count();
            u32::try_from(n).unwrap_or(u32::MAX)
        };
        if ready(Role::Agent) < self.cfg.expect.agents
            || ready(Role::Worker) < self.cfg.expect.workers
        {
            return;
        }
        st.cluster_ready = true;
        tracing::info!(members = st.members.len(), "cluster ready");
        for m in st.members.values_mut() {
            let _ = m.push(frame(Out::ClusterReady(pb::ClusterReady {})));
        }
        self.publish(st, event(pb::EventKind::ClusterReady, None, ""));
        self.ready_tx.send_replace(true);
        // Held messages go out at once, ahead of anything sent after this,
        // without waiting: they are bounded by `held_messages`.
        while let Some(h) = st.held.pop_front() {
            let sender = st.by_instance.get(&h.sender).cloned();
            match sender {
                Some(name) => {
                    let _ = self.dispatch(st, &name, h.envelope, h.request, Mode::Force, now);
                }
                // The sender left while its message was held: route it
                // anyway, under the name it had, as at-most-once allows.
                None if !h.request => {
                    let from = h.envelope.from.clone();
                    let _ = route(st, &from, h.envelope, Mode::Force);
                }
                None => {}
            }
        }
    }

    /// Marks silent members SUSPECT, evicts the dead and the hopelessly slow,
    /// and expires requests nobody answered.
    pub fn sweep(&self, now: Instant) {
        let mut st = self.lock();
        let h = self.cfg.health;
        let mut evict = Vec::new();
        let mut suspects = Vec::new();
        for m in st.members.values_mut() {
            // A member whose reader waits for room is not being read: its
            // silence is the master's doing.
            let silent = match m.held_back {
                true => Duration::ZERO,
                false => now.saturating_duration_since(m.last_seen),
            };
            let joining = now.saturating_duration_since(m.joined_at);
            if silent >= h.dead_after {
                evict.push((
                    m.name.clone(),
                    format!("no heartbeat for {} ms", silent.as_millis()),
                ));
            } else if m.presence == Presence::Joined && joining >= self.cfg.join_timeout {
                evict.push((
                    m.name.clone(),
                    format!(
                        "not ready {} ms after joining (the limit is {} ms)",
                        joining.as_millis(),
                        self.cfg.join_timeout.as_millis()
                    ),
                ));
            } else if silent >= h.suspect_after && !m.suspect {
                m.suspect = true;
                suspects.push(m.info());
            } else if let Some(stalled) = m.stalled(now)
                && stalled >= self.cfg.messaging.slow_consumer_timeout
            {
                evict.push((
                    m.name.clone(),
                    format!(
                        "slow consumer: it took no message for {} ms while senders waited ({} messages dropped)",
                        stalled.as_millis(),
                        m.dropped
                    ),
                ));
            }
        }
        for info in suspects {
            tracing::warn!(member.name = %info.name, "member suspect: heartbeats missing");
            self.publish(
                &mut st,
                event(pb::EventKind::Suspect, Some(info), "heartbeats missing"),
            );
        }
        for (name, reason) in evict {
            if let Some(m) = st.members.get(&name)
                && m.local
            {
                self.notify(Notice::Evicted {
                    name: name.to_string(),
                    pid: m.pid,
                    reason: reason.clone(),
                });
            }
            self.evict(&mut st, &name, &reason);
        }
        let expired: Vec<String> = st
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            let Some(p) = st.pending.remove(&key) else {
                continue;
            };
            if let Requester::Member(instance) = p.requester {
                let name = st.by_instance.get(&instance).cloned();
                if let Some(m) = name.and_then(|n| st.members.get_mut(&n)) {
                    let status =
                        Status::deadline_exceeded("no reply before the request's deadline");
                    m.push_result(p.original_id, Err(status));
                }
            }
        }
    }

    /// Removes a member whose stream ended or broke the protocol, if it is
    /// still this instance; `status` ends its stream.
    pub fn disconnect(&self, instance: &str, status: Status) {
        let mut st = self.lock();
        if let Some(name) = st.by_instance.get(instance).cloned() {
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
        st.by_instance.remove(&m.instance_id);
        m.cancel.cancel();
        let mut info = m.info();
        info.state = pb::MemberState::Gone as i32;
        let reason = status.message().to_string();
        tracing::info!(member.name = %name, instance = %m.instance_id, reason, "member left");
        m.outbound.close(status);
        let was_ready = m.presence != Presence::Joined;
        self.publish_to(
            st,
            event(pb::EventKind::Left, Some(info), &reason),
            was_ready,
        );
    }

    /// Asks a member to drain.
    pub fn drain(&self, member: &str) -> Result<(), Status> {
        let mut st = self.lock();
        let name = resolve_member(&st, member)?;
        let Some(m) = st.members.get_mut(&name) else {
            return Err(not_found(member));
        };
        m.presence = Presence::Draining;
        let info = m.info();
        let _ = m.push(frame(Out::Drain(pb::Drain {
            reason: "drain requested by an operator".into(),
            deadline_ms: 0,
        })));
        self.publish(
            &mut st,
            event(pb::EventKind::Draining, Some(info), "operator drain"),
        );
        Ok(())
    }

    fn notify(&self, notice: Notice) {
        if let Some(tx) = &self.notices
            && tx.try_send(notice).is_err()
        {
            tracing::warn!("supervisor notice dropped: its queue is full");
        }
    }

    /// Reserves `name` for the master's own slot; only a hello carrying
    /// `secret` may use it from now on.
    pub fn reserve(&self, name: &str, secret: &str) {
        let mut st = self.lock();
        st.secrets.insert(name.to_string(), secret.to_string());
        st.secret_holders.remove(name);
    }

    /// Frees a slot's name (scale down).
    pub fn release(&self, name: &str) {
        let mut st = self.lock();
        st.secrets.remove(name);
        st.secret_holders.remove(name);
    }

    /// Publishes an event that happened outside the registry (respawn,
    /// backoff, failed slot).
    pub fn announce(&self, kind: pb::EventKind, member: pb::MemberInfo, reason: &str) {
        let mut st = self.lock();
        self.publish(&mut st, event(kind, Some(member), reason));
    }

    /// Ends every member stream (master shutdown).
    pub fn close_all(&self, reason: &str) {
        let mut st = self.lock();
        st.by_instance.clear();
        for (_, m) in std::mem::take(&mut st.members) {
            m.cancel.cancel();
            m.outbound.finish(Status::unavailable(reason.to_string()));
        }
    }

    /// Every member, ordered by name.
    pub fn list(&self) -> Vec<pb::MemberInfo> {
        self.lock().members.values().map(Member::info).collect()
    }

    /// One member by name, instance id or `pid@host`.
    pub fn get(&self, member: &str) -> Result<pb::MemberInfo, Status> {
        let st = self.lock();
        let name = resolve_member(&st, member)?;
        st.members
            .get(&name)
            .map(Member::info)
            .ok_or_else(|| not_found(member))
    }

    /// Counts by role and state.
    pub fn summary(&self) -> Summary {
        let st = self.lock();
        let mut counts: BTreeMap<(Role, i32), u32> = BTreeMap::new();
        for m in st.members.values() {
            *counts.entry((m.role, m.info().state)).or_default() += 1;
        }
        Summary {
            counts: counts
                .into_iter()
                .map(|((r, s), n)| (r, pb::MemberState::try_from(s).unwrap_or_default(), n))
                .collect(),
            cluster_ready: st.cluster_ready,
        }
    }

    /// The current state as events, then a receiver of what follows; taken
    /// under one lock so nothing falls between them.
    pub fn subscribe(&self) -> (Vec<pb::ClusterEvent>, broadcast::Receiver<pb::ClusterEvent>) {
        let st = self.lock();
        let mut now: Vec<_> = st
            .members
            .values()
            .map(|m| event(pb::EventKind::Current, Some(m.info()), ""))
            .collect();
        if st.cluster_ready {
            now.push(event(pb::EventKind::ClusterReady, None, ""));
        }
        (now, self.events.subscribe())
    }

    fn publish(&self, st: &mut State, ev: pb::ClusterEvent) {
        self.publish_to(st, ev, true);
    }

    /// Publishes to `WatchEvents`, and with `members` to the members too.
    /// Members hear nothing of a member until it is ready (its JOINED, and
    /// its LEFT if it never was), and a member that has not reported ready
    /// yet hears no events: a join storm of silent members costs the others
    /// nothing.
    fn publish_to(&self, st: &mut State, ev: pb::ClusterEvent, members: bool) {
        // No watcher is fine.
        let _ = self.events.send(ev.clone());
        if !members {
            return;
        }
        for m in st.members.values_mut() {
            if m.presence != Presence::Joined {
                let _ = m.push(frame(Out::MemberEvent(ev.clone())));
            }
        }
    }
}

impl State {
    fn free_name(&self, role: Role) -> MemberName {
        let taken = |n: &str| self.members.contains_key(n) || self.secrets.contains_key(n);
        if role == Role::Agent && !taken("agent") {
            return MemberName::parse("agent").unwrap_or_else(|_| unreachable!());
        }
        (1u64..)
            .map(|i| format!("{role}-{i}"))
            .find(|n| !taken(n))
            .and_then(|n| MemberName::parse(n).ok())
            .unwrap_or_else(|| {
                unreachable!("names of the form role-N are valid and finitely many are taken")
            })
    }
}

/// Compares secrets in time independent of where they differ.
fn secrets_match(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn not_found(member: &str) -> Status {
    Status::not_found(format!(
        "no member named {member}: list them with Control/ListMembers (a name, an instance id or pid@host)"
    ))
}

/// Finds a member by name, instance id, or `pid@host`.
fn resolve_member(st: &State, key: &str) -> Result<MemberName, Status> {
    if let Some((name, _)) = st.members.get_key_value(key) {
        return Ok(name.clone());
    }
    if let Some(name) = st.by_instance.get(key) {
        return Ok(name.clone());
    }
    if let Some((pid, host)) = key.split_once('@')
        && let Ok(pid) = pid.parse::<u32>()
        && let Some(m) = st.members.values().find(|m| m.pid == pid && m.host == host)
    {
        return Ok(m.name.clone());
    }
    Err(not_found(key))
}

/// What to do with a delivery whose receiver's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Hand it back to the sender's reader to wait for room.
    Wait,
    /// Drop it and count it (`overflow = "drop"`).
    Drop,
    /// Queue it in the control lane, never waiting (held messages).
    Force,
}

/// Where an envelope went.
#[derive(Default)]
pub struct Routed {
    /// Receivers that have it queued.
    pub reached: u32,
    /// Deliveries waiting for room.
    pub waits: Vec<Wait>,
    /// It named one receiver.
    pub targeted: bool,
    /// The master-side id of a request.
    pub request: Option<String>,
    /// The instance a targeted envelope went to.
    pub to: Option<String>,
}

/// What `Control/Send` routed.
pub struct ControlSend {
    /// Where it went so far.
    pub routed: Routed,
    /// Yields the reply of a request.
    pub reply: Option<oneshot::Receiver<pb::Envelope>>,
}

/// Routes a plain send.
fn route(st: &mut State, from: &str, env: pb::Envelope, mode: Mode) -> Result<Routed, Status> {
    let target = Target::try_from(env.target.as_ref()).map_err(Status::invalid_argument)?;
    deliver(st, from, env, target, mode)
}

/// Stamps the sender and queues the envelope for every member the target
/// names. A broadcast to nobody is not an error; a targeted send to nobody is.
fn deliver(
    st: &mut State,
    from: &str,
    mut env: pb::Envelope,
    target: Target,
    mode: Mode,
) -> Result<Routed, Status> {
    if env.action.is_empty() {
        return Err(Status::invalid_argument(
            "envelope.action is empty: name what the message is about",
        ));
    }
    env.from = from.to_string();
    env.target = None;
    env.ack = false;
    let one = match target {
        Target::All | Target::Role(_) => {
            let role = match target {
                Target::Role(r) => Some(r),
                _ => None,
            };
            let mut routed = Routed::default();
            for m in st.members.values_mut() {
                if role.is_none_or(|r| m.role == r) {
                    // A member cut off or shedding misses a broadcast; the
                    // count tells the sender.
                    let _ = offer(m, from, env.clone(), mode, &mut routed);
                }
            }
            return Ok(routed);
        }
        Target::Member(key) => resolve_member(st, &key)?,
        Target::Random(role) => pick_random(st, role)?,
    };
    offer_to(st, from, &one, env, mode)
}

/// Queues a delivery for the one member `to`.
fn offer_to(
    st: &mut State,
    from: &str,
    to: &MemberName,
    env: pb::Envelope,
    mode: Mode,
) -> Result<Routed, Status> {
    let m = st
        .members
        .get_mut(to)
        .ok_or_else(|| not_found(to.as_str()))?;
    let mut routed = Routed {
        targeted: true,
        to: Some(m.instance_id.clone()),
        ..Routed::default()
    };
    match offer(m, from, env, mode, &mut routed) {
        Ok(()) => Ok(routed),
        Err(PushError::Full) => Err(Status::unavailable(format!(
            "{to} is not keeping up (its queue is full); the message was dropped"
        ))),
        Err(PushError::Closed) => Err(Status::unavailable(format!(
            "{to} is leaving; the message was dropped"
        ))),
    }
}

/// Queues one delivery: at once if there is room, else by `mode`. A
/// member's own messages never wait on its own queue.
fn offer(
    m: &mut Member,
    from: &str,
    env: pb::Envelope,
    mode: Mode,
    routed: &mut Routed,
) -> Result<(), PushError> {
    let queued = if mode == Mode::Force || m.name.as_str() == from {
        m.outbound.force_deliver(env).map_err(|e| (e, None))
    } else {
        m.outbound.try_deliver(env).map_err(|r| match r {
            Refused::Full(env) => (PushError::Full, Some(*env)),
            Refused::Closed => (PushError::Closed, None),
        })
    };
    match queued {
        Ok(()) => {
            routed.reached += 1;
            Ok(())
        }
        Err((PushError::Full, Some(envelope))) if mode == Mode::Wait => {
            routed.waits.push(Wait {
                to: m.outbound.clone(),
                name: m.name.clone(),
                envelope,
            });
            Ok(())
        }
        Err((e, _)) => {
            if e == PushError::Full {
                m.dropped += 1;
                m.outbound.mark_refused();
            }
            Err(e)
        }
    }
}

/// The next ready member of `role` after the last one picked, by name.
fn pick_random(st: &mut State, role: Role) -> Result<MemberName, Status> {
    let eligible = |m: &&Member| m.role == role && m.presence == Presence::Ready && !m.suspect;
    let after = st.last_random.get(&role);
    let next = after
        .and_then(|last| {
            st.members
                .range::<MemberName, _>((
                    std::ops::Bound::Excluded(last),
                    std::ops::Bound::Unbounded,
                ))
                .map(|(_, m)| m)
                .find(eligible)
        })
        .or_else(|| st.members.values().find(eligible))
        .map(|m| m.name.clone())
        .ok_or_else(|| Status::unavailable(format!("no ready {role} to receive it")))?;
    st.last_random.insert(role, next.clone());
    Ok(next)
}
