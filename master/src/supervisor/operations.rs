//! Operator requests: scale a role, restart a member or a role (rolling
//! or all at once).

use super::*;

impl Supervisor {
    pub(super) fn scale(&mut self, app: &str, count: u32) -> Result<(), Status> {
        let Some(a) = self.app_index(app) else {
            let names: Vec<&str> = self.apps.iter().map(|a| a.spec.name.as_str()).collect();
            return Err(Status::not_found(format!(
                "no app named {app} on this master (apps: {})",
                names.join(", ")
            )));
        };
        if self.apps[a].spec.role == Role::Agent && count > 1 {
            return Err(Status::invalid_argument("a cluster has 0 or 1 agent"));
        }
        if count > crate::config::MAX_LOCAL_MEMBERS {
            return Err(Status::invalid_argument(format!(
                "count {count}: a master runs at most {} local members of an app",
                crate::config::MAX_LOCAL_MEMBERS
            )));
        }
        if count > 0 && self.cfg.master_url.is_none() {
            return Err(no_socket());
        }
        tracing::info!(app, from = self.apps[a].spec.count, to = count, "scaling");
        self.apps[a].spec.count = count;
        self.resize(a);
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
            // Every member of the role but one-shots: a restart must not
            // run a finished job again.
            (None, Some(r)) => (0..self.entries.len())
                .filter(|i| {
                    let e = &self.entries[*i];
                    e.role == r && !e.removed && self.policy(*i).restart != RestartMode::Never
                })
                .map(|i| self.entries[i].name.clone())
                .collect(),
            (None, None) => {
                let _ = reply.send(Err(Status::invalid_argument(
                    "name a member or a role to restart",
                )));
                return;
            }
        };
        let done: Done = Box::new(move |r| {
            let _ = reply.send(r);
        });
        self.roll(names, rolling, done);
    }

    /// Replaces the slots `names` (one at a time when `rolling`); `done`
    /// hears when their new instances are ready, or the deadline passed.
    pub(super) fn roll(&mut self, names: Vec<String>, rolling: bool, done: Done) {
        let deadline = Instant::now() + self.cfg.policy.start_timeout * names.len().max(1) as u32;
        let (rollout, first) = Rollout::begin(names, rolling, deadline);
        self.restart = Some((rollout, done));
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
                    if let Some((_, done)) = self.restart.take() {
                        tracing::info!("restart finished");
                        done(Ok(()));
                    }
                }
                Progress::Expired(pending) => {
                    if let Some((_, done)) = self.restart.take() {
                        done(Err(Status::deadline_exceeded(format!(
                            "restart did not finish in time; still waiting for {}",
                            pending.join(", ")
                        ))));
                    }
                }
            }
        }
    }
}

/// Local members asked of a master that has no socket for them.
pub(super) fn no_socket() -> Status {
    Status::failed_precondition(
        "this master was started with no local members, so it has no socket for children; \
         start it with a count above 0 (or an [[app]]) to run local members",
    )
}
