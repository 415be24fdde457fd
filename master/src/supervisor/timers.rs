//! What the registry reports (ready, leaving, evicted) and what comes due
//! (backoff, start timeouts, drains, the startup stages, a restart).

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
                if let Some((r, _)) = &mut self.restart {
                    let progress = r.ready(&name);
                    self.advance(progress);
                }
                self.check_stage();
            }
            Notice::OverMemory { name, pid, reason } => {
                let Some(i) = self.index_of(&name) else {
                    return;
                };
                if self.entries[i].slot.pid() != Some(pid) {
                    return;
                }
                // The master asked it to drain; it is replaced like on the
                // fatal-error path, without a gap.
                tracing::warn!(member.name = %name, pid, reason, "replacing a member over max_rss");
                self.entries[i].last_exit = format!("replaced: {reason}");
                self.apply(i, Event::Fatal { pid });
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
                // The old instance stops taking work by itself, gets
                // SIGTERM once the replacement is ready, and SIGKILL if it
                // outlives drain_timeout.
                tracing::info!(member.name = %name, pid, "fatal error reported; starting a replacement now");
                self.apply(i, Event::Fatal { pid });
            }
        }
    }

    /// The earliest moment something is due.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let slots = self
            .entries
            .iter()
            .filter_map(|e| e.slot.deadline(&self.cfg.policy));
        let stage = match self.stage {
            Stage::Agent { deadline } | Stage::Workers { deadline } => Some(deadline),
            Stage::Running | Stage::Stopping => None,
        };
        let restart = self.restart.as_ref().map(|(r, _)| r.deadline());
        slots.chain(stage).chain(restart).min()
    }

    pub(super) fn tick(&mut self) {
        let now = Instant::now();
        for i in 0..self.entries.len() {
            if self.entries[i]
                .slot
                .deadline(&self.cfg.policy)
                .is_some_and(|t| t <= now)
            {
                self.apply(i, Event::Tick);
            }
        }
        match self.stage {
            Stage::Agent { deadline } | Stage::Workers { deadline } if deadline <= now => {
                let which = if matches!(self.stage, Stage::Agent { .. }) {
                    "the agent"
                } else {
                    "the workers"
                };
                tracing::error!(
                    timeout_ms = self.cfg.policy.start_timeout.as_millis() as u64,
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
        if let Some((r, _)) = &self.restart {
            let progress = r.tick(now);
            self.advance(progress);
        }
    }

    pub(super) fn check_stage(&mut self) {
        let all_ready = |role| {
            self.entries
                .iter()
                .filter(|e| e.role == role && !e.removed)
                .all(|e| matches!(e.slot.lifecycle, Lifecycle::Ready { .. }))
        };
        match self.stage {
            Stage::Agent { .. } if all_ready(Role::Agent) => self.start_workers(),
            Stage::Workers { .. } if all_ready(Role::Worker) => {
                if !self.entries.is_empty() {
                    tracing::info!("all local members ready");
                }
                self.stage = Stage::Running;
            }
            _ => {}
        }
    }
}
