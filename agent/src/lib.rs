//! `cohort-agent`: the cluster's one agent. It joins the master, then does
//! the shared background duties of the seed's model:
//!
//! - schedules from its config file: every `interval`, send `action` with
//!   `data` to every worker (`type = "all"`, Egg's `sendToApp`) or to one
//!   (`type = "worker"`, `sendRandom`);
//! - `--watch PATH`: when the file changes, broadcast `refresh` with its
//!   content (the seed's push update), which demo workers keep in their cache.
//!
//! A schedule whose send fails is logged and tried again next interval; a
//! task that panics is logged and restarted, and the agent keeps running.

use cohort::{Member, Role, Target};
use serde::Deserialize;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Largest watched file whose content is pushed (bigger files push only
/// their path and size).
pub const MAX_PUSHED_FILE: u64 = 64 * 1024;

/// Who a schedule sends to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleType {
    /// Every worker.
    All,
    /// One ready worker, round-robin.
    Worker,
}

/// One scheduled send.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// How often, e.g. `"5s"`.
    pub interval: String,
    /// `all` or `worker`.
    #[serde(rename = "type")]
    pub kind: ScheduleType,
    /// The action sent.
    pub action: String,
    /// The data sent (JSON text by convention).
    #[serde(default)]
    pub data: String,
}

/// The agent's config file.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Scheduled sends.
    #[serde(default)]
    pub schedule: Vec<Schedule>,
    /// A file to watch (also `--watch`).
    pub watch: Option<PathBuf>,
}

impl AgentConfig {
    /// Parses the TOML text; errors name the key.
    pub fn parse(text: &str) -> Result<AgentConfig, String> {
        let cfg: AgentConfig =
            toml::from_str(text).map_err(|e| e.to_string().trim().replace('\n', " "))?;
        for (i, s) in cfg.schedule.iter().enumerate() {
            let d = cohort_process::parse_duration(&s.interval)
                .map_err(|e| format!("schedule[{i}].interval: {e}"))?;
            if d < Duration::from_millis(10) {
                return Err(format!("schedule[{i}].interval: at least 10ms"));
            }
            if s.action.is_empty() {
                return Err(format!("schedule[{i}].action: must not be empty"));
            }
        }
        Ok(cfg)
    }
}

/// Joins and runs the duties until `shutdown` or a drain request.
pub async fn run(
    member: Member,
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    member.answer_pings();
    let mut tasks = Vec::new();
    for s in config.schedule {
        let every = cohort_process::parse_duration(&s.interval).map_err(anyhow::Error::msg)?;
        let m = member.clone();
        tasks.push(supervise(format!("schedule {}", s.action), move || {
            let (m, s) = (m.clone(), s.clone());
            async move { run_schedule(m, s, every).await }
        }));
    }
    if let Some(path) = config.watch {
        let m = member.clone();
        tasks.push(supervise(format!("watch {}", path.display()), move || {
            let (m, path) = (m.clone(), path.clone());
            async move { watch(m, path).await }
        }));
    }
    let result = member.serve(shutdown).await;
    for t in tasks {
        t.abort();
    }
    Ok(result?)
}

/// Runs `make()`'s task, restarting it after a panic (logged).
fn supervise<F, Fut>(what: String, make: F) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::spawn(make()).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    tracing::error!(task = %what, "task panicked; restarting it in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(_) => return,
            }
        }
    })
}

async fn run_schedule(member: Member, s: Schedule, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    member.cluster_ready().await;
    loop {
        tick.tick().await;
        let target = match s.kind {
            ScheduleType::All => Target::Role(Role::Worker),
            ScheduleType::Worker => Target::Random(Role::Worker),
        };
        match member.send(target, s.action.clone(), s.data.clone()).await {
            Ok(n) => tracing::debug!(action = %s.action, delivered = n, "scheduled send"),
            Err(e) => tracing::warn!(action = %s.action, error = %e, "scheduled send failed"),
        }
    }
}

fn stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Polls `path` and broadcasts `refresh` when it changes (and once at start).
async fn watch(member: Member, path: PathBuf) {
    member.cluster_ready().await;
    let mut last = None;
    loop {
        let now = stamp(&path);
        if now != last && now.is_some() {
            last = now;
            // Small files only (MAX_PUSHED_FILE): reading them inline is fine.
            let data = match now {
                Some((_, len)) if len <= MAX_PUSHED_FILE => match std::fs::read(&path) {
                    Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
                    }),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot read watched file");
                        serde_json::json!({ "path": path.display().to_string(), "error": e.to_string() })
                    }
                },
                _ => {
                    serde_json::json!({ "path": path.display().to_string(), "size": now.map(|n| n.1) })
                }
            };
            match member.broadcast("refresh", data.to_string()).await {
                Ok(n) => tracing::info!(path = %path.display(), delivered = n, "pushed refresh"),
                Err(e) => tracing::warn!(error = %e, "refresh broadcast failed"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_names_mistakes() {
        let c = AgentConfig::parse(
            "watch = \"/tmp/x\"\n[[schedule]]\ninterval = \"5s\"\ntype = \"all\"\naction = \"tick\"\ndata = '{\"n\":1}'\n",
        )
        .expect("valid");
        assert_eq!(c.schedule[0].kind, ScheduleType::All);
        assert_eq!(c.watch, Some(PathBuf::from("/tmp/x")));
        let err =
            AgentConfig::parse("[[schedule]]\ninterval = \"5\"\ntype = \"all\"\naction = \"t\"\n")
                .expect_err("unit");
        assert!(err.contains("schedule[0].interval"), "{err}");
        let err = AgentConfig::parse(
            "[[schedule]]\ninterval = \"5s\"\ntype = \"some\"\naction = \"t\"\n",
        )
        .expect_err("type");
        assert!(err.contains("some"), "{err}");
        let err = AgentConfig::parse("cron = 1\n").expect_err("unknown");
        assert!(err.contains("cron"), "{err}");
    }
}
