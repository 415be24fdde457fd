//! Stopping every local member: workers first, then the agent, SIGKILL
//! after `kill_timeout`.

use super::*;

impl Supervisor {
    pub(super) async fn shutdown(&mut self, rx: &mut mpsc::Receiver<Command>) {
        tracing::info!("stopping local members: workers first, then the agent");
        for role in [Role::Worker, Role::Agent] {
            let idx: Vec<usize> = (0..self.entries.len())
                .filter(|i| self.entries[*i].role == role)
                .collect();
            for i in idx {
                self.apply(i, Event::Stop);
            }
            let pids: Vec<u32> = self
                .live
                .iter()
                .filter(|(_, r)| **r == role)
                .map(|(p, _)| *p)
                .collect();
            for pid in &pids {
                child::signal_group(*pid, child::SIGTERM);
            }
            let deadline = tokio::time::Instant::now() + self.cfg.kill_timeout;
            let mut killed = false;
            while self.live.values().any(|r| *r == role) {
                tokio::select! {
                    cmd = rx.recv() => match cmd {
                        Some(Command::Exited { pid, .. }) => { self.live.remove(&pid); }
                        Some(Command::Scale { reply, .. }) | Some(Command::Restart { reply, .. }) => {
                            let _ = reply.send(Err(gone()));
                        }
                        Some(Command::Shutdown { reply }) => { let _ = reply.send(()); }
                        None => return,
                    },
                    _ = tokio::time::sleep_until(deadline), if !killed => {
                        for (pid, r) in &self.live {
                            if *r == role {
                                tracing::warn!(pid, "still running after kill_timeout; killing");
                                child::signal_group(*pid, child::SIGKILL);
                            }
                        }
                        killed = true;
                    }
                }
            }
        }
        self.publish_views();
    }
}
