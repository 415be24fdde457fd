//! Operator requests: scale a role, restart a member or a role (rolling
//! or all at once).

use super::*;

impl Supervisor {
    pub(super) fn scale(&mut self, role: Role, count: u32) -> Result<(), Status> {
        if role == Role::Agent && count > 1 {
            return Err(Status::invalid_argument("a cluster has 0 or 1 agent"));
        }
        if count > 0 && self.cfg.master_url.is_none() {
            return Err(Status::failed_precondition(
                "this master was started with no local members ([agent] count = 0 and [worker] count = 0), so it has no socket for children; start it with a count above 0 to run local members",
            ));
        }
        let have = self
            .entries
            .iter()
            .filter(|e| e.role == role && !e.removed)
            .count() as u32;
        tracing::info!(%role, from = have, to = count, "scaling");
        for index in have + 1..=count {
            let name = slot_name(role, index);
            // A slot scaled away whose old instance is still finishing
            // comes back as it is.
            let i = match self.entries.iter().position(|e| e.name == name) {
                Some(i) => {
                    self.entries[i].removed = false;
                    i
                }
                None => {
                    self.add_entry(role, index);
                    self.entries.len() - 1
                }
            };
            self.apply(i, Event::Start);
        }
        for index in (count + 1..=have).rev() {
            let name = slot_name(role, index);
            let Some(i) = self.index_of(&name) else {
                continue;
            };
            self.apply(i, Event::Stop);
            self.entries[i].removed = true;
            if self.entries[i].slot.pids().next().is_none() {
                self.entries.remove(i);
            }
            self.registry.release(&name);
        }
        Ok(())
    }

    pub(super) fn restart(
        &mut self,
        member: Option<String>,
        role: Option<Role>,
        rolling: bool,
        reply: oneshot::Sender<Result<(), Status>>,
    ) {
        if self.restart.is_some() {
            let _ = reply.send(Err(Status::failed_precondition(
                "a restart is already in progress; wait for it to finish",
            )));
            return;
        }
        let names: Vec<String> = match (member, role) {
            (Some(m), _) => match self.index_of(&m) {
                Some(_) => vec![m],
                None => {
                    let _ = reply.send(Err(Status::not_found(format!(
                        "no local member named {m}: Restart works on members this master started (see ListMembers, local: true)"
                    ))));
                    return;
                }
            },
            (None, Some(r)) => self
                .entries
                .iter()
                .filter(|e| e.role == r && !e.removed)
                .map(|e| e.name.clone())
                .collect(),
            (None, None) => {
                let _ = reply.send(Err(Status::invalid_argument(
                    "name a member or a role to restart",
                )));
                return;
            }
        };
        let deadline = Instant::now() + self.cfg.policy.start_timeout * names.len() as u32;
        let (rollout, first) = Rollout::begin(names, rolling, deadline);
        self.restart = Some((rollout, reply));
        self.advance(first);
    }

    /// Carries out what the restart in progress asks for, until it waits.
    pub(super) fn advance(&mut self, progress: Progress) {
        let mut next = VecDeque::from([progress]);
        while let Some(progress) = next.pop_front() {
            match progress {
                Progress::Replace(names) => {
                    for name in names {
                        match self.index_of(&name) {
                            Some(i) => self.apply(i, Event::Replace),
                            // Scaled away meanwhile: nothing to wait for.
                            None => next.extend(self.restart.as_mut().map(|(r, _)| r.ready(&name))),
                        }
                    }
                }
                Progress::Waiting => {}
                Progress::Finished => {
                    if let Some((_, reply)) = self.restart.take() {
                        tracing::info!("restart finished");
                        let _ = reply.send(Ok(()));
                    }
                }
                Progress::Expired(pending) => {
                    if let Some((_, reply)) = self.restart.take() {
                        let _ = reply.send(Err(Status::deadline_exceeded(format!(
                            "restart did not finish in time; still waiting for {}",
                            pending.join(", ")
                        ))));
                    }
                }
            }
        }
    }
}
