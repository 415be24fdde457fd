//! Request/reply: pending requests, their deadlines, and accepting a reply
//! only from the instance the request was delivered to.

use super::*;

/// Who waits for a reply.
pub enum Requester {
    /// A member, by instance id.
    Member(InstanceId),
    /// A `Control/Send` call.
    Control(oneshot::Sender<pb::Envelope>),
}

pub(super) struct Pending {
    pub(super) requester: Requester,
    pub(super) original_id: String,
    /// The instance the request was delivered to: the only one whose reply
    /// is accepted.
    pub(super) responder: Option<InstanceId>,
    pub(super) deadline: Instant,
    /// When it was sent on.
    pub(super) sent: Instant,
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
        if matches!(target, Target::All | Target::Role(_)) {
            return Err(RouteError::RequestToMany);
        }
        if st.pending.len() >= self.cfg.messaging.pending_requests {
            return Err(RouteError::TooManyPending(st.pending.len()));
        }
        // Unguessable, so no member can aim a reply at another's request.
        let rid = uuid::Uuid::new_v4().simple().to_string();
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
        let addressed = st
            .pending
            .get(&env.reply_to)
            .is_some_and(|p| p.responder.is_some() && p.responder.as_ref() == replier_instance);
        // A reply from anyone but the instance that got the request is
        // refused as if no such request existed: it reveals nothing.
        let pending = if addressed {
            st.pending.remove(&env.reply_to)
        } else {
            None
        };
        let Some(p) = pending else {
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
        let requester = st.by_instance.get(&instance).cloned();
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
                m.push_result(p.original_id, Err(RouteError::Deadline));
            }
        }
    }
}
