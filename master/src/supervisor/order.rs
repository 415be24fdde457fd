//! Start order: an app starts once what it `depends_on` is ready (a
//! one-shot: exited 0), workers once the agent is ready or late; an app
//! whose dependency FAILED does not start and says why.

use super::*;

/// Whether an app may start.
enum Deps {
    Met,
    /// Not yet: these are not ready.
    Waiting(Vec<String>),
    /// Not while this holds: a dependency FAILED.
    Blocked(String),
}

impl Supervisor {
    /// Starts every app whose dependencies are met, and marks those a
    /// failed dependency blocks.
    pub(super) fn start_due(&mut self) {
        if self.stopping {
            return;
        }
        // Apps are in start order: dependencies are decided first.
        for a in 0..self.apps.len() {
            if self.apps[a].started {
                continue;
            }
            match self.deps(a) {
                Deps::Met => self.start_app(a),
                Deps::Waiting(_) => self.apps[a].blocked = None,
                Deps::Blocked(why) => {
                    if self.apps[a].blocked.as_ref() == Some(&why) {
                        continue;
                    }
                    let name = self.apps[a].spec.name.clone();
                    tracing::error!(app = %name, "{why}");
                    self.apps[a].blocked = Some(why.clone());
                    for i in self.of_app(&name).collect::<Vec<_>>() {
                        self.report(i, EventKind::Failed, &why);
                    }
                }
            }
        }
        if !self.all_ready_said && self.apps.iter().all(|a| a.started) {
            let settled = self.entries.iter().all(|e| {
                e.removed
                    || matches!(
                        e.slot.lifecycle,
                        Lifecycle::Ready { .. } | Lifecycle::Finished { .. }
                    )
            });
            if settled && !self.entries.is_empty() {
                tracing::info!("all local members ready");
                self.all_ready_said = true;
            }
        }
    }

    fn start_app(&mut self, a: usize) {
        let app = &mut self.apps[a];
        app.started = true;
        app.blocked = None;
        app.since = Instant::now();
        let name = app.spec.name.clone();
        if app.spec.count > 0 && !app.spec.depends_on.is_empty() {
            tracing::info!(app = %name, after = %app.spec.depends_on.join(", "), "starting: what it depends on is ready");
        }
        for i in self.of_app(&name).collect::<Vec<_>>() {
            self.apply(i, Event::Start);
        }
    }

    fn deps(&self, a: usize) -> Deps {
        let spec = &self.apps[a].spec;
        let mut waiting = Vec::new();
        for d in &spec.depends_on {
            let Some(di) = self.app_index(d) else {
                continue;
            };
            if let Some(why) = &self.apps[di].blocked {
                return Deps::Blocked(format!(
                    "not started: {d}, which it depends on, cannot start ({why})"
                ));
            }
            let failed = self
                .of_app(d)
                .find(|i| matches!(self.entries[*i].slot.lifecycle, Lifecycle::Failed { .. }));
            if let Some(i) = failed {
                return Deps::Blocked(format!(
                    "not started: {d}, which it depends on, FAILED ({}); fix it, then restart {d} or reload",
                    self.entries[i].last_exit
                ));
            }
            if !self.app_ready(di) {
                waiting.push(d.clone());
            }
        }
        // Workers wait for the agent, unless it is late (then they start
        // anyway, as they always have).
        if spec.role == Role::Worker
            && !self.agent_late
            && let Some(agent) = self.app_index("agent")
            && !self.app_ready(agent)
        {
            waiting.push("agent".into());
        }
        match waiting.is_empty() {
            true => Deps::Met,
            false => Deps::Waiting(waiting),
        }
    }

    /// App `a` started and every one of its members is ready, or finished.
    fn app_ready(&self, a: usize) -> bool {
        let app = &self.apps[a];
        app.started
            && self.of_app(&app.spec.name).all(|i| {
                matches!(
                    self.entries[i].slot.lifecycle,
                    Lifecycle::Ready { .. } | Lifecycle::Finished { .. }
                )
            })
    }

    /// What a not started app's slots show: what it waits for.
    pub(super) fn waiting_for(&self, app: &AppRun) -> String {
        let a = self.app_index(&app.spec.name);
        match a.map(|a| self.deps(a)) {
            Some(Deps::Waiting(names)) => {
                format!("waiting for {} (depends_on)", names.join(", "))
            }
            Some(Deps::Blocked(why)) => why,
            _ => String::new(),
        }
    }

    /// When the agent's start is late (workers then start anyway), while
    /// workers wait for it.
    pub(super) fn agent_deadline(&self) -> Option<Instant> {
        if self.agent_late || self.stopping || self.apps.iter().all(|a| a.started) {
            return None;
        }
        let agent = self.app_index("agent")?;
        let app = &self.apps[agent];
        (app.spec.count > 0 && app.started && !self.app_ready(agent))
            .then(|| app.since + self.cfg.policy.start_timeout)
    }

    /// Each app's stop group at shutdown, last started first: apps deeper
    /// in `depends_on` stop before what they depend on.
    pub(super) fn stop_order(&self) -> Vec<Vec<String>> {
        let specs: Vec<AppSpec> = self.apps.iter().map(|a| a.spec.clone()).collect();
        let depth = app::depths(&specs);
        let mut groups: Vec<Vec<String>> = Vec::new();
        for s in &specs {
            let d = depth.get(&s.name).copied().unwrap_or(0);
            if groups.len() <= d {
                groups.resize(d + 1, Vec::new());
            }
            groups[d].push(s.name.clone());
        }
        groups.reverse();
        groups
    }
}
