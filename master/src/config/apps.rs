//! `[[app]]` tables (SPEC §6b): several apps under one master, as in a PM2
//! ecosystem file. The file's form is [`AppTable`]; [`resolve`] checks the
//! whole set (names, `depends_on`, listeners) and reads each `env_file`,
//! giving the [`App`]s the supervisor runs.

use super::{ConfigError, ListenerConfig, WorkerCount, values::bytes, values::duration};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;

/// The names the `[agent]` and `[worker]` sections' apps have.
pub const RESERVED: [&str; 2] = ["agent", cohort_proto::DEFAULT_APP];

/// How an app's program joins the cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Join {
    /// The program joins by itself (the SDK, gRPC, `cohort-worker`).
    #[default]
    #[serde(rename = "self")]
    Itself,
    /// Any program: the master runs it under `cohort-worker --exec`.
    Wrap,
}

/// When a member that exited is started again (systemd's words).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartMode {
    /// Whatever the exit.
    #[default]
    Always,
    /// Unless it exited with status 0.
    OnFailure,
    /// Never: a one-shot job (its dependants wait for its exit 0).
    Never,
}

/// One `[[app]]` table as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppTable {
    name: String,
    command: Vec<String>,
    #[serde(default)]
    join: Join,
    #[serde(default)]
    count: Option<WorkerCount>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    env_file: Option<PathBuf>,
    #[serde(default)]
    cwd: Option<PathBuf>,
    #[serde(default)]
    listeners: Option<Vec<String>>,
    #[serde(default, with = "bytes", skip_serializing_if = "Option::is_none")]
    max_rss: Option<u64>,
    #[serde(default)]
    restart: RestartMode,
    #[serde(default)]
    depends_on: Vec<String>,
    #[serde(default)]
    health: Option<HealthTable>,
}

/// An app's `health = { … }` as written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthTable {
    #[serde(default)]
    http: Option<String>,
    #[serde(default)]
    exec: Option<Vec<String>>,
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    interval: Option<Duration>,
    #[serde(default, with = "duration", skip_serializing_if = "Option::is_none")]
    timeout: Option<Duration>,
    #[serde(default)]
    failures: Option<u32>,
}

/// A health probe: an app's members are ready only once it passes, and a
/// ready member that fails it `failures` times in a row is replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// What is checked.
    pub probe: Probe,
    /// How often (default 5 s).
    pub interval: Duration,
    /// How long one check may take (default 1 s).
    pub timeout: Duration,
    /// Failures in a row that make a ready member unhealthy (default 3).
    pub failures: u32,
}

/// What a health probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `GET PATH` on the address the member reports in its label `http`;
    /// a 2xx or 3xx answer passes.
    Http(String),
    /// This command, run by the master for its local members (with
    /// `COHORT_NAME`, `COHORT_APP`, `COHORT_PID`); exit 0 passes.
    Exec(Vec<String>),
}

/// An app as the supervisor runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct App {
    /// Its name; members are `NAME-1`, `NAME-2`, …
    pub name: String,
    /// Program and arguments (relative: next to cohort-master, then PATH).
    pub command: Vec<String>,
    /// Whether the master wraps it in `cohort-worker --exec`.
    pub join: Join,
    /// How many members (default 1, as PM2's `instances`).
    pub count: WorkerCount,
    /// The `env_file`'s variables, then the `env` table's: a later one wins.
    pub env: Vec<(String, String)>,
    /// Where the file-read variables came from.
    pub env_file: Option<PathBuf>,
    /// The members' working directory (default: the master's).
    pub cwd: Option<PathBuf>,
    /// The `[[listener]]`s its members inherit, by name (`None`: all).
    pub listeners: Option<Vec<String>>,
    /// Replace a member gracefully when its memory stays above this.
    pub max_rss: Option<u64>,
    /// When an exited member starts again.
    pub restart: RestartMode,
    /// Apps that must be ready (a one-shot: exited 0) before this starts.
    pub depends_on: Vec<String>,
    /// Its health probe, if any.
    pub health: Option<HealthCheck>,
}

/// Checks the `[[app]]` tables as a whole and reads their env files; an
/// error names the app.
pub fn resolve(
    tables: Vec<AppTable>,
    listeners: &[ListenerConfig],
) -> Result<Vec<App>, ConfigError> {
    let mut seen: Vec<&str> = RESERVED.to_vec();
    for t in &tables {
        cohort_proto::check_app(&t.name).map_err(|m| bad("app.name", &m))?;
        if seen.contains(&t.name.as_str()) {
            let why = if RESERVED.contains(&t.name.as_str()) {
                "is the name of the [agent] or [worker] section's app: choose another"
            } else {
                "is the name of another [[app]] too: names must be unique"
            };
            return Err(bad(&key(&t.name, "name"), why));
        }
        seen.push(&t.name);
    }
    for t in &tables {
        if t.command.first().is_none_or(|p| p.is_empty()) {
            return Err(bad(&key(&t.name, "command"), "must name a program"));
        }
        for d in &t.depends_on {
            if !seen.contains(&d.as_str()) {
                return Err(bad(
                    &key(&t.name, "depends_on"),
                    &format!("{d:?} is no app (apps: {})", seen.join(", ")),
                ));
            }
        }
        for l in t.listeners.iter().flatten() {
            if !listeners.iter().any(|have| have.name == *l) {
                let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
                return Err(bad(
                    &key(&t.name, "listeners"),
                    &format!("{l:?} is no [[listener]] (listeners: {})", names.join(", ")),
                ));
            }
        }
    }
    if let Some(cycle) = cycle(&tables) {
        return Err(bad(
            &key(&cycle[0], "depends_on"),
            &format!("is a cycle: {}", cycle.join(" → ")),
        ));
    }
    tables.into_iter().map(read).collect()
}

fn read(t: AppTable) -> Result<App, ConfigError> {
    let mut env = Vec::new();
    if let Some(path) = &t.env_file {
        let lines = dotenvy::from_path_iter(path).map_err(|e| {
            bad(
                &key(&t.name, "env_file"),
                &format!("cannot read {}: {e}", path.display()),
            )
        })?;
        for line in lines {
            env.push(line.map_err(|e| {
                bad(
                    &key(&t.name, "env_file"),
                    &format!("{}: {e}", path.display()),
                )
            })?);
        }
    }
    env.extend(t.env);
    let health = t.health.map(|h| health(&t.name, h)).transpose()?;
    Ok(App {
        health,
        count: t.count.unwrap_or(WorkerCount::Fixed(1)),
        name: t.name,
        command: t.command,
        join: t.join,
        env,
        env_file: t.env_file,
        cwd: t.cwd,
        listeners: t.listeners,
        max_rss: t.max_rss,
        restart: t.restart,
        depends_on: t.depends_on,
    })
}

fn health(app: &str, h: HealthTable) -> Result<HealthCheck, ConfigError> {
    let probe = match (h.http, h.exec) {
        (Some(path), None) if path.starts_with('/') && !path.contains(char::is_whitespace) => {
            Probe::Http(path)
        }
        (Some(path), None) => {
            return Err(bad(
                &key(app, "health.http"),
                &format!("{path:?}: give a path such as /healthz"),
            ));
        }
        (None, Some(cmd)) if cmd.first().is_some_and(|p| !p.is_empty()) => Probe::Exec(cmd),
        _ => {
            return Err(bad(
                &key(app, "health"),
                "give either http = \"/healthz\" or exec = [\"cmd\", \"arg\"]",
            ));
        }
    };
    let check = HealthCheck {
        probe,
        interval: h.interval.unwrap_or(Duration::from_secs(5)),
        timeout: h.timeout.unwrap_or(Duration::from_secs(1)),
        failures: h.failures.unwrap_or(3),
    };
    if check.interval < Duration::from_millis(10) || check.timeout.is_zero() || check.failures == 0
    {
        return Err(bad(
            &key(app, "health"),
            "interval must be at least 10ms, timeout above 0 and failures at least 1",
        ));
    }
    Ok(check)
}

/// A `depends_on` cycle, as the names around it (first = last), if any.
fn cycle(tables: &[AppTable]) -> Option<Vec<String>> {
    let deps: HashMap<&str, &[String]> = tables
        .iter()
        .map(|t| (t.name.as_str(), t.depends_on.as_slice()))
        .collect();
    // Depth-first, keeping the path: a name met again on it closes a cycle.
    fn visit<'a>(
        name: &'a str,
        deps: &HashMap<&'a str, &'a [String]>,
        path: &mut Vec<&'a str>,
        done: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| *p == name) {
            let mut c: Vec<String> = path[at..].iter().map(|s| s.to_string()).collect();
            c.push(name.to_string());
            return Some(c);
        }
        if done.contains(&name) {
            return None;
        }
        path.push(name);
        for d in deps.get(name).copied().unwrap_or_default() {
            if let Some(c) = visit(d, deps, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.push(name);
        None
    }
    let mut done = Vec::new();
    tables
        .iter()
        .find_map(|t| visit(&t.name, &deps, &mut Vec::new(), &mut done))
}

fn key(app: &str, field: &str) -> String {
    format!("app {app}: {field}")
}

fn bad(key: &str, message: &str) -> ConfigError {
    ConfigError::Value {
        key: key.to_string(),
        message: message.to_string(),
    }
}
