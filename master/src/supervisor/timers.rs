//! What the registry reports (ready, leaving, evicted) and what comes due
//! (backoff, start timeouts, drains, the startup stages).

use super::*;

impl Supervisor {
    pub(super) fn notice(&mut self, notice: Notice) {
        match notice {
            Notice::Ready { name, pid } => {
                let Some(i) = self.index_of(&name) else {
                    return;
                };
                if self.entries[i].slot.pid() != Some(pid) {
                    return;
                }
                self.apply(i, Event::Ready { pid });
                if let Some(old) = self.entries[i].predecessor.take() {
                    if self.retiring.iter().any(|r| r.pid == old) {
                        // Fatal path: already on its drain clock; now that
                        // the replacement serves, ask it to finish.
                        child::signal_group(old, child::SIGTERM);
                    } else {
                        let (name, role) = (self.entries[i].name.clone(), self.entries[i].role);
                        self.retire(old, &name, role, true);
                    }
                }
                if let Some(r) = &mut self.restarting
                    && r.waiting.remove(&name)
                {
                    self.advance_restart();
                }
                self.check_stage();
            }
            Notice::Evicted { name, pid, reason } => {
                if let Some(i) = self.index_of(&name) {
                    self.apply(i, Event::Hung { pid, reason });
                }
            }
            Notice::Leaving { name, pid, replace } => {
                let Some(i) = self.index_of(&name) else {
                    return;
                };
                if !replace || self.entries[i].slot.pid() != Some(pid) {
                    return;
                }
                tracing::info!(member.name = %name, pid, "fatal error reported; starting a replacement now");
                // The old instance stops taking work by itself and gets
                // SIGTERM once the replacement is ready; it is killed if it
                // outlives drain_timeout.
                let role = self.entries[i].role;
                self.retire(pid, &name, role, false);
                self.entries[i].predecessor = Some(pid);
                self.apply(i, Event::Replace);
            }
        }
    }

    pub(super) fn retire(&mut self, pid: u32, name: &str, role: Role, sigterm: bool) {
        if sigterm {
            child::signal_group(pid, child::SIGTERM);
        }
        self.retiring.push(Retiring {
            pid,
            name: name.to_string(),
            role,
            deadline: Instant::now() + self.cfg.drain_timeout,
            killed: false,
        });
    }

    /// The earliest moment something is due.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let slots = self
            .entries
            .iter()
            .filter_map(|e| e.slot.deadline(&self.cfg.policy));
        let retiring = self
            .retiring
            .iter()
            .filter(|r| !r.killed)
            .map(|r| r.deadline);
        let stage = match self.stage {
            Stage::Agent { deadline } | Stage::Workers { deadline } => Some(deadline),
            _ => None,
        };
        let restart = self.restarting.as_ref().map(|r| r.deadline);
        slots.chain(retiring).chain(stage).chain(restart).min()
    }

    pub(super) fn tick(&mut self) {
        let now = Instant::now();
        for i in 0..self.entries.len() {
            if matches!(
                self.entries[i].slot.lifecycle,
                Lifecycle::Backoff { .. } | Lifecycle::Starting { .. }
            ) {
                self.apply(i, Event::Tick);
            }
        }
        for r in self
            .retiring
            .iter_mut()
            .filter(|r| !r.killed && r.deadline <= now)
        {
            tracing::warn!(
                pid = r.pid,
                "retiring instance outlived drain_timeout; killing it"
            );
            child::signal_group(r.pid, child::SIGKILL);
            r.killed = true;
        }
        match self.stage {
            Stage::Agent { deadline } | Stage::Workers { deadline } if deadline <= now => {
                let which = if matches!(self.stage, Stage::Agent { .. }) {
                    "the agent"
                } else {
                    "the workers"
                };
                tracing::error!(
                    timeout_ms = self.cfg.start_timeout.as_millis() as u64,
                    "startup: {which} did not become ready in time; see the members' logs and ListMembers"
                );
                if matches!(self.stage, Stage::Agent { .. }) {
                    self.start_workers();
                } else {
                    self.stage = Stage::Running;
                }
            }
            _ => {}
        }
        if let Some(r) = &self.restarting
            && r.deadline <= now
            && let Some(r) = self.restarting.take()
        {
            let pending: Vec<_> = r.waiting.iter().chain(r.queue.iter()).cloned().collect();
            let _ = r.reply.send(Err(Status::deadline_exceeded(format!(
                "restart did not finish in time; still waiting for {}",
                pending.join(", ")
            ))));
        }
    }

    pub(super) fn check_stage(&mut self) {
        let all_ready = |role| {
            self.entries
                .iter()
                .filter(|e| e.role == role)
                .all(|e| matches!(e.slot.lifecycle, Lifecycle::Ready { .. }))
        };
        match self.stage {
            Stage::Agent { .. } if all_ready(Role::Agent) => self.start_workers(),
            Stage::Workers { .. } if all_ready(Role::Worker) => {
                tracing::info!("all local members ready");
                self.stage = Stage::Running;
            }
            _ => {}
        }
    }
}
