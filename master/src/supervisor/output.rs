//! A local child's output: each line read once, logged once by the master
//! under the member's name with the child's own level (the children log
//! JSON, so no second timestamp and no line nested in a line), and kept
//! for `Control/Logs`.

use crate::logs::LogStore;
use cohort_process::lines::Lines;
use cohort_proto::Role;
use std::sync::Arc;
use tokio::process::Child;
use tokio_stream::StreamExt;
use tokio_util::codec::FramedRead;

/// Longest line read whole (a JSON line must be whole to be parsed).
const MAX_READ: usize = 64 << 10;

/// What children are told to log in (`COHORT_LOG_FORMAT`).
pub const CHILD_LOG_FORMAT: &str = "json";

/// A line's level and text: a tracing JSON line's level, target, message
/// and fields; anything else (JSON a program prints of its own included)
/// as it is, at info.
pub fn parse(line: &str) -> (String, String) {
    let v = match serde_json::from_str::<serde_json::Value>(line) {
        Ok(serde_json::Value::Object(v))
            if v.get("level").is_some_and(|l| l.is_string())
                && v.get("fields").is_some_and(|f| f.is_object()) =>
        {
            v
        }
        _ => return ("info".into(), line.to_string()),
    };
    let level = v
        .get("level")
        .and_then(|l| l.as_str())
        .unwrap_or("info")
        .to_lowercase();
    let target = v.get("target").and_then(|t| t.as_str()).unwrap_or("");
    let mut text = String::from(target);
    if let Some(serde_json::Value::Object(fields)) = v.get("fields") {
        if let Some(m) = fields.get("message").and_then(|m| m.as_str()) {
            text.push_str(if text.is_empty() { "" } else { ": " });
            text.push_str(m);
        }
        // The member's name comes with every relogged line anyway.
        let shown = |k: &&String| *k != "message" && *k != "member.name";
        for (k, v) in fields.iter().filter(|(k, _)| shown(k)) {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            text.push_str(&format!(" {k}={v}"));
        }
    }
    (level, text)
}

fn relog(level: &str, name: &str, source: &str, text: &str) {
    match level {
        "error" => {
            tracing::error!(target: "cohort::child", { member.name = %name, source = source }, "{text}")
        }
        "warn" => {
            tracing::warn!(target: "cohort::child", { member.name = %name, source = source }, "{text}")
        }
        "debug" => {
            tracing::debug!(target: "cohort::child", { member.name = %name, source = source }, "{text}")
        }
        "trace" => {
            tracing::trace!(target: "cohort::child", { member.name = %name, source = source }, "{text}")
        }
        _ => {
            tracing::info!(target: "cohort::child", { member.name = %name, source = source }, "{text}")
        }
    }
}

/// Reads the child's stdout and stderr to their end, on the output thread.
pub fn capture(child: &mut Child, name: &str, role: Role, app: &str, logs: &Arc<LogStore>) {
    let fds = [
        (child.stdout.take().map(|s| s.into_owned_fd()), "stdout"),
        (child.stderr.take().map(|s| s.into_owned_fd()), "stderr"),
    ];
    for (fd, source) in fds {
        let Some(Ok(fd)) = fd else { continue };
        let (name, logs) = (name.to_string(), logs.clone());
        let app = match role {
            Role::Worker => app.to_string(),
            Role::Agent => String::new(),
        };
        output_thread().spawn(async move {
            // Registered with the output thread's reactor, not the master's.
            let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
                return;
            };
            let mut lines = FramedRead::new(pipe, Lines::new(MAX_READ));
            let mut budget = Budget::new();
            while let Some(Ok(line)) = lines.next().await {
                let (level, text) = parse(&line);
                relog(&level, &name, source, &text);
                logs.append(&name, role, &app, &level, text, source);
                // Over its rate, the child's pipe is left to fill: it waits
                // on its own writes, as it would on a slow terminal.
                budget.spend().await;
            }
        });
    }
}

/// Lines per second the master reads from one child stream.
pub const LINES_PER_SECOND: u32 = 10_000;

/// A per-second allowance of lines.
struct Budget {
    since: tokio::time::Instant,
    used: u32,
}

impl Budget {
    fn new() -> Budget {
        Budget {
            since: tokio::time::Instant::now(),
            used: 0,
        }
    }

    async fn spend(&mut self) {
        self.used += 1;
        if self.used < LINES_PER_SECOND {
            return;
        }
        let next = self.since + std::time::Duration::from_secs(1);
        tokio::time::sleep_until(next).await;
        self.since = tokio::time::Instant::now();
        self.used = 0;
    }
}

/// The thread that reads, parses and logs every child's output, so that a
/// chatty child costs the routing thread nothing. Started on first use.
fn output_thread() -> &'static tokio::runtime::Handle {
    static HANDLE: std::sync::OnceLock<tokio::runtime::Handle> = std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("cohort-output".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                let _ = tx.send(rt.handle().clone());
                rt.block_on(std::future::pending::<()>());
            });
        match spawned.ok().and_then(|_| rx.recv().ok()) {
            Some(handle) => handle,
            // Without its own thread, the output is read on the master's.
            None => tokio::runtime::Handle::current(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_json_line_keeps_its_level_message_and_fields() {
        let line = r#"{"timestamp":"2026-11-27T21:00:00Z","level":"WARN","fields":{"message":"slow","member.name":"worker-1","ms":12},"target":"app"}"#;
        assert_eq!(parse(line), ("warn".into(), "app: slow ms=12".into()));
        assert_eq!(parse("plain text"), ("info".into(), "plain text".into()));
        // A program's own JSON is kept whole.
        let own = r#"{"type":"message","action":"job","data":{"id":1}}"#;
        assert_eq!(parse(own), ("info".into(), own.into()));
    }
}
