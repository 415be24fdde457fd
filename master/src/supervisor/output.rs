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

/// Longest line read whole (a JSON line must be whole to be parsed).
const MAX_READ: usize = 64 << 10;
use tokio_util::codec::FramedRead;

/// What children are told to log in (`COHORT_LOG_FORMAT`).
pub const CHILD_LOG_FORMAT: &str = "json";

/// A line's level and text: a tracing JSON line's level, target, message
/// and fields; anything else as it is, at info.
pub fn parse(line: &str) -> (String, String) {
    let Ok(serde_json::Value::Object(v)) = serde_json::from_str::<serde_json::Value>(line) else {
        return ("info".into(), line.to_string());
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
        for (k, v) in fields.iter().filter(|(k, _)| *k != "message") {
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

/// Reads the child's stdout and stderr to their end.
pub fn capture(child: &mut Child, name: &str, role: Role, logs: &Arc<LogStore>) {
    let streams: [(
        Option<Box<dyn tokio::io::AsyncRead + Unpin + Send>>,
        &'static str,
    ); 2] = [
        (child.stdout.take().map(|s| Box::new(s) as _), "stdout"),
        (child.stderr.take().map(|s| Box::new(s) as _), "stderr"),
    ];
    for (stream, source) in streams {
        let Some(stream) = stream else { continue };
        let (name, logs) = (name.to_string(), logs.clone());
        tokio::spawn(async move {
            let mut lines = FramedRead::new(stream, Lines::new(MAX_READ));
            while let Some(Ok(line)) = lines.next().await {
                let (level, text) = parse(&line);
                relog(&level, &name, source, &text);
                logs.append(&name, role, &level, text, source);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_json_line_keeps_its_level_message_and_fields() {
        let line = r#"{"timestamp":"2026-11-27T21:00:00Z","level":"WARN","fields":{"message":"slow","ms":12},"target":"app"}"#;
        assert_eq!(parse(line), ("warn".into(), "app: slow ms=12".into()));
        assert_eq!(parse("plain text"), ("info".into(), "plain text".into()));
    }
}
