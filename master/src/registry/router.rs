//! Routing: targets → deliveries into the members' queues, with what to do
//! when a queue is full (wait, drop, or force).
use super::error::RouteError;
use super::members::{InstanceId, Member, Presence, not_found, resolve_member};
use super::requests::Requester;
use super::{CONTROL_SENDER, Registry, State};
use crate::flow::{Outcome, Stall, Then, Wait};
use crate::outbound::{PushError, Refused};
use cohort_proto::frame::Encoded;
use cohort_proto::{MemberName, Role, Target, pb};
use std::time::Instant;
use tokio::sync::oneshot;

/// What to do with a delivery whose receiver's queue is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
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
    pub to: Option<InstanceId>,
}

/// What `Control/Send` routed.
pub struct ControlSend {
    /// Where it went so far.
    pub routed: Routed,
    /// Yields the reply of a request.
    pub reply: Option<oneshot::Receiver<pb::Envelope>>,
}

/// Routes a plain send.
pub(super) fn route(
    st: &mut State,
    from: &str,
    env: pb::Envelope,
    mode: Mode,
) -> Result<Routed, RouteError> {
    if !env.reply_to.is_empty() {
        return Err(RouteError::ReplyToOutsideReply);
    }
    if env.expects_reply {
        return Err(RouteError::ExpectsReplyOnSend);
    }
    let target = Target::try_from(env.target.as_ref()).map_err(RouteError::BadTarget)?;
    deliver(st, from, env, target, mode)
}

/// Stamps the sender and queues the envelope for every member the target
/// names. A broadcast to nobody is not an error; a targeted send to nobody is.
/// `reply_to` and `expects_reply` pass through as the caller left them:
/// only the request and reply paths may set them.
pub(super) fn deliver(
    st: &mut State,
    from: &str,
    mut env: pb::Envelope,
    target: Target,
    mode: Mode,
) -> Result<Routed, RouteError> {
    if env.action.is_empty() {
        return Err(RouteError::EmptyAction);
    }
    env.from = from.to_string();
    env.target = None;
    env.ack = false;
    // Encoded once, however many receive it.
    let env = Encoded::new(&env);
    let one = match target {
        Target::All | Target::Role(_) | Target::App(_) => {
            let wanted = |m: &Member| match &target {
                Target::Role(r) => m.role == *r,
                Target::App(a) => m.app == *a,
                _ => true,
            };
            let mut routed = Routed::default();
            for m in st.members.values_mut() {
                if wanted(m) {
                    // A member cut off or shedding misses a broadcast; the
                    // count tells the sender.
                    let _ = offer(m, from, env.clone(), mode, &mut routed);
                }
            }
            return Ok(routed);
        }
        Target::Member(key) => resolve_member(st, &key)?,
        Target::Random(role) => pick_random(st, Pool::Role(role))?,
        Target::RandomApp(app) => pick_random(st, Pool::App(app))?,
    };
    offer_to(st, from, &one, env, mode)
}

/// Queues a delivery for the one member `to`.
pub(super) fn offer_to(
    st: &mut State,
    from: &str,
    to: &MemberName,
    env: Encoded,
    mode: Mode,
) -> Result<Routed, RouteError> {
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
        Err(PushError::Full) => Err(RouteError::Full(to.clone())),
        Err(PushError::Closed) => Err(RouteError::Leaving(to.clone())),
    }
}

/// Queues one delivery: at once if there is room, else by `mode`. A
/// member's own messages never wait on its own queue.
pub(super) fn offer(
    m: &mut Member,
    from: &str,
    env: Encoded,
    mode: Mode,
    routed: &mut Routed,
) -> Result<(), PushError> {
    let queued = if mode == Mode::Force || m.name.as_str() == from {
        m.outbound.force_deliver(env).map_err(|e| (e, None))
    } else {
        m.outbound.try_deliver(env).map_err(|r| match r {
            Refused::Full(env) => (PushError::Full, Some(env)),
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

/// Round-robin places kept at most (roles and apps).
const MAX_POOLS: usize = 4096;

/// Whom a random target picks from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Pool {
    /// The members of a role.
    Role(Role),
    /// The members of an app.
    App(String),
}

/// One ready member of `pool`: the next after the last one picked, by name.
pub(super) fn pick_random(st: &mut State, pool: Pool) -> Result<MemberName, RouteError> {
    let of_pool = |m: &Member| match &pool {
        Pool::Role(r) => m.role == *r,
        Pool::App(a) => m.app == *a,
    };
    let eligible = |m: &&Member| of_pool(m) && m.presence == Presence::Ready && !m.suspect;
    let after = st.last_random.get(&pool);
    let next = after
        .and_then(|last| {
            st.members
                .after(std::ops::Bound::Excluded(last))
                .find(eligible)
        })
        .or_else(|| st.members.ordered().find(eligible))
        .map(|m| m.name.clone())
        .ok_or_else(|| match &pool {
            Pool::Role(r) => RouteError::NoneReady(*r),
            Pool::App(a) => RouteError::NoneReadyInApp(a.clone()),
        })?;
    // Apps come and go with members: forget old places rather than grow.
    if st.last_random.len() >= MAX_POOLS {
        st.last_random.clear();
    }
    st.last_random.insert(pool, next.clone());
    Ok(next)
}

impl Registry {
    /// Routes the envelopes of one batch in order, up to the first that
    /// must wait; the rest wait with it.
    pub(super) fn accept_all(
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
        instance: &InstanceId,
        then: Then,
        outcome: Outcome,
        rest: Vec<pb::Envelope>,
        now: Instant,
    ) -> Option<Stall> {
        let mut st = self.lock();
        let name = st.members.by_instance(instance).cloned()?;
        if let Some(rid) = &then.request
            && !outcome.cut_off.is_empty()
        {
            st.pending.cancel(rid);
        }
        let result = match outcome.cut_off.first() {
            Some(cut) if then.targeted || then.request.is_some() => {
                Err(RouteError::CutOff(cut.clone()))
            }
            _ => Ok(then.reached + outcome.reached),
        };
        if (then.ack || result.is_err())
            && let Some(m) = st.members.get_mut(&name)
        {
            m.push_result(then.id, result);
        }
        self.accept_all(&mut st, &name, rest, now)
    }

    pub(super) fn dispatch(
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
        if let Ok(routed) = &outcome {
            self.metrics.note_routed(routed);
        }
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
                tracing::debug!(member.name = %sender, error = %status, "send failed");
                if let Some(m) = st.members.get_mut(sender) {
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
    ) -> Result<ControlSend, RouteError> {
        let mut st = self.lock();
        let mode = self.mode();
        if expect_reply {
            let (tx, rx) = oneshot::channel();
            let requester = Requester::Control(tx);
            let routed = self.route_request(&mut st, CONTROL_SENDER, requester, env, mode, now)?;
            self.metrics.note_routed(&routed);
            Ok(ControlSend {
                routed,
                reply: Some(rx),
            })
        } else {
            let routed = route(&mut st, CONTROL_SENDER, env, mode)?;
            self.metrics.note_routed(&routed);
            Ok(ControlSend {
                routed,
                reply: None,
            })
        }
    }
}
