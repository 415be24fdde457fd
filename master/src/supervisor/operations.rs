//! Operator requests: scale a role, restart a member or a role (rolling
//! or all at once), replace one instance.

use super::*;

impl Supervisor {
    pub(super) fn scale(&mut self, role: Role, count: u32) -> Result<(), Status> {
        if role == Role::Agent && count > 1 {
            return Err(Status::invalid_argument("a cluster has 0 or 1 agent"));
        }
        let have = self.entries.iter().filter(|e| e.role == role).count() as u32;
        tracing::info!(%role, from = have, to = count, "scaling");
        for index in have + 1..=count {
            self.add_entry(role, index);
            let i = self.entries.len() - 1;
            self.apply(i, Event::Start);
        }
        for index in (count + 1..=have).rev() {
            let name = slot_name(role, index);
            let Some(i) = self.index_of(&name) else {
                continue;
            };
            let mut e = self.entries.remove(i);
            for pid in e.slot.pid().into_iter().chain(e.predecessor.take()) {
                self.retire(pid, &name, role, true);
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
        if self.restarting.is_some() {
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
                .filter(|e| e.role == r)
                .map(|e| e.name.clone())
                .collect(),
            (None, None) => {
                let _ = reply.send(Err(Status::invalid_argument(
                    "name a member or a role to restart",
                )));
                return;
            }
        };
        if names.is_empty() {
            let _ = reply.send(Ok(()));
            return;
        }
        let count = names.len() as u32;
        self.restarting = Some(Restarting {
            queue: names.into(),
            waiting: HashSet::new(),
            deadline: Instant::now() + self.cfg.start_timeout * count,
            reply,
        });
        if !rolling {
            // All at once: move the whole queue into `waiting` now.
            let all: Vec<String> = self
                .restarting
                .as_mut()
                .map(|r| r.queue.drain(..).collect())
                .unwrap_or_default();
            for name in all {
                self.replace(&name);
            }
        }
        self.advance_restart();
    }

    /// Starts a new instance of slot `name`; the old one keeps running
    /// until the new one is ready.
    pub(super) fn replace(&mut self, name: &str) {
        let Some(i) = self.index_of(name) else { return };
        if let Some(r) = &mut self.restarting {
            r.waiting.insert(name.to_string());
        }
        match self.entries[i].slot.pid() {
            Some(pid) => {
                self.entries[i].predecessor = Some(pid);
                self.apply(i, Event::Replace);
            }
            None => {
                self.apply(i, Event::Replace);
                self.apply(i, Event::Start);
            }
        }
    }

    pub(super) fn advance_restart(&mut self) {
        let Some(r) = &mut self.restarting else {
            return;
        };
        if !r.waiting.is_empty() {
            return;
        }
        match r.queue.pop_front() {
            Some(next) => self.replace(&next),
            None => {
                if let Some(r) = self.restarting.take() {
                    tracing::info!("restart finished");
                    let _ = r.reply.send(Ok(()));
                }
            }
        }
    }
}
