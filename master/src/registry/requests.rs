//! Request/reply: pending requests, their deadlines, and accepting a reply
//! only from the instance the request was delivered to.

use super::error::{MAX_REQUEST_TIMEOUT, RouteError};
use super::members::InstanceId;
use super::router::{Mode, Routed, deliver, offer_to};
use super::{DEFAULT_REQUEST_TIMEOUT, Registry, State};
use crate::flow::{Stall, Then};
use cohort_proto::frame::Encoded;
use cohort_proto::{MemberName, Target, pb};
use std::collections::HashMap;
use std::time::Instant;
use tokio::sync::oneshot;

/// Who waits for a reply.
pub enum Requester {
    /// A member, by instance id.
    Member(InstanceId),
    /// A `Control/Send` call.
    Control(oneshot::Sender<pb::Envelope>),
}

pub(super) struct Pending {
    requester: Requester,
    original_id: String,
    /// The instance the request was delivered to: the only one whose reply
    /// is accepted.
    responder: Option<InstanceId>,
    deadline: Instant,
    /// When it was sent on.
    sent: Instant,
}

/// The requests waiting for their replies, by the id the master gave each.
#[derive(Default)]
pub(super) struct Requests {
    pending: HashMap<String, Pending>,
}

impl Requests {
    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    /// A fresh id for a request: unguessable, so no member can aim a reply
    /// at another's request.
    fn new_id() -> String {
        uuid::Uuid::new_v4().simple().to_string()
    }

    fn insert(&mut self, id: String, request: Pending) {
        self.pending.insert(id, request);
    }

    /// The request `id` answered by `replier`, if it waits and went to
    /// that instance; anyone else's answer leaves it waiting.
    fn answer(&mut self, id: &str, replier: Option<&InstanceId>) -> Option<Pending> {
        let addressed = self
            .pending
            .get(id)
            .is_some_and(|p| p.responder.is_some() && p.responder.as_ref() == replier);
        if addressed {
            self.pending.remove(id)
        } else {
            None
        }
    }

    /// Forgets a request that can no longer be answered.
    pub(super) fn cancel(&mut self, id: &str) {
        self.pending.remove(id);
    }

    /// Takes out every request past its deadline.
    fn expired(&mut self, now: Instant) -> Vec<Pending> {
        let ids: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        ids.iter()
            .filter_map(|id| self.pending.remove(id))
            .collect()
    }
}

impl Registry {
    pub(super) fn route_request(
        &self,
        st: &mut State,
        from: &str,
        requester: Requester,
        mut env: pb::Envelope,
        mode: Mode,
        now: Instant,
    ) -> Result<Routed, RouteError> {
        if !env.reply_to.is_empty() {
            return Err(RouteError::ReplyToOutsideReply);
        }
        let target = Target::try_from(env.target.as_ref()).map_err(RouteError::BadTarget)?;
        if matches!(target, Target::All | Target::Role(_) | Target::App(_)) {
            return Err(RouteError::RequestToMany);
        }
        if st.pending.len() >= self.cfg.messaging.pending_requests {
            return Err(RouteError::TooManyPending(st.pending.len()));
        }
        let rid = Requests::new_id();
        let original_id = std::mem::replace(&mut env.id, rid.clone());
        let timeout = cohort_proto::time::span(env.timeout.as_ref())
            .filter(|t| !t.is_zero())
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT);
        if timeout > MAX_REQUEST_TIMEOUT {
            return Err(RouteError::TimeoutTooLong(timeout.as_secs()));
        }
        env.expects_reply = true;
        let mut routed = deliver(st, from, env, target, mode)?;
        st.pending.insert(
            rid.clone(),
            Pending {
                requester,
                original_id,
                responder: routed.to.take(),
                deadline: now + timeout,
                sent: now,
            },
        );
        routed.request = Some(rid);
        Ok(routed)
    }

    pub(super) fn reply(
        &self,
        st: &mut State,
        replier: &MemberName,
        mut env: pb::Envelope,
    ) -> Option<Stall> {
        let replier_instance = st.members.get(replier).map(|m| &m.instance_id);
        // A reply from anyone but the instance that got the request is
        // refused as if no such request existed: it reveals nothing.
        let Some(p) = st.pending.answer(&env.reply_to, replier_instance) else {
            let status = RouteError::NoSuchRequest(env.reply_to.clone());
            if let Some(m) = st.members.get_mut(replier) {
                m.push_result(env.id, Err(status));
            }
            return None;
        };
        self.metrics
            .request_seconds
            .observe(p.sent.elapsed().as_secs_f64());
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
        let requester = st.members.by_instance(&instance).cloned();
        let routed = match requester {
            Some(name) => offer_to(st, replier.as_str(), &name, Encoded::new(&env), self.mode()),
            None => Err(RouteError::RequesterLeft),
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
}

/// Answers DEADLINE_EXCEEDED for every request past its deadline.
pub(super) fn expire_requests(st: &mut State, now: Instant) {
    for p in st.pending.expired(now) {
        if let Requester::Member(instance) = p.requester {
            let name = st.members.by_instance(&instance).cloned();
            if let Some(m) = name.and_then(|n| st.members.get_mut(&n)) {
                m.push_result(p.original_id, Err(RouteError::Deadline));
            }
        }
    }
}
