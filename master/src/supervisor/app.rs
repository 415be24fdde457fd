//! The apps the supervisor runs: the `[agent]` section's (app `agent`), the
//! `[worker]` section's (app `worker`) and each `[[app]]`, in start order.

use crate::config::{Config, HealthCheck, Join, RestartMode};
use cohort_proto::{Role, env};
use std::collections::HashMap;
use std::path::PathBuf;

/// One app as the supervisor runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct AppSpec {
    /// Its name; members are `NAME-1`, … (the agent's is `agent`).
    pub name: String,
    /// The role of its members.
    pub role: Role,
    /// How many members.
    pub count: u32,
    /// Program and arguments as spawned (wrapped in `cohort-worker --exec`
    /// for `join = "wrap"`).
    pub command: Vec<String>,
    /// Variables set on top of the master's (before `COHORT_*`).
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Listeners inherited, by name (`None`: all).
    pub listeners: Option<Vec<String>>,
    /// When an exited member starts again.
    pub restart: RestartMode,
    /// Apps that must be ready (a one-shot: exited 0) first.
    pub depends_on: Vec<String>,
    /// Memory limit per member.
    pub max_rss: Option<u64>,
    /// Its health probe: readiness is the probe's.
    pub health: Option<HealthCheck>,
}

impl AppSpec {
    /// Slot `index`'s member name.
    pub fn slot_name(&self, index: u32) -> String {
        match (self.role, index) {
            (Role::Agent, 1) => self.name.clone(),
            _ => format!("{}-{index}", self.name),
        }
    }

    /// Whether members started from `other` would run the same (command,
    /// environment, directory, listeners, restart mode, health probe): if
    /// not, a reload
    /// restarts them. The count, `depends_on` and `max_rss` apply as they
    /// are.
    pub fn runs_like(&self, other: &AppSpec) -> bool {
        AppSpec {
            count: other.count,
            depends_on: other.depends_on.clone(),
            max_rss: other.max_rss,
            ..self.clone()
        } == *other
    }

    /// The environment a member gets beside `COHORT_*`.
    pub fn with_app_env(&self) -> Vec<(String, String)> {
        let mut vars = self.env.clone();
        if self.role == Role::Worker {
            vars.push((env::APP.into(), self.name.clone()));
        }
        vars
    }
}

/// Every app of `config` on a host with `cpus` CPUs, in start order: the
/// agent, then apps by `depends_on` depth (each app after what it depends
/// on; workers after the agent), in file order within a depth.
pub fn from_config(config: &Config, cpus: usize) -> Vec<AppSpec> {
    let min_uptime_ms = config.restart.min_uptime.as_millis();
    let role_app = |name: &str, role, count, command: &[String], max_rss| AppSpec {
        name: name.to_string(),
        role,
        count,
        command: command.to_vec(),
        env: Vec::new(),
        cwd: None,
        listeners: match role {
            Role::Agent => Some(Vec::new()),
            Role::Worker => None,
        },
        restart: RestartMode::Always,
        depends_on: Vec::new(),
        max_rss,
        health: None,
    };
    let mut apps = vec![
        role_app(
            "agent",
            Role::Agent,
            config.agent.count,
            &config.agent.command,
            config.agent.max_rss,
        ),
        role_app(
            cohort_proto::DEFAULT_APP,
            Role::Worker,
            config.worker_count(cpus),
            &config.worker.command,
            config.worker.max_rss,
        ),
    ];
    for a in &config.apps {
        let command = match a.join {
            Join::Itself => a.command.clone(),
            // Ready when the program says so on its channel, when its
            // health probe passes, or, with neither, once it ran min_uptime
            // (PM2's "online").
            Join::Wrap => ["cohort-worker".to_string()]
                .into_iter()
                .chain(match a.health {
                    Some(_) => vec![],
                    None => vec!["--ready-after".into(), format!("{min_uptime_ms}ms")],
                })
                .chain(["--exec".into(), "--".into()])
                .chain(a.command.iter().cloned())
                .collect(),
        };
        apps.push(AppSpec {
            name: a.name.clone(),
            role: Role::Worker,
            count: a.count.resolve(cpus),
            command,
            env: a.env.clone(),
            cwd: a.cwd.clone(),
            listeners: a.listeners.clone(),
            restart: a.restart,
            depends_on: a.depends_on.clone(),
            max_rss: a.max_rss,
            health: a.health.clone(),
        });
    }
    in_start_order(apps)
}

/// Sorts `apps` by depth: an app after everything it depends on (workers
/// after the agent), stable within a depth. Cycles were refused with the
/// configuration.
pub fn in_start_order(mut apps: Vec<AppSpec>) -> Vec<AppSpec> {
    let depth = depths(&apps);
    apps.sort_by_key(|a| depth.get(&a.name).copied().unwrap_or(0));
    apps
}

/// Each app's depth: how many apps stand before it on its longest
/// `depends_on` chain (workers depend on the agent).
pub fn depths(apps: &[AppSpec]) -> HashMap<String, usize> {
    fn depth(
        app: &AppSpec,
        apps: &[AppSpec],
        memo: &mut HashMap<String, usize>,
        guard: usize,
    ) -> usize {
        if let Some(d) = memo.get(&app.name) {
            return *d;
        }
        if guard > apps.len() {
            return guard;
        }
        let implicit = (app.role == Role::Worker).then_some("agent");
        let d = app
            .depends_on
            .iter()
            .map(String::as_str)
            .chain(implicit)
            .filter_map(|d| apps.iter().find(|a| a.name == d))
            .map(|d| 1 + depth(d, apps, memo, guard + 1))
            .max()
            .unwrap_or(0);
        memo.insert(app.name.clone(), d);
        d
    }
    let mut memo = HashMap::new();
    for a in apps {
        depth(a, apps, &mut memo, 0);
    }
    memo
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, role: Role, deps: &[&str]) -> AppSpec {
        AppSpec {
            name: name.into(),
            role,
            count: 1,
            command: vec!["x".into()],
            env: Vec::new(),
            cwd: None,
            listeners: None,
            restart: RestartMode::Always,
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            max_rss: None,
            health: None,
        }
    }

    #[test]
    fn apps_start_after_what_they_depend_on_and_workers_after_the_agent() {
        let apps = vec![
            app("api", Role::Worker, &["web"]),
            app("web", Role::Worker, &["migrate"]),
            app("queue", Role::Worker, &[]),
            app("migrate", Role::Worker, &[]),
            app("agent", Role::Agent, &[]),
        ];
        let names: Vec<String> = in_start_order(apps).into_iter().map(|a| a.name).collect();
        assert_eq!(names, ["agent", "queue", "migrate", "web", "api"]);
    }

    #[test]
    fn depths_of_many_shared_dependencies_take_no_time() {
        // Each app depends on every earlier one: 2^40 paths, 40 depths.
        let names: Vec<String> = (0..40).map(|i| format!("a{i}")).collect();
        let apps: Vec<AppSpec> = (0..40)
            .map(|i| {
                let deps: Vec<&str> = names[..i].iter().map(String::as_str).collect();
                app(&names[i], Role::Worker, &deps)
            })
            .collect();
        let depth = depths(&apps);
        assert_eq!(depth["a39"], 39);
    }
}
