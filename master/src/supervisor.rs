//! Local supervision: the master starts its apps (the agent, the workers,
//! each `[[app]]`) in `depends_on` order, waits on them, respawns them by
//! their restart mode, replaces them without a gap, applies a reload app by
//! app, and ends them on shutdown in the reverse order.
//!
//! One task owns every slot and receives commands (child exits, notices
//! from the registry, operator requests); decisions come from the pure
//! state machine in [`slot`], side effects from [`spawn`]; `order` says
//! which app may start, [`reload`] what a new configuration changes.

pub mod app;
mod handle;
mod operations;
mod order;
mod output;
pub mod reload;
pub mod rollout;
mod shutdown;
pub mod slot;
pub mod spawn;
pub mod stale;
mod timers;

pub use app::AppSpec;
use handle::*;
pub use handle::{SlotView, SupervisorHandle};
pub use reload::Change;

use crate::model::Notice;
use crate::model::{EventKind, MemberSnapshot, MemberState};
use crate::registry::Registry;
use cohort_process::child;
use cohort_proto::{Role, env};
use rollout::{Progress, Rollout};
use slot::{Action, Event, Lifecycle, Outcome, Policy, RestartMode, Slot};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// What the supervisor runs.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// The apps, in start order ([`app::from_config`]).
    pub apps: Vec<AppSpec>,
    /// Restart policy, with the drain and start timeouts (each app's
    /// restart mode replaces `policy.restart`).
    pub policy: Policy,
    /// At shutdown, how long after `drain_timeout` before SIGKILL.
    pub kill_timeout: Duration,
    /// `unix://PATH` of the master's private socket, for `COHORT_MASTER`;
    /// `None` when it was started with no local members (then it runs none).
    pub master_url: Option<String>,
    /// The bearer token handed to local children (`COHORT_TOKEN`).
    pub token: Option<String>,
    /// Shared listeners, each app inheriting those it names.
    pub listeners: Vec<(String, RawFd)>,
}

struct Entry {
    app: String,
    role: Role,
    name: String,
    slot: Slot,
    last_exit: String,
    /// Scaled away: kept only until its retiring instances have ended.
    removed: bool,
}

/// An app and how far its start is.
struct AppRun {
    spec: AppSpec,
    /// Its slots were started (what it depends on was ready).
    started: bool,
    /// When it started, or was added.
    since: Instant,
    /// Why it cannot start (what it depends on FAILED), once said.
    blocked: Option<String>,
}

/// Who waits for the restart in progress, and with what.
type Done = Box<dyn FnOnce(Result<(), Status>) + Send>;

struct Supervisor {
    cfg: SupervisorConfig,
    registry: Arc<Registry>,
    apps: Vec<AppRun>,
    entries: Vec<Entry>,
    /// The master is shutting down: instances retire, none start.
    stopping: bool,
    /// "all local members ready" was logged.
    all_ready_said: bool,
    /// The agent was not ready within `start_timeout`: workers start
    /// without it.
    agent_late: bool,
    restart: Option<(Rollout, Done)>,
    tx: mpsc::Sender<Command>,
    views: Arc<Mutex<Vec<SlotView>>>,
}

fn wall_clock(at: Instant) -> SystemTime {
    SystemTime::now() + at.saturating_duration_since(Instant::now())
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
    let mut sup = Supervisor {
        apps: Vec::new(),
        entries: Vec::new(),
        stopping: false,
        all_ready_said: false,
        agent_late: false,
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
        for spec in std::mem::take(&mut self.cfg.apps) {
            self.add_app(spec);
        }
        self.start_due();
        self.publish_views();
        loop {
            // Sleep until the next deadline (backoff, start timeout, drain,
            // a late agent, restart), not on a polling tick.
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

    fn add_app(&mut self, spec: AppSpec) {
        let a = self.apps.len();
        self.apps.push(AppRun {
            spec,
            started: false,
            since: Instant::now(),
            blocked: None,
        });
        self.resize(a);
    }

    /// Adds or stops slots until app `a` has its count (started ones
    /// start at once, the others with their app).
    pub(super) fn resize(&mut self, a: usize) {
        let app = &self.apps[a];
        let (spec, started) = (app.spec.clone(), app.started);
        let have = self.of_app(&spec.name).count() as u32;
        for index in have + 1..=spec.count {
            let name = spec.slot_name(index);
            // A slot scaled away whose old instance is still finishing
            // comes back as it is.
            let i = match self.entries.iter().position(|e| e.name == name) {
                Some(i) => {
                    self.entries[i].removed = false;
                    i
                }
                None => {
                    self.entries.push(Entry {
                        app: spec.name.clone(),
                        role: spec.role,
                        name,
                        slot: Slot::default(),
                        last_exit: String::new(),
                        removed: false,
                    });
                    self.entries.len() - 1
                }
            };
            if started {
                self.apply(i, Event::Start);
            }
        }
        for index in (spec.count + 1..=have).rev() {
            let name = spec.slot_name(index);
            if let Some(i) = self.index_of(&name) {
                self.remove_slot(i);
            }
        }
    }

    /// Stops slot `i` for good; it goes once its processes have.
    pub(super) fn remove_slot(&mut self, i: usize) {
        let name = self.entries[i].name.clone();
        self.apply(i, Event::Stop);
        self.entries[i].removed = true;
        if self.entries[i].slot.pids().next().is_none() {
            self.entries.remove(i);
        }
        self.registry.release(&name);
    }

    /// The indexes of app `name`'s slots (not scaled away).
    fn of_app<'a>(&'a self, name: &'a str) -> impl Iterator<Item = usize> + 'a {
        (0..self.entries.len()).filter(move |i| {
            let e = &self.entries[*i];
            e.app == name && !e.removed
        })
    }

    /// App `name`'s place.
    fn app_index(&self, name: &str) -> Option<usize> {
        self.apps.iter().position(|a| a.spec.name == name)
    }

    /// Slot `i`'s restart policy: its app's mode on the common one.
    fn policy(&self, i: usize) -> Policy {
        let app = self.app_index(&self.entries[i].app);
        Policy {
            restart: app.map_or(self.cfg.policy.restart, |a| self.apps[a].spec.restart),
            ..self.cfg.policy
        }
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
            let policy = self.policy(i);
            let actions = slot::step(&mut self.entries[i].slot, ev, &policy, now);
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
                        tracing::error!(member.name = %self.entries[i].name, reason, "slot failed");
                        self.entries[i].last_exit = reason.clone();
                        self.report(i, EventKind::Failed, &reason);
                    }
                    Action::Finished { outcome } => {
                        tracing::info!(member.name = %self.entries[i].name, %outcome, "member finished; its restart mode starts no other");
                        self.entries[i].last_exit = outcome.to_string();
                        let reason = format!("{outcome}: finished");
                        self.registry
                            .announce_exit(self.view(i).snapshot(), &reason);
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
                        let what = match self.stopping {
                            true => "stopped at shutdown",
                            false => "replaced instance exited",
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
        let Some(a) = self.app_index(&self.entries[i].app) else {
            let reason = "its app was removed".into();
            return Event::SpawnFailed { reason };
        };
        let app = &self.apps[a].spec;
        let Some(url) = self.cfg.master_url.clone() else {
            let reason = "this master has no local members' socket".into();
            return Event::SpawnFailed { reason };
        };
        let secret = uuid::Uuid::new_v4().simple().to_string();
        self.registry.reserve(&name, &secret);
        let command = app.command.clone();
        let listeners: Vec<(String, RawFd)> = self
            .cfg
            .listeners
            .iter()
            .filter(|(l, _)| app.listeners.as_ref().is_none_or(|ls| ls.contains(l)))
            .cloned()
            .collect();
        let spec = spawn::SpawnSpec {
            command: &command,
            cwd: app.cwd.as_deref(),
            env: app
                .with_app_env()
                .into_iter()
                .chain([
                    (env::MASTER.into(), url),
                    (env::NAME.into(), name.clone()),
                    (env::ROLE.into(), role.to_string()),
                    (env::SECRET.into(), secret),
                    // Parsed and logged once by the master (supervisor/output.rs).
                    (env::LOG_FORMAT.into(), output::CHILD_LOG_FORMAT.into()),
                ])
                .chain(self.cfg.token.clone().map(|t| (env::TOKEN.to_string(), t)))
                .collect(),
            listeners: &listeners,
        };
        match spawn::spawn(&spec) {
            Ok(mut child) => {
                let Some(pid) = child.id() else {
                    return Event::SpawnFailed {
                        reason: "the child exited at once".into(),
                    };
                };
                tracing::info!(member.name = %name, pid, "spawned");
                let app = self.entries[i].app.clone();
                output::capture(&mut child, &name, role, &app, &self.registry.logs);
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
            Command::Scale { app, count, reply } => {
                let _ = reply.send(self.scale(&app, count));
            }
            Command::Reload { apps, reply } => self.reload(apps, reply),
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
        // A job run again by a restart is done once it finished.
        if matches!(e.slot.lifecycle, Lifecycle::Finished { .. })
            && let Some((r, _)) = &mut self.restart
        {
            let progress = r.ready(&e.name);
            self.advance(progress);
        }
        let e = &self.entries[i];
        if e.removed && e.slot.pids().next().is_none() {
            self.entries.remove(i);
        }
        // A one-shot done (or failed) decides what waits for it.
        self.start_due();
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
            Lifecycle::Finished { .. } => (MemberState::Gone, 0, None),
        };
        let mut view = SlotView {
            name: e.name.clone(),
            app: e.app.clone(),
            role: e.role,
            state,
            pid,
            restarts: e.slot.restarts,
            next_attempt_at: next,
            last_exit: e.last_exit.clone(),
        };
        // Not started: waiting for what it depends on, or blocked by it.
        let app = self.app_index(&e.app).map(|a| &self.apps[a]);
        if let Some(app) = app.filter(|a| !a.started && !self.stopping) {
            (view.state, view.last_exit) = match &app.blocked {
                Some(why) => (MemberState::Failed, why.clone()),
                None => (MemberState::Starting, self.waiting_for(app)),
            };
        }
        view
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
