//! The ready barrier: messages held until ClusterReady, and announcing it
//! once the expected members are ready.

use super::error::RouteError;
use super::events::event;
use super::members::{InstanceId, Presence};
use super::router::{Mode, route};
use super::{Registry, State, frame};
use crate::flow::Stall;
use crate::model::EventKind;
use cohort_proto::pb::{self, master_frame::Kind as Out};
use cohort_proto::{MemberName, Role};
use std::collections::VecDeque;
use std::time::Instant;

/// A send or request that came before ClusterReady.
struct Held {
    sender: InstanceId,
    /// The sender's name when it sent: what `from` says if it has gone by
    /// ClusterReady (never the envelope's own `from`, which is the
    /// member's to make up).
    name: MemberName,
    request: bool,
    envelope: pb::Envelope,
}

/// Whether ClusterReady was announced, and what waits for it.
pub(super) struct Barrier {
    open: bool,
    held: VecDeque<Held>,
}

impl Barrier {
    /// A barrier open from the start when nothing is expected.
    pub(super) fn new(open: bool) -> Barrier {
        Barrier {
            open,
            held: VecDeque::new(),
        }
    }

    /// Whether ClusterReady was announced.
    pub(super) fn is_open(&self) -> bool {
        self.open
    }

    /// Keeps `held` for ClusterReady, up to `limit` messages.
    fn hold(&mut self, held: Held, limit: usize) -> Result<(), RouteError> {
        if self.held.len() >= limit {
            return Err(RouteError::HeldFull(self.held.len()));
        }
        self.held.push_back(held);
        Ok(())
    }

    /// Opens the barrier; returns what it held, in order.
    fn open(&mut self) -> VecDeque<Held> {
        self.open = true;
        std::mem::take(&mut self.held)
    }
}

impl Registry {
    /// The members ClusterReady waits for, in words ("1 agent and 3 workers").
    pub fn expected(&self) -> String {
        let plural = |n: u32, what: &str| match n {
            1 => format!("1 {what}"),
            n => format!("{n} {what}s"),
        };
        let e = &self.cfg.expect;
        let mut words = format!(
            "{} and {}",
            plural(e.agents, "agent"),
            plural(e.workers, "worker")
        );
        for a in &e.apps {
            words.push_str(&format!(", {} of app {}", a.count, a.app));
        }
        words
    }

    /// Takes a send or request from a member: held before ClusterReady,
    /// routed after it.
    pub(super) fn accept(
        &self,
        st: &mut State,
        sender: &MemberName,
        env: pb::Envelope,
        request: bool,
        now: Instant,
    ) -> Option<Stall> {
        if st.barrier.is_open() {
            return self.dispatch(st, sender, env, request, self.mode(), now);
        }
        let m = st.members.get_mut(sender)?;
        let id = env.id.clone();
        let held = Held {
            sender: m.instance_id.clone(),
            name: sender.clone(),
            request,
            envelope: env,
        };
        if let Err(full) = st.barrier.hold(held, self.cfg.messaging.held_messages) {
            m.push_result(id, Err(full));
        }
        None
    }

    pub(super) fn check_cluster_ready(&self, st: &mut State, now: Instant) {
        if st.barrier.is_open() {
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
        let short_of_an_app = self.cfg.expect.apps.iter().any(|want| {
            let n = st
                .members
                .values()
                .filter(|m| m.app == want.app && m.presence == Presence::Ready)
                .count();
            u32::try_from(n).unwrap_or(u32::MAX) < want.count
        });
        if short_of_an_app {
            return;
        }
        let held = st.barrier.open();
        tracing::info!(members = st.members.len(), "cluster ready");
        for m in st.members.values_mut() {
            let _ = m.push(frame(Out::ClusterReady(pb::ClusterReady {})));
        }
        self.publish(st, event(EventKind::ClusterReady, None, ""));
        self.ready_tx.send_replace(true);
        // Held messages go out at once, ahead of anything sent after this,
        // without waiting: they are bounded by `held_messages`.
        for h in held {
            let sender = st.members.by_instance(&h.sender).cloned();
            match sender {
                Some(name) => {
                    let _ = self.dispatch(st, &name, h.envelope, h.request, Mode::Force, now);
                }
                // The sender left while its message was held: route it
                // anyway, under the name it had, as at-most-once allows.
                None if !h.request => {
                    let _ = route(st, h.name.as_str(), h.envelope, Mode::Force);
                }
                None => {}
            }
        }
    }
}
