//! Health probes' results (the probes run in `crate::probe`): a member of
//! an app with a probe is ready once its probe passes, not when it says so;
//! a ready one that fails `failures` probes in a row is drained and, if
//! local, replaced without a gap, as a member over `max_rss` is.

use super::Registry;
use super::members::{Member, Presence};
use crate::config::{HealthCheck, Probe};
use cohort_proto::{MemberName, Role};
use std::collections::HashMap;
use std::time::Instant;

/// A member to probe, and how.
#[derive(Clone, Debug)]
pub struct ProbeTarget {
    /// Its name.
    pub name: String,
    /// The instance probed (a result for another is dropped).
    pub instance_id: String,
    /// Its app.
    pub app: String,
    /// Its pid (for an exec probe).
    pub pid: u32,
    /// The address it reports in its label `http`, if any.
    pub http: Option<String>,
    /// Its app's probe.
    pub check: HealthCheck,
}

/// The label a member reports its own HTTP address in (`HOST:PORT`).
pub const HTTP_LABEL: &str = "http";

impl Registry {
    /// Replaces the health probes (a reload).
    pub fn set_health(&self, checks: HashMap<String, HealthCheck>) {
        *self.health.lock().unwrap_or_else(|p| p.into_inner()) = checks;
    }

    fn checks(&self) -> HashMap<String, HealthCheck> {
        self.health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether `m`'s readiness is its probe's: a worker of an app with a
    /// probe, an HTTP one, or an exec one the master can run (local).
    pub(super) fn probed(&self, m: &Member) -> bool {
        let checks = self.health.lock().unwrap_or_else(|p| p.into_inner());
        applies(checks.get(&m.app), m)
    }

    /// The members to probe now: those of probed apps not draining.
    pub fn probe_targets(&self) -> Vec<ProbeTarget> {
        let checks = self.checks();
        if checks.is_empty() {
            return Vec::new();
        }
        let st = self.lock();
        st.members
            .values()
            .filter(|m| m.presence != Presence::Draining)
            .filter_map(|m| {
                let check = checks.get(&m.app).filter(|c| applies(Some(c), m))?;
                Some(ProbeTarget {
                    name: m.name.to_string(),
                    instance_id: m.instance_id.to_string(),
                    app: m.app.clone(),
                    pid: m.pid,
                    http: m.labels.get(HTTP_LABEL).cloned(),
                    check: check.clone(),
                })
            })
            .collect()
    }

    /// What a probe of instance `instance_id` of `name` found.
    pub fn probe_result(&self, name: &str, instance_id: &str, result: Result<(), String>) {
        let now = Instant::now();
        let Ok(name) = MemberName::parse(name) else {
            return;
        };
        let mut st = self.lock();
        let Some(m) = st
            .members
            .get_mut(&name)
            .filter(|m| m.instance_id.to_string() == instance_id)
        else {
            return;
        };
        let failures = self
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&m.app)
            .map_or(u32::MAX, |c| c.failures);
        match result {
            Ok(()) => {
                m.probe_fails = 0;
                if m.presence == Presence::Joined {
                    tracing::info!(member.name = %name, "health probe passed");
                    self.mark_ready(&mut st, &name, now);
                }
            }
            Err(why) => {
                m.probe_fails = m.probe_fails.saturating_add(1);
                let fails = m.probe_fails;
                match m.presence {
                    // Said at the first failure, then once per `failures`.
                    Presence::Joined if fails % failures.max(1) == 1 || failures == 1 => {
                        tracing::warn!(member.name = %name, failures = fails, "not ready: its health probe fails: {why}");
                    }
                    Presence::Ready if fails == failures => {
                        let reason = format!("health probe failed {fails} times in a row: {why}");
                        self.drain_unhealthy(&mut st, &name, reason);
                    }
                    _ => {}
                }
            }
        }
    }
}

fn applies(check: Option<&HealthCheck>, m: &Member) -> bool {
    m.role == Role::Worker
        && check.is_some_and(|c| match c.probe {
            Probe::Http(_) => true,
            Probe::Exec(_) => m.local,
        })
}
