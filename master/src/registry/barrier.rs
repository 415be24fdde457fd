//! The ready barrier: messages held until ClusterReady, and announcing it
//! once the expected members are ready.

use super::*;

pub(super) struct Held {
    pub(super) sender: InstanceId,
    /// The sender's name when it sent: what `from` says if it has gone by
    /// ClusterReady (never the envelope's own `from`, which is the
    /// member's to make up).
    pub(super) name: MemberName,
    pub(super) request: bool,
    pub(super) envelope: pb::Envelope,
}

impl Registry {
    /// The members ClusterReady waits for, in words ("1 agent and 3 workers").
    pub fn expected(&self) -> String {
        let plural = |n: u32, what: &str| match n {
            1 => format!("1 {what}"),
            n => format!("{n} {what}s"),
        };
        let e = &self.cfg.expect;
        format!(
            "{} and {}",
            plural(e.agents, "agent"),
            plural(e.workers, "worker")
        )
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
        if st.cluster_ready {
            return self.dispatch(st, sender, env, request, self.mode(), now);
        }
        if st.held.len() >= self.cfg.messaging.held_messages {
            let status = RouteError::HeldFull(st.held.len());
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
            name: sender.clone(),
            request,
            envelope: env,
        });
        None
    }

    pub(super) fn check_cluster_ready(&self, st: &mut State, now: Instant) {
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
        self.publish(st, event(EventKind::ClusterReady, None, ""));
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
                    let _ = route(st, h.name.as_str(), h.envelope, Mode::Force);
                }
                None => {}
            }
        }
    }
}
