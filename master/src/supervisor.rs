//! Local supervision: the master starts its own agent and workers, waits on
//! them, respawns them by the restart policy, replaces them without a gap,
//! and ends them on shutdown.
//!
//! One task owns every slot and receives commands (child exits, notices
//! from the registry, operator requests); decisions come from the pure
//! state machine in [`slot`], side effects from [`spawn`].

mod handle;
mod operations;
mod output;
pub mod rollout;
mod shutdown;
pub mod slot;
pub mod spawn;
pub mod stale;
mod timers;

use handle::*;
pub use handle::{SlotView, SupervisorHandle};

use crate::model::Notice;
use crate::model::{EventKind, MemberSnapshot, MemberState};
use crate::registry::Registry;
use cohort_process::child;
use cohort_proto::{Role, env};
use rollout::{Progress, Rollout};
use slot::{Action, Event, Lifecycle, Outcome, Policy, Slot};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// What the supervisor runs.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// Local agents (0 or 1).
    pub agents: u32,
    /// Local workers.
    pub workers: u32,
    /// The agent's command.
    pub agent_command: Vec<String>,
    /// The workers' command.
    pub worker_command: Vec<String>,
    /// Restart policy, with the drain and start timeouts.
    pub policy: Policy,
    /// At shutdown, how long after `drain_timeout` before SIGKILL.
    pub kill_timeout: Duration,
    /// `unix://PATH` of the master's private socket, for `COHORT_MASTER`;
    /// `None` when it was started with no local members (then it runs none).
    pub master_url: Option<String>,
    /// The bearer token handed to local children (`COHORT_TOKEN`).
    pub token: Option<String>,
    /// Shared listeners handed to workers.
    pub listeners: Vec<(String, RawFd)>,
}

struct Entry {
    role: Role,
    name: String,
    slot: Slot,
    last_exit: String,
    /// Scaled away: kept only until its retiring instances have ended.
    removed: bool,
}

enum Stage {
    Agent {
        deadline: Instant,
    },
    Workers {
        deadline: Instant,
    },
    Running,
    /// The master is shutting down: instances retire, none start.
    Stopping,
}

struct Supervisor {
    cfg: SupervisorConfig,
    registry: Arc<Registry>,
    entries: Vec<Entry>,
    stage: Stage,
    restart: Option<(Rollout, oneshot::Sender<Result<(), Status>>)>,
    tx: mpsc::Sender<Command>,
    views: Arc<Mutex<Vec<SlotView>>>,
}

fn wall_clock(at: Instant) -> SystemTime {
    SystemTime::now() + at.saturating_duration_since(Instant::now())
}

fn slot_name(role: Role, index: u32) -> String {
    match (role, index) {
        (Role::Agent, 1) => "agent".into(),
        _ => format!("{role}-{index}"),
    }
}

/// Starts the supervisor task. `notices` carries the registry's reports on
/// local members; the task runs until [`SupervisorHandle::shutdown`].
pub fn start(
    cfg: SupervisorConfig,
    registry: Arc<Registry>,
    notices: mpsc::Receiver<Notice>,
) -> (SupervisorHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(256);
    let views = Arc::new(Mutex::new(Vec::new()));
    let now = Instant::now();
    let mut sup = Supervisor {
        entries: Vec::new(),
        stage: Stage::Agent {
            deadline: now + cfg.policy.start_timeout,
        },
        restart: None,
        tx: tx.clone(),
        views: views.clone(),
        registry,
        cfg,
    };
    let task = tokio::spawn(async move { sup.run(rx, notices).await });
    (SupervisorHandle { tx, views }, task)
}

impl Supervisor {
    async fn run(&mut self, mut rx: mpsc::Receiver<Command>, mut notices: mpsc::Receiver<Notice>) {
        for i in 1..=self.cfg.agents {
            self.add_entry(Role::Agent, i);
        }
        for i in 1..=self.cfg.workers {
            self.add_entry(Role::Worker, i);
        }
        if self.cfg.agents > 0 {
            self.start_role(Role::Agent);
        } else {
            self.start_workers();
        }
        self.publish_views();
        loop {
            // Sleep until the next deadline (backoff, start timeout, drain,
            // startup stage, restart), not on a polling tick.
            let next = self.next_deadline();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(Command::Shutdown { reply }) => {
                        self.shutdown(&mut rx).await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(cmd) => self.handle(cmd),
                    None => return,
                },
                Some(notice) = notices.recv() => self.notice(notice),
                _ = tokio::time::sleep_until(next.unwrap_or_else(far_future).into()), if next.is_some() => {
                    self.tick()
                }
            }
            self.publish_views();
        }
    }

    fn add_entry(&mut self, role: Role, index: u32) {
        self.entries.push(Entry {
            role,
            name: slot_name(role, index),
            slot: Slot::default(),
            last_exit: String::new(),
            removed: false,
        });
    }

    fn start_role(&mut self, role: Role) {
        let idx: Vec<usize> = (0..self.entries.len())
            .filter(|i| self.entries[*i].role == role)
            .collect();
        for i in idx {
            self.apply(i, Event::Start);
        }
    }

    fn start_workers(&mut self) {
        self.stage = Stage::Workers {
            deadline: Instant::now() + self.cfg.policy.start_timeout,
        };
        self.start_role(Role::Worker);
        self.check_stage();
    }

    /// The slot named `name`, unless it was scaled away.
    fn index_of(&self, name: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.name == name && !e.removed)
    }

    /// Feeds an event to slot `i` and carries out the resulting actions.
    fn apply(&mut self, i: usize, event: Event) {
        let mut events = VecDeque::from([event]);
        while let Some(ev) = events.pop_front() {
            let now = Instant::now();
            let actions = slot::step(&mut self.entries[i].slot, ev, &self.cfg.policy, now);
            for action in actions {
                match action {
                    Action::Spawn => events.push_back(self.spawn(i)),
                    Action::Respawned { outcome } => {
                        tracing::warn!(member.name = %self.entries[i].name, %outcome, "member died; respawning");
                        self.entries[i].last_exit = outcome.to_string();
                        self.report(i, EventKind::Respawned, &outcome.to_string());
                    }
                    Action::Backoff { delay, outcome } => {
                        let delay_ms = delay.as_millis() as u64;
                        tracing::warn!(member.name = %self.entries[i].name, %outcome, delay_ms, "member died early; backing off");
                        self.entries[i].last_exit = outcome.to_string();
                        let reason = format!("{outcome}; next attempt in {delay_ms} ms");
                        self.report(i, EventKind::Backoff, &reason);
                    }
                    Action::Failed { reason } => {
                        tracing::error!(member.name = %self.entries[i].name, reason, "slot failed: too many restarts");
                        self.entries[i].last_exit = reason.clone();
                        self.report(i, EventKind::Failed, &reason);
                    }
                    Action::Kill { pid, reason } => {
                        tracing::warn!(member.name = %self.entries[i].name, pid, reason, "killing the member's process group");
                        child::signal_group(pid, child::SIGKILL);
                    }
                    Action::Terminate { pid } => {
                        tracing::info!(member.name = %self.entries[i].name, pid, "asking the retiring instance to finish");
                        child::signal_group(pid, child::SIGTERM);
                    }
                    Action::Retired { pid, outcome } => {
                        let e = &self.entries[i];
                        let what = match self.stage {
                            Stage::Stopping => "stopped at shutdown",
                            _ => "replaced instance exited",
                        };
                        tracing::info!(member.name = %e.name, pid, %outcome, "{what}");
                        let gone = MemberSnapshot {
                            state: MemberState::Gone,
                            pid,
                            next_attempt_at: None,
                            last_exit: outcome.to_string(),
                            ..self.view(i).snapshot()
                        };
                        let reason = format!("{what}: {outcome}");
                        self.registry.announce_exit(gone, &reason);
                    }
                }
            }
        }
    }

    fn report(&self, i: usize, kind: EventKind, reason: &str) {
        self.registry
            .announce(kind, self.view(i).snapshot(), reason);
    }

    /// Spawns slot `i`'s next instance; returns the event that follows.
    fn spawn(&mut self, i: usize) -> Event {
        let (role, name) = (self.entries[i].role, self.entries[i].name.clone());
        let Some(url) = self.cfg.master_url.clone() else {
            let reason = "this master has no local members' socket".into();
            return Event::SpawnFailed { reason };
        };
        let secret = uuid::Uuid::new_v4().simple().to_string();
        self.registry.reserve(&name, &secret);
        let command = match role {
            Role::Agent => self.cfg.agent_command.clone(),
            Role::Worker => self.cfg.worker_command.clone(),
        };
        let listeners: &[(String, RawFd)] = match role {
            Role::Worker => &self.cfg.listeners,
            Role::Agent => &[],
        };
        let spec = spawn::SpawnSpec {
            command: &command,
            env: vec![
                (env::MASTER.into(), url),
                (env::NAME.into(), name.clone()),
                (env::ROLE.into(), role.to_string()),
                (env::SECRET.into(), secret),
                // Parsed and logged once by the master (supervisor/output.rs).
                (env::LOG_FORMAT.into(), output::CHILD_LOG_FORMAT.into()),
            ]
            .into_iter()
            .chain(self.cfg.token.clone().map(|t| (env::TOKEN.to_string(), t)))
            .collect(),
            listeners,
        };
        match spawn::spawn(&spec) {
            Ok(mut child) => {
                let Some(pid) = child.id() else {
                    return Event::SpawnFailed {
                        reason: "the child exited at once".into(),
                    };
                };
                tracing::info!(member.name = %name, pid, "spawned");
                output::capture(&mut child, &name, role, &self.registry.logs);
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let outcome = match child.wait().await {
                        Ok(status) => {
                            use std::os::unix::process::ExitStatusExt;
                            match (status.code(), status.signal()) {
                                (Some(c), _) => Outcome::Exited(c),
                                (None, Some(s)) => Outcome::Signaled(s),
                                (None, None) => Outcome::Exited(-1),
                            }
                        }
                        Err(e) => Outcome::SpawnFailed(format!("waiting failed: {e}")),
                    };
                    let _ = tx.send(Command::Exited { pid, outcome }).await;
                });
                Event::Spawned { pid }
            }
            Err(e) => {
                let program = command.first().cloned().unwrap_or_default();
                Event::SpawnFailed {
                    reason: format!("{program}: {e}"),
                }
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Exited { pid, outcome } => self.exited(pid, outcome),
            Command::Scale { role, count, reply } => {
                let _ = reply.send(self.scale(role, count));
            }
            Command::Restart {
                member,
                role,
                rolling,
                reply,
            } => self.restart(member, role, rolling, reply),
            Command::Shutdown { reply } => {
                let _ = reply.send(());
            }
        }
    }

    /// A child we spawned ended: its slot decides what follows; a slot
    /// scaled away goes once its last process has.
    fn exited(&mut self, pid: u32, outcome: Outcome) {
        let Some(i) = self
            .entries
            .iter()
            .position(|e| e.slot.pids().any(|p| p == pid))
        else {
            return;
        };
        self.apply(i, Event::Died { pid, outcome });
        let e = &self.entries[i];
        if e.removed && e.slot.pids().next().is_none() {
            self.entries.remove(i);
        }
    }

    fn view(&self, i: usize) -> SlotView {
        let e = &self.entries[i];
        let (state, pid, next) = match &e.slot.lifecycle {
            Lifecycle::Stopped => (MemberState::Gone, 0, None),
            Lifecycle::Spawning => (MemberState::Starting, 0, None),
            Lifecycle::Starting { pid, .. } => (MemberState::Starting, *pid, None),
            Lifecycle::Ready { pid, .. } => (MemberState::Ready, *pid, None),
            Lifecycle::Backoff { until, .. } => (MemberState::Backoff, 0, Some(wall_clock(*until))),
            Lifecycle::Failed { .. } => (MemberState::Failed, 0, None),
        };
        SlotView {
            name: e.name.clone(),
            role: e.role,
            state,
            pid,
            restarts: e.slot.restarts,
            next_attempt_at: next,
            last_exit: e.last_exit.clone(),
        }
    }

    fn publish_views(&self) {
        let views: Vec<SlotView> = (0..self.entries.len())
            .filter(|i| !self.entries[*i].removed)
            .map(|i| self.view(i))
            .collect();
        *self.views.lock().unwrap_or_else(|p| p.into_inner()) = views;
    }
}

/// A moment that never comes (a disabled sleep's placeholder).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
