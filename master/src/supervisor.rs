//! Local supervision: the master starts its own agent and workers, waits on
//! them, respawns them by the restart policy, replaces them without a gap,
//! and ends them on shutdown.
//!
//! One task owns every slot and receives commands (child exits, notices
//! from the registry, operator requests); decisions come from the pure
//! state machine in [`slot`], side effects from [`spawn`].

pub mod slot;
pub mod spawn;
pub mod stale;

use crate::registry::{Notice, Registry};
use cohort_process::child;
use cohort_proto::{Role, pb};
use slot::{Action, Event, Lifecycle, Outcome, Policy, Slot};
use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
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
    /// Restart policy.
    pub policy: Policy,
    /// How long a retiring instance may take to finish.
    pub drain_timeout: Duration,
    /// How long after SIGTERM before SIGKILL at shutdown.
    pub kill_timeout: Duration,
    /// How long a startup stage or a restart may take.
    pub start_timeout: Duration,
    /// `http://ADDR` of this master, for `COHORT_MASTER`.
    pub master_url: String,
    /// The bearer token handed to local children (`COHORT_TOKEN`).
    pub token: Option<String>,
    /// Shared listeners handed to workers.
    pub listeners: Vec<(String, RawFd)>,
}

/// A slot as the Control API shows it.
#[derive(Clone, Debug)]
pub struct SlotView {
    /// The slot's member name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its state as shown to operators.
    pub state: pb::MemberState,
    /// Pid of the current instance (0 when none).
    pub pid: u32,
    /// Restarts after deaths.
    pub restarts: u32,
    /// Next attempt (Unix ms) when in BACKOFF.
    pub next_attempt_at: u64,
    /// How the last instance ended, or why the slot FAILED.
    pub last_exit: String,
}

impl SlotView {
    /// The view as a `MemberInfo` (for slots with no registered member).
    pub fn info(&self) -> pb::MemberInfo {
        pb::MemberInfo {
            name: self.name.clone(),
            role: self.role.into(),
            state: self.state as i32,
            pid: self.pid,
            local: true,
            restarts: self.restarts,
            next_attempt_at: self.next_attempt_at,
            last_exit: self.last_exit.clone(),
            ..Default::default()
        }
    }
}

enum Command {
    Exited {
        pid: u32,
        outcome: Outcome,
    },
    Scale {
        role: Role,
        count: u32,
        reply: oneshot::Sender<Result<(), Status>>,
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
    tx: mpsc::Sender<Command>,
    views: Arc<Mutex<Vec<SlotView>>>,
}

fn gone() -> Status {
    Status::unavailable("the master is shutting down")
}

impl SupervisorHandle {
    /// Every slot, agent first.
    pub fn views(&self) -> Vec<SlotView> {
        self.views.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets the number of local members of `role`.
    pub async fn scale(&self, role: Role, count: u32) -> Result<(), Status> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Scale { role, count, reply })
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

struct Entry {
    role: Role,
    name: String,
    slot: Slot,
    /// The instance being replaced; retired once the new one is ready.
    predecessor: Option<u32>,
    last_exit: String,
}

struct Retiring {
    pid: u32,
    name: String,
    role: Role,
    deadline: Instant,
    killed: bool,
}

enum Stage {
    Agent { deadline: Instant },
    Workers { deadline: Instant },
    Running,
}

struct Restarting {
    queue: VecDeque<String>,
    waiting: HashSet<String>,
    deadline: Instant,
    reply: oneshot::Sender<Result<(), Status>>,
}

struct Supervisor {
    cfg: SupervisorConfig,
    registry: Arc<Registry>,
    entries: Vec<Entry>,
    /// Every child we spawned and have not reaped: pid → role.
    live: HashMap<u32, Role>,
    retiring: Vec<Retiring>,
    stage: Stage,
    restarting: Option<Restarting>,
    tx: mpsc::Sender<Command>,
    views: Arc<Mutex<Vec<SlotView>>>,
}

fn unix_ms(at: Instant) -> u64 {
    let wall = SystemTime::now() + at.saturating_duration_since(Instant::now());
    wall.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
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
        live: HashMap::new(),
        retiring: Vec::new(),
        stage: Stage::Agent {
            deadline: now + cfg.start_timeout,
        },
        restarting: None,
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
            predecessor: None,
            last_exit: String::new(),
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
            deadline: Instant::now() + self.cfg.start_timeout,
        };
        self.start_role(Role::Worker);
        self.check_stage();
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.name == name)
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
                        let e = &mut self.entries[i];
                        e.last_exit = outcome.to_string();
                        tracing::warn!(member.name = %e.name, outcome = %outcome, "member died; respawning");
                        let info = self.view(i).info();
                        self.registry.announce(
                            pb::EventKind::Respawned,
                            info,
                            &outcome.to_string(),
                        );
                    }
                    Action::Backoff { delay, outcome } => {
                        let e = &mut self.entries[i];
                        e.last_exit = outcome.to_string();
                        tracing::warn!(member.name = %e.name, outcome = %outcome, delay_ms = delay.as_millis() as u64, "member died early; backing off");
                        let info = self.view(i).info();
                        let reason = format!("{outcome}; next attempt in {} ms", delay.as_millis());
                        self.registry
                            .announce(pb::EventKind::Backoff, info, &reason);
                    }
                    Action::Kill { pid, reason } => {
                        tracing::warn!(member.name = %self.entries[i].name, pid, reason, "killing the member's process group");
                        child::signal_group(pid, child::SIGKILL);
                    }
                    Action::Failed { reason } => {
                        let e = &mut self.entries[i];
                        e.last_exit = reason.clone();
                        tracing::error!(member.name = %e.name, reason, "slot failed: too many restarts");
                        let info = self.view(i).info();
                        self.registry.announce(pb::EventKind::Failed, info, &reason);
                    }
                }
            }
        }
    }

    /// Spawns slot `i`'s next instance; returns the event that follows.
    fn spawn(&mut self, i: usize) -> Event {
        let (role, name) = (self.entries[i].role, self.entries[i].name.clone());
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
                ("COHORT_MASTER".into(), self.cfg.master_url.clone()),
                ("COHORT_NAME".into(), name.clone()),
                ("COHORT_ROLE".into(), role.to_string()),
                ("COHORT_SECRET".into(), secret),
            ]
            .into_iter()
            .chain(
                self.cfg
                    .token
                    .clone()
                    .map(|t| ("COHORT_TOKEN".to_string(), t)),
            )
            .collect(),
            listeners,
            name: &name,
        };
        match spawn::spawn(&spec) {
            Ok(mut child) => {
                let Some(pid) = child.id() else {
                    return Event::Died {
                        pid: 0,
                        outcome: Outcome::SpawnFailed("the child exited at once".into()),
                    };
                };
                tracing::info!(member.name = %name, pid, "spawned");
                spawn::capture_output(&mut child, &name);
                self.live.insert(pid, role);
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
                Event::Died {
                    pid: 0,
                    outcome: Outcome::SpawnFailed(format!("{program}: {e}")),
                }
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Exited { pid, outcome } => {
                self.live.remove(&pid);
                let mut retired = None;
                if let Some(pos) = self.retiring.iter().position(|r| r.pid == pid) {
                    let r = self.retiring.remove(pos);
                    retired = Some((r.name, r.role));
                }
                if let Some(e) = self.entries.iter_mut().find(|e| e.predecessor == Some(pid)) {
                    e.predecessor = None;
                    retired = Some((e.name.clone(), e.role));
                }
                if let Some((name, role)) = retired {
                    tracing::info!(member.name = %name, pid, outcome = %outcome, "replaced instance exited");
                    let info = pb::MemberInfo {
                        name,
                        role: role.into(),
                        state: pb::MemberState::Gone as i32,
                        pid,
                        local: true,
                        last_exit: outcome.to_string(),
                        ..Default::default()
                    };
                    let reason = format!("replaced instance exited: {outcome}");
                    self.registry.announce(pb::EventKind::Left, info, &reason);
                    return;
                }
                if let Some(i) = self.entries.iter().position(|e| e.slot.pid() == Some(pid)) {
                    self.apply(i, Event::Died { pid, outcome });
                }
            }
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

    fn notice(&mut self, notice: Notice) {
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

    fn retire(&mut self, pid: u32, name: &str, role: Role, sigterm: bool) {
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
    fn next_deadline(&self) -> Option<Instant> {
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

    fn tick(&mut self) {
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

    fn check_stage(&mut self) {
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

    fn scale(&mut self, role: Role, count: u32) -> Result<(), Status> {
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

    fn restart(
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
    fn replace(&mut self, name: &str) {
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

    fn advance_restart(&mut self) {
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

    async fn shutdown(&mut self, rx: &mut mpsc::Receiver<Command>) {
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

    fn view(&self, i: usize) -> SlotView {
        let e = &self.entries[i];
        let (state, pid, next) = match &e.slot.lifecycle {
            Lifecycle::Stopped => (pb::MemberState::Gone, 0, 0),
            Lifecycle::Spawning => (pb::MemberState::Starting, 0, 0),
            Lifecycle::Starting { pid, .. } => (pb::MemberState::Starting, *pid, 0),
            Lifecycle::Ready { pid, .. } => (pb::MemberState::Ready, *pid, 0),
            Lifecycle::Backoff { until, .. } => (pb::MemberState::Backoff, 0, unix_ms(*until)),
            Lifecycle::Failed { .. } => (pb::MemberState::Failed, 0, 0),
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
        let views: Vec<SlotView> = (0..self.entries.len()).map(|i| self.view(i)).collect();
        *self.views.lock().unwrap_or_else(|p| p.into_inner()) = views;
    }
}

/// A moment that never comes (a disabled sleep's placeholder).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
