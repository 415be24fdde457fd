//! Stopping every local member: workers first, then the agent; each gets
//! SIGTERM, `drain_timeout` to finish its work and `kill_timeout` more to
//! exit, then SIGKILL.

use super::*;

impl Supervisor {
    pub(super) async fn shutdown(&mut self, rx: &mut mpsc::Receiver<Command>) {
        if !self.entries.is_empty() {
            tracing::info!("stopping local members: workers first, then the agent");
        }
        self.stage = Stage::Stopping;
        for role in [Role::Worker, Role::Agent] {
            let of_role: Vec<usize> = (0..self.entries.len())
                .filter(|i| self.entries[*i].role == role)
                .collect();
            // Every instance of the role retires: SIGTERM.
            for i in &of_role {
                self.apply(*i, Event::Stop);
            }
            // drain_timeout to finish in-flight work, kill_timeout more to
            // exit, as the docs and the units' TimeoutStopSec promise.
            let grace = self.cfg.policy.drain_timeout + self.cfg.kill_timeout;
            let deadline = tokio::time::Instant::now() + grace;
            let mut killed = false;
            loop {
                let pids: Vec<u32> = of_role
                    .iter()
                    .flat_map(|i| self.entries[*i].slot.pids())
                    .collect();
                if pids.is_empty() {
                    break;
                }
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        Some(Command::Exited { pid, outcome }) => {
                            if let Some(i) = of_role.iter().find(|i| self.entries[**i].slot.pids().any(|p| p == pid)) {
                                self.apply(*i, Event::Died { pid, outcome });
                            }
                        }
                        Some(Command::Scale { reply, .. }) | Some(Command::Restart { reply, .. }) => {
                            let _ = reply.send(Err(gone()));
                        }
                        Some(Command::Shutdown { reply }) => { let _ = reply.send(()); }
                        None => return,
                    },
                    _ = tokio::time::sleep_until(deadline), if !killed => {
                        for pid in pids {
                            tracing::warn!(pid, "still running after drain_timeout + kill_timeout; killing");
                            child::signal_group(pid, child::SIGKILL);
                        }
                        killed = true;
                    }
                }
            }
        }
        self.publish_views();
    }
}
