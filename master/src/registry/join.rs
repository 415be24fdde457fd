//! Admission: checking a hello (bounded fields, reserved names, the agent
//! role, local children's one-time secrets) and registering the member.
use super::error::StreamError;
use super::events::event;
use super::members::{InstanceId, Member, Presence};
use super::secrets::Claim;
use super::watching::Watch;
use super::{CONTROL_SENDER, Joined, Registry, State, frame, settings};
use crate::model::{EventKind, MemberState};
use crate::outbound;
use cohort_proto::pb::master_frame::Kind as Out;
use cohort_proto::{MemberName, Role, pb};
use std::collections::HashMap;
use std::time::{Instant, SystemTime};
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// Most members listed in a welcome.
pub const WELCOME_MEMBERS: usize = 64;

/// Longest `hello.host` accepted (a DNS name is at most 253).
pub const MAX_HOST_LEN: usize = 255;

/// Longest `hello.version` accepted.
pub const MAX_VERSION_LEN: usize = 128;

/// Longest `hello.secret` accepted.
pub(super) const MAX_SECRET_LEN: usize = 128;

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
pub fn check_hello(hello: &pb::Hello) -> Result<(), Status> {
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
    if !hello.app.is_empty() {
        cohort_proto::check_app(&hello.app)
            .map_err(|e| Status::invalid_argument(format!("hello.{e}")))?;
    }
    check_labels("hello", &hello.labels)?;
    Ok(())
}

/// Refuses labels (`hello.labels`, `ready.labels`: `field`) over their
/// bounds.
pub fn check_labels(field: &str, labels: &HashMap<String, String>) -> Result<(), Status> {
    cohort_proto::check_labels(field, labels).map_err(Status::invalid_argument)
}

impl Registry {
    /// Registers a member from its hello.
    pub fn register(&self, hello: pb::Hello, via: Via, now: Instant) -> Result<Joined, Status> {
        check_hello(&hello)?;
        self.check_fence()?;
        let role = Role::try_from(hello.role)
            .map_err(|e| Status::invalid_argument(format!("hello.{e}")))?;
        // Workers are in an app (the `[worker]` section's by default);
        // agents in none.
        let app = match (role, hello.app.is_empty()) {
            (Role::Worker, true) => cohort_proto::DEFAULT_APP.to_string(),
            (Role::Worker, false) => hello.app.clone(),
            (Role::Agent, true) => String::new(),
            (Role::Agent, false) => {
                return Err(Status::invalid_argument(
                    "hello.app is for workers: an agent is in no app (unset COHORT_APP)",
                ));
            }
        };
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
        let local = match st.secrets.claim(name.as_str(), via, &hello.secret) {
            Claim::Free => false,
            Claim::Owner { holder } => {
                if let Some(holder) = holder
                    && st.members.by_instance(holder).is_some()
                {
                    return Err(Status::already_exists(format!(
                        "the one-time COHORT_SECRET of {name} is in use by instance {holder}: \
                         it serves one registration at a time"
                    )));
                }
                true
            }
            Claim::SecretOverNetwork => {
                return Err(Status::permission_denied(
                    "a one-time COHORT_SECRET is accepted only on the master's private socket, \
                     by the children it starts itself",
                ));
            }
            Claim::NotOwner => {
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
        let replacing = holder.is_some();
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
        // Bounded, whoever holds a token: the master's own children always
        // have their places, and a new instance of a name takes its
        // predecessor's (evicted above).
        let max = self.cfg.max_members;
        if max > 0 && !local && !replacing && st.members.len() >= max {
            self.metrics.joins_refused_full.inc();
            return Err(Status::resource_exhausted(format!(
                "the cluster is full: {} members, the most [limits] max_members allows; \
                 retry when members leave, or raise max_members",
                st.members.len()
            )));
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
        let watch = Watch::from_hello(hello.watch.as_ref()).map_err(Status::invalid_argument)?;
        // The newcomer's welcome carries the timings of the cluster it
        // makes; the others are told if they change.
        let members = st.members.len() + 1;
        self.rebudget(&mut st, members);
        let instance_id = InstanceId::new();
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
            app,
            started_at: SystemTime::now(),
            cpu_percent: 0.0,
            rss_bytes: 0,
            heartbeat_rtt: None,
            last_seen: now,
            timing: st.budget.timing(),
            next_timing: None,
            acked_at: None,
            over_memory: 0,
            probe_fails: 0,
            joined_at: now,
            dropped: 0,
            seen_taken: 0,
            stalled_since: None,
            held_back: false,
            outbound,
            cancel: cancel.clone(),
            watch,
            batches: hello.accepts_batches,
        };
        let info = member.info();
        let welcome = pb::Welcome {
            name: name.to_string(),
            instance_id: instance_id.to_string(),
            settings: Some(settings(st.budget.timing())),
            // Bounded: a welcome must fit in a frame however large the
            // cluster; Control/ListMembers lists them all.
            // Costs what it lists: a member that watches nobody (most
            // workers) costs the others nothing.
            members: match member.watch {
                Watch::Nothing => Vec::new(),
                _ => st
                    .members
                    .values()
                    .filter(|m| m.presence != Presence::Joined)
                    .filter(|m| member.watch.covers_named(m.role, m.name.as_str()))
                    .take(WELCOME_MEMBERS)
                    .map(|m| (&m.info()).into())
                    .collect(),
            },
            cluster_ready: st.barrier.is_open(),
            term: self.term(),
        };
        // The queue is empty: the welcome always fits.
        let _ = member.outbound.push(frame(Out::Welcome(welcome)));
        self.publish_to(&mut st, event(EventKind::Joined, Some(info), ""), false);
        if local {
            st.secrets.held_by(name.as_str(), instance_id.clone());
        }
        st.counts.add(role, MemberState::Joined);
        st.members.insert(member);
        tracing::info!(member.name = %name, member.role = %role, instance = %instance_id, "member joined");
        Ok(Joined {
            instance_id,
            name,
            stream,
            cancel,
            outbound: own,
        })
    }

    /// Notes that the member was heard from; returns its name.
    pub(super) fn seen(
        &self,
        st: &mut State,
        instance: &InstanceId,
        now: Instant,
    ) -> Result<MemberName, StreamError> {
        let name = st
            .members
            .by_instance(instance)
            .cloned()
            .ok_or(StreamError::Evicted)?;
        let m = st.members.get_mut(&name).ok_or(StreamError::Evicted)?;
        m.last_seen = now;
        if std::mem::replace(&mut m.suspect, false) {
            st.counts.moved(m.role, MemberState::Suspect, m.state());
            let info = m.info();
            tracing::info!(member.name = %name, "suspect member heard from again");
            self.publish(st, event(EventKind::Recovered, Some(info), ""));
        }
        Ok(name)
    }

    /// Reserves `name` for the master's own slot; only a hello carrying
    /// `secret` may use it from now on.
    pub fn reserve(&self, name: &str, secret: &str) {
        let mut st = self.lock();
        st.secrets.reserve(name, secret);
    }

    /// Frees a slot's name (scale down).
    pub fn release(&self, name: &str) {
        let mut st = self.lock();
        st.secrets.release(name);
    }
}
