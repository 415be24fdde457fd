//! A reload's diff, app by app: a new app starts (in order), a removed one
//! stops, a changed one rolls (one member at a time, without a gap), a new
//! count scales, an unchanged one is not touched.

use super::*;
use crate::config::RESERVED_APPS;
use std::collections::HashMap;

/// What a reload did to one app.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The app.
    pub app: String,
    /// `started`, `stopped`, `restarted`, `scaled`, `restarted and scaled`,
    /// `updated` (`depends_on` or `max_rss`, applied as they are) or
    /// `unchanged`.
    pub action: String,
    /// In words: what changed.
    pub detail: String,
}

impl Supervisor {
    pub(super) fn reload(
        &mut self,
        new: Vec<AppSpec>,
        reply: oneshot::Sender<Result<Vec<Change>, Status>>,
    ) {
        if self.restart.is_some() {
            let _ = reply.send(Err(Status::failed_precondition(
                "a restart or reload is in progress; wait for it to finish, then reload",
            )));
            return;
        }
        if self.cfg.master_url.is_none() && new.iter().any(|a| a.count > 0) {
            let _ = reply.send(Err(operations::no_socket()));
            return;
        }
        let mut changes = Vec::new();
        let change = |app: &str, action: &str, detail: String| Change {
            app: app.to_string(),
            action: action.to_string(),
            detail,
        };
        let gone: Vec<String> = self
            .apps
            .iter()
            .map(|a| a.spec.name.clone())
            .filter(|n| !new.iter().any(|a| a.name == *n))
            .collect();
        for name in gone {
            for i in self.of_app(&name).collect::<Vec<_>>().into_iter().rev() {
                self.remove_slot(i);
            }
            self.apps.retain(|a| a.spec.name != name);
            changes.push(change(&name, "stopped", "no longer in the file".into()));
        }
        let mut roll = Vec::new();
        for spec in new {
            let Some(a) = self.app_index(&spec.name) else {
                let detail = format!("{} member(s)", spec.count);
                changes.push(change(&spec.name, "started", detail));
                self.add_app(spec);
                continue;
            };
            let old = self.apps[a].spec.clone();
            if old == spec {
                // The [agent] and [worker] sections' apps, when they run
                // nothing, are not the file's business.
                if spec.count > 0 || !RESERVED_APPS.contains(&spec.name.as_str()) {
                    changes.push(change(&spec.name, "unchanged", String::new()));
                }
                continue;
            }
            let rerun = !old.runs_like(&spec);
            // The members from before, up to the new count, run the old
            // spec; those added now start with the new one.
            let keep: Vec<String> = self
                .of_app(&spec.name)
                .map(|i| self.entries[i].name.clone())
                .take(spec.count.min(old.count) as usize)
                .collect();
            let (name, one_shot) = (spec.name.clone(), spec.restart == RestartMode::Never);
            self.apps[a].spec = spec;
            self.resize(a);
            let now = &self.apps[a].spec;
            let scaled = old.count != now.count;
            let mut what = vec![differences(&old, now)];
            if scaled {
                what.push(format!("count {} → {}", old.count, now.count));
            }
            what.retain(|w| !w.is_empty());
            let action = match (rerun, scaled) {
                (true, true) => "restarted and scaled",
                (true, false) => "restarted",
                (false, true) => "scaled",
                (false, false) => "updated",
            };
            changes.push(change(&name, action, what.join("; ")));
            if rerun && self.apps[a].started {
                if one_shot {
                    // A job runs again; nothing waits on it.
                    for i in self.of_app(&name).collect::<Vec<_>>() {
                        self.apply(i, Event::Replace);
                    }
                } else {
                    roll.extend(keep);
                }
            }
        }
        // In start order again (stable: new apps after the others of their
        // depth).
        let specs: Vec<AppSpec> = self.apps.iter().map(|a| a.spec.clone()).collect();
        let depth = app::depths(&specs);
        self.apps
            .sort_by_key(|a| depth.get(&a.spec.name).copied().unwrap_or(0));
        self.registry.set_max_rss(max_rss(&specs));
        self.registry.set_health(health_checks(&specs));
        for c in &changes {
            if c.action != "unchanged" {
                tracing::info!(app = %c.app, action = %c.action, detail = %c.detail, "reload");
                self.registry
                    .announce_reload(&c.app, &format!("{}: {}", c.action, c.detail));
            }
        }
        self.start_due();
        let done: Done = Box::new(move |r| {
            let _ = reply.send(r.map(|()| changes));
        });
        self.roll(roll, true, done);
    }
}

/// The memory limits of `apps`, by app.
pub fn max_rss(apps: &[AppSpec]) -> crate::registry::MaxRss {
    crate::registry::MaxRss(
        apps.iter()
            .filter_map(|a| a.max_rss.map(|m| (a.name.clone(), m)))
            .collect(),
    )
}

/// The health probes of `apps`, by app.
pub fn health_checks(apps: &[AppSpec]) -> HashMap<String, crate::config::HealthCheck> {
    apps.iter()
        .filter_map(|a| a.health.clone().map(|h| (a.name.clone(), h)))
        .collect()
}

/// Which fields but the count differ, in words.
fn differences(old: &AppSpec, new: &AppSpec) -> String {
    let fields = [
        ("command", old.command != new.command),
        ("env", old.env != new.env),
        ("cwd", old.cwd != new.cwd),
        ("listeners", old.listeners != new.listeners),
        ("restart", old.restart != new.restart),
        ("health", old.health != new.health),
        ("depends_on", old.depends_on != new.depends_on),
        ("max_rss", old.max_rss != new.max_rss),
    ];
    let changed: Vec<&str> = fields
        .iter()
        .filter(|(_, differ)| *differ)
        .map(|(f, _)| *f)
        .collect();
    match changed.is_empty() {
        true => String::new(),
        false => format!("{} changed", changed.join(", ")),
    }
}
