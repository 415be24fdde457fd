//! Stopping every local member in the reverse of the start order (apps
//! before what they depend on, workers before the agent); each gets
//! SIGTERM, `drain_timeout` to finish its work and `kill_timeout` more to
//! exit, then SIGKILL.

use super::*;

impl Supervisor {
    pub(super) async fn shutdown(&mut self, rx: &mut mpsc::Receiver<Command>) {
        if !self.entries.is_empty() {
            tracing::info!(
                "stopping local members: apps before what they depend on, the agent last"
            );
        }
        self.stopping = true;
        for (n, group) in self.stop_order().into_iter().enumerate() {
            // Slots of an app a reload removed go with the first group.
            let of_group: Vec<usize> = (0..self.entries.len())
                .filter(|i| {
                    let app = &self.entries[*i].app;
                    group.contains(app) || (n == 0 && self.app_index(app).is_none())
                })
                .collect();
            // Every instance of the role retires: SIGTERM.
            for i in &of_group {
                self.apply(*i, Event::Stop);
            }
            // drain_timeout to finish in-flight work, kill_timeout more to
            // exit, as the docs and the units' TimeoutStopSec promise.
            let grace = self.cfg.policy.drain_timeout + self.cfg.kill_timeout;
            let deadline = tokio::time::Instant::now() + grace;
            let mut killed = false;
            loop {
                let pids: Vec<u32> = of_group
                    .iter()
                    .flat_map(|i| self.entries[*i].slot.pids())
                    .collect();
                if pids.is_empty() {
                    break;
                }
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        Some(Command::Exited { pid, outcome }) => {
                            if let Some(i) = of_group.iter().find(|i| self.entries[**i].slot.pids().any(|p| p == pid)) {
                                self.apply(*i, Event::Died { pid, outcome });
                            }
                        }
                        Some(Command::Scale { reply, .. }) | Some(Command::Restart { reply, .. }) => {
                            let _ = reply.send(Err(gone()));
                        }
                        Some(Command::Reload { reply, .. }) => {
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
