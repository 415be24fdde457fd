//! What the registry reports (ready, leaving, evicted) and what comes due
//! (backoff, start timeouts, drains, a late agent, a restart).

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
                self.start_due();
            }
            Notice::Unhealthy { name, pid, reason } => {
                let Some(i) = self.index_of(&name) else {
                    return;
                };
                if self.entries[i].slot.pid() != Some(pid) {
                    return;
                }
                // The master asked it to drain; it is replaced like on the
                // fatal-error path, without a gap.
                tracing::warn!(member.name = %name, pid, reason, "replacing an unhealthy member");
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
        let slots =
            (0..self.entries.len()).filter_map(|i| self.entries[i].slot.deadline(&self.policy(i)));
        let restart = self.restart.as_ref().map(|(r, _)| r.deadline());
        slots.chain(self.agent_deadline()).chain(restart).min()
    }

    pub(super) fn tick(&mut self) {
        let now = Instant::now();
        for i in 0..self.entries.len() {
            if self.entries[i]
                .slot
                .deadline(&self.policy(i))
                .is_some_and(|t| t <= now)
            {
                self.apply(i, Event::Tick);
            }
        }
        if self.agent_deadline().is_some_and(|t| t <= now) {
            tracing::error!(
                timeout_ms = self.cfg.policy.start_timeout.as_millis() as u64,
                "startup: the agent did not become ready in time; starting the workers without it (see its logs and ListMembers)"
            );
            self.agent_late = true;
        }
        if let Some((r, _)) = &self.restart {
            let progress = r.tick(now);
            self.advance(progress);
        }
        self.start_due();
    }
}
