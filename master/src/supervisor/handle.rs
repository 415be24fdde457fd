//! The supervisor as the rest of the master sees it: a cloneable handle
//! sending commands, and the slots' views for `ListMembers`.

use super::*;

/// A slot as the Control API shows it.
#[derive(Clone, Debug)]
pub struct SlotView {
    /// The slot's member name.
    pub name: String,
    /// Its app.
    pub app: String,
    /// Its role.
    pub role: Role,
    /// Its state: STARTING, READY, BACKOFF, FAILED, or GONE when stopped.
    pub state: MemberState,
    /// Pid of the current instance (0 when none).
    pub pid: u32,
    /// Restarts after deaths.
    pub restarts: u32,
    /// When the next attempt starts, in BACKOFF.
    pub next_attempt_at: Option<SystemTime>,
    /// How the last instance ended, or why the slot FAILED.
    pub last_exit: String,
}

impl SlotView {
    /// The slot as a member snapshot (for slots with no registered
    /// instance, and for the supervisor's events).
    pub fn snapshot(&self) -> MemberSnapshot {
        MemberSnapshot {
            pid: self.pid,
            local: true,
            restarts: self.restarts,
            next_attempt_at: self.next_attempt_at,
            last_exit: self.last_exit.clone(),
            app: match self.role {
                Role::Agent => String::new(),
                Role::Worker => self.app.clone(),
            },
            ..MemberSnapshot::new(self.name.clone(), self.role, self.state)
        }
    }
}

pub(super) enum Command {
    Exited {
        pid: u32,
        outcome: Outcome,
    },
    Scale {
        app: String,
        count: u32,
        reply: oneshot::Sender<Result<(), Status>>,
    },
    Reload {
        apps: Vec<AppSpec>,
        reply: oneshot::Sender<Result<Vec<Change>, Status>>,
    },
    Restart {
        member: Option<String>,
        role: Option<Role>,
        rolling: bool,
        reply: oneshot::Sender<Result<(), Status>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A cloneable control of the supervisor task.
#[derive(Clone)]
pub struct SupervisorHandle {
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) views: Arc<Mutex<Vec<SlotView>>>,
}

pub(super) fn gone() -> Status {
    Status::unavailable("the master is shutting down")
}

impl SupervisorHandle {
    /// Every slot, in start order.
    pub fn views(&self) -> Vec<SlotView> {
        self.views.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets the number of local members of an app (`agent` and `worker`
    /// are the `[agent]` and `[worker]` sections').
    pub async fn scale(&self, app: &str, count: u32) -> Result<(), Status> {
        let (reply, rx) = oneshot::channel();
        let app = app.to_string();
        self.tx
            .send(Command::Scale { app, count, reply })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Runs `apps` from now on: starts new ones, stops removed ones,
    /// scales and rolls changed ones; returns what it did once the rolls
    /// are done.
    pub async fn reload(&self, apps: Vec<AppSpec>) -> Result<Vec<Change>, Status> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Reload { apps, reply })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Restarts one member or every member of a role; returns once the new
    /// instances are ready.
    pub async fn restart(
        &self,
        member: Option<String>,
        role: Option<Role>,
        rolling: bool,
    ) -> Result<(), Status> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Restart {
                member,
                role,
                rolling,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Ends the workers, then the agent; returns when all have exited.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }
}
