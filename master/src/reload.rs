//! `Control/Reload` and SIGHUP: the config file read again with the
//! master's flags and environment, checked whole, then applied app by app
//! by the supervisor. Keys the running master cannot change are refused
//! by name, and nothing changes.

use crate::config::Config;
use crate::supervisor::{Change, SupervisorHandle, app};
use tonic::Status;

/// Reloads the configuration of a running master.
pub struct Reloader {
    /// The configuration the master runs with.
    running: Config,
    supervisor: SupervisorHandle,
}

impl Reloader {
    /// A reloader of the master that runs `running`.
    pub fn new(running: Config, supervisor: SupervisorHandle) -> Reloader {
        Reloader {
            running,
            supervisor,
        }
    }

    /// Reads the file again and applies it; returns what it did per app.
    pub async fn reload(&self) -> Result<Vec<Change>, Status> {
        let new = Config::load(&self.running.args, &|k| std::env::var(k).ok()).map_err(|e| {
            Status::invalid_argument(format!(
                "nothing changed: the configuration is refused: {e}"
            ))
        })?;
        let fixed = fixed_changes(&self.running, &new);
        if !fixed.is_empty() {
            return Err(Status::failed_precondition(format!(
                "nothing changed: {} cannot change while the master runs (restart the master for that, or put the old value back and reload)",
                fixed.join(", ")
            )));
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        self.supervisor.reload(app::from_config(&new, cpus)).await
    }
}

/// The keys outside the apps (`[agent]`, `[worker]`, `[[app]]`) that differ.
fn fixed_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let differs = [
        ("listen", old.listen != new.listen),
        ("[[listener]]", old.listeners != new.listeners),
        ("[expect]", old.expect != new.expect),
        ("[health]", old.health != new.health),
        ("[restart]", old.restart != new.restart),
        ("[messaging]", old.messaging != new.messaging),
        (
            "[limits]",
            old.limits != new.limits
                || old.join_rate != new.join_rate
                || old.max_members != new.max_members,
        ),
        (
            "[metrics]",
            old.metrics_listen != new.metrics_listen
                || old.metrics_per_member != new.metrics_per_member,
        ),
        (
            "[auth]",
            old.token_file != new.token_file || old.tokens != new.tokens,
        ),
        ("--insecure", old.insecure != new.insecure),
        ("[tls]", old.tls != new.tls),
        ("[ha]", old.ha != new.ha),
    ];
    differs
        .into_iter()
        .filter(|(_, d)| *d)
        .map(|(k, _)| k)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_app_sections_may_change() {
        let old = Config::default();
        let mut new = old.clone();
        new.worker.count = crate::config::WorkerCount::Fixed(7);
        new.agent.count = 0;
        assert!(fixed_changes(&old, &new).is_empty());
        new.listen = "127.0.0.1:9".parse().expect("addr");
        new.tls.cert = Some("c.pem".into());
        assert_eq!(fixed_changes(&old, &new), ["listen", "[tls]"]);
    }
}
