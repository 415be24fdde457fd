//! What `cohortctl` prints: tables for people (coloured on a terminal),
//! JSON for scripts.

use cohort::pb;
use cohort_proto::time::{span, unix_ms};
use serde_json::{Value, json};
use std::io::IsTerminal;
use std::time::{SystemTime, UNIX_EPOCH};

/// Colour when stdout is a terminal and `NO_COLOR` is not set.
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

pub fn state(s: i32) -> String {
    pb::MemberState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("MEMBER_STATE_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| format!("state {s}"))
}

pub fn role(r: i32) -> String {
    pb::Role::try_from(r)
        .map(|r| r.as_str_name().trim_start_matches("ROLE_").to_lowercase())
        .unwrap_or_else(|_| format!("role {r}"))
}

fn paint(text: &str, state: &str, colour: bool) -> String {
    if !colour {
        return text.to_string();
    }
    let code = match state {
        "ready" => "32",
        "suspect" | "draining" => "33",
        "backoff" | "failed" | "gone" => "31",
        _ => "36",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `45s`, `12m`, `3h12m`, `2d4h`.
pub fn uptime(started_ms: u64, now_ms: u64) -> String {
    if started_ms == 0 {
        return "-".into();
    }
    let s = now_ms.saturating_sub(started_ms) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `512 B`, `12.3 MiB`.
pub fn bytes(n: u64) -> String {
    match n {
        0 => "-".into(),
        1..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

/// The `ls` table.
pub fn table(members: &[pb::MemberInfo], colour: bool) -> String {
    let now = now_ms();
    let head = [
        "APP", "NAME", "ROLE", "STATE", "PID@HOST", "WHERE", "RESTARTS", "UPTIME", "CPU", "MEM",
        "DROPPED",
    ];
    // Grouped by app (the agent, in none, first), by name within one.
    let mut sorted: Vec<&pb::MemberInfo> = members.iter().collect();
    sorted.sort_by(|a, b| (&a.app, &a.name).cmp(&(&b.app, &b.name)));
    let rows: Vec<[String; 11]> = sorted
        .into_iter()
        .map(|m| {
            let pid = match (m.pid, m.host.as_str()) {
                (0, _) => "-".to_string(),
                (p, "") => p.to_string(),
                (p, h) => format!("{p}@{h}"),
            };
            [
                match m.app.as_str() {
                    "" => "-".to_string(),
                    app => app.to_string(),
                },
                m.name.clone(),
                role(m.role),
                state(m.state),
                pid,
                if m.local { "local" } else { "remote" }.into(),
                m.restarts.to_string(),
                uptime(unix_ms(m.started_at.as_ref()), now),
                format!("{:.1}%", m.cpu_percent),
                bytes(m.rss_bytes),
                m.dropped_messages.to_string(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(head.iter().map(|h| h.to_string()).collect())];
    for r in rows {
        let st = r[3].clone();
        let mut cells: Vec<String> = r.into_iter().collect();
        // Pad before painting: escape codes have no width.
        cells[3] = paint(&format!("{:<w$}", cells[3], w = widths[3]), &st, colour);
        out.push(line(cells));
    }
    if members.is_empty() {
        out.push("(no members)".into());
    }
    // Why a slot is not running: FAILED, BACKOFF, or waiting to start.
    for m in &sorted_why(members) {
        out.push(format!("{}: {}", m.name, m.last_exit));
    }
    out.join("\n")
}

/// Members with no process whose slot says why (name order).
fn sorted_why(members: &[pb::MemberInfo]) -> Vec<&pb::MemberInfo> {
    use pb::MemberState as S;
    let mut why: Vec<&pb::MemberInfo> = members
        .iter()
        .filter(|m| m.pid == 0 && !m.last_exit.is_empty())
        .filter(|m| {
            [S::Failed, S::Backoff, S::Starting]
                .iter()
                .any(|s| *s as i32 == m.state)
        })
        .collect();
    why.sort_by(|a, b| a.name.cmp(&b.name));
    why
}

/// `reload`: what was done, app by app.
pub fn reload(apps: &[pb::AppChange], out: &mut impl std::io::Write) -> std::io::Result<()> {
    let width = apps.iter().map(|a| a.app.len()).max().unwrap_or(0).max(3);
    let action = apps
        .iter()
        .map(|a| a.action.len())
        .max()
        .unwrap_or(0)
        .max(6);
    writeln!(out, "{:<width$}  {:<action$}  DETAIL", "APP", "ACTION")?;
    for a in apps {
        let line = format!("{:<width$}  {:<action$}  {}", a.app, a.action, a.detail);
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// A time or span as grpcurl prints it (RFC 3339, `"0.25s"`), or null.
fn text(v: Option<&impl std::fmt::Display>) -> Value {
    v.map_or(Value::Null, |v| Value::String(v.to_string()))
}

fn member_value(m: &pb::MemberInfo) -> Value {
    json!({
        "name": m.name,
        "app": m.app,
        "instance_id": m.instance_id,
        "role": role(m.role),
        "state": state(m.state),
        "pid": m.pid,
        "host": m.host,
        "local": m.local,
        "restarts": m.restarts,
        "started_at": text(m.started_at.as_ref()),
        "cpu_percent": m.cpu_percent,
        "rss_bytes": m.rss_bytes,
        "labels": m.labels,
        "version": m.version,
        "dropped_messages": m.dropped_messages,
        "next_attempt_at": text(m.next_attempt_at.as_ref()),
        "last_exit": m.last_exit,
        "heartbeat_rtt": text(m.heartbeat_rtt.as_ref()),
    })
}

/// `ls --json`: an array of members.
pub fn members_json(members: &[pb::MemberInfo]) -> String {
    Value::Array(members.iter().map(member_value).collect()).to_string()
}

/// `info`, as text or JSON.
pub fn info(i: &pb::ClusterInfoResponse, as_json: bool) -> String {
    let counts: Vec<Value> = i
        .counts
        .iter()
        .map(|c| json!({"role": role(c.role), "state": state(c.state), "count": c.count}))
        .collect();
    let uptime_ms = span(i.uptime.as_ref()).map_or(0, |d| d.as_millis() as u64);
    let timing = i.settings.unwrap_or_default();
    // As grpcurl shows a Duration ("16s", "0.200s").
    let shown = |d: Option<&_>| d.map_or("?".to_string(), ToString::to_string);
    let (beat, suspect, dead) = (
        shown(timing.heartbeat_interval.as_ref()),
        shown(timing.suspect_after.as_ref()),
        shown(timing.dead_after.as_ref()),
    );
    if as_json {
        return json!({
            "version": i.version,
            "uptime": text(i.uptime.as_ref()),
            "listen_addr": i.listen_addr,
            "cluster_ready": i.cluster_ready,
            "expected_agents": i.expected_agents,
            "expected_workers": i.expected_workers,
            "counts": counts,
            "listeners": i.listeners.iter().map(|l| json!({"name": l.name, "addr": l.addr})).collect::<Vec<_>>(),
            "heartbeat_interval": beat,
            "suspect_after": suspect,
            "dead_after": dead,
            "master_role": i.master_role,
            "leader": i.leader,
            "term": i.term,
            "masters": i.masters,
        })
        .to_string();
    }
    let mut out = vec![
        format!("master     {} on {}", i.version, i.listen_addr),
        format!("uptime     {}", uptime(1, uptime_ms.saturating_add(1))),
        format!(
            "cluster    {} (waits for {} remote agent(s), {} remote worker(s))",
            if i.cluster_ready {
                "ready"
            } else {
                "not ready yet"
            },
            i.expected_agents,
            i.expected_workers
        ),
    ];
    out.push(format!(
        "health     heartbeats every {beat}; a silent member is SUSPECT after {suspect}, evicted after {dead} (a closed stream or exited child at once)"
    ));
    for c in &i.counts {
        out.push(format!(
            "members    {} {}: {}",
            role(c.role),
            state(c.state),
            c.count
        ));
    }
    for l in &i.listeners {
        out.push(format!("listener   {} {}", l.name, l.addr));
    }
    if !i.master_role.is_empty() {
        let leader = match i.leader.as_str() {
            "" => "none known (an election is in progress or etcd is unreachable)",
            l => l,
        };
        out.push(format!("role       {} (term {})", i.master_role, i.term));
        out.push(format!("leader     {leader}"));
        out.push(format!("masters    {}", i.masters.join(", ")));
    }
    out.join("\n")
}

/// One event line, or its JSON.
pub fn event(e: &pb::ClusterEvent, as_json: bool) -> String {
    let kind = pb::EventKind::try_from(e.kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("EVENT_KIND_")
                .to_lowercase()
        })
        .unwrap_or_else(|_| format!("kind {}", e.kind));
    if as_json {
        return json!({
            "kind": kind,
            "at": text(e.at.as_ref()),
            "member": e.member.as_ref().map(member_value),
            "reason": e.reason,
        })
        .to_string();
    }
    let who = e.member.as_ref().map_or(String::new(), |m| {
        format!(" {} ({}, {})", m.name, role(m.role), state(m.state))
    });
    let why = match e.reason.as_str() {
        "" => String::new(),
        r => format!(": {r}"),
    };
    format!("{kind}{who}{why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptimes_and_sizes_read_like_pm2() {
        let rows = [
            (0, "45s", 45),
            (0, "2m", 150),
            (0, "3h12m", 11_520),
            (0, "2d4h", 187_200),
        ];
        for (_, want, secs) in rows {
            assert_eq!(uptime(1_000, 1_000 + secs * 1000), want);
        }
        assert_eq!(uptime(0, 5), "-");
        assert_eq!(bytes(13_000_000), "12.4 MiB");
        assert_eq!(bytes(2048), "2.0 KiB");
    }

    #[test]
    fn the_table_lines_up_and_paints_only_on_a_terminal() {
        let m = |name: &str, state: pb::MemberState| pb::MemberInfo {
            name: name.into(),
            role: pb::Role::Worker as i32,
            state: state as i32,
            pid: 42,
            host: "h".into(),
            local: true,
            app: "worker".into(),
            ..Default::default()
        };
        let members = [
            m("worker-1", pb::MemberState::Ready),
            m("w2", pb::MemberState::Failed),
        ];
        let plain = table(&members, false);
        let lines: Vec<&str> = plain.lines().collect();
        assert!(lines[0].starts_with("APP     NAME      ROLE"), "{plain}");
        assert!(
            lines[1].starts_with("worker  w2 "),
            "grouped by app, by name in it: {plain}"
        );
        assert!(lines[2].contains("ready") && lines[1].contains("failed"));
        assert!(!plain.contains('\x1b'));
        let painted = table(&members, true);
        assert!(painted.contains("\x1b[32mready"), "{painted}");
        assert!(painted.contains("\x1b[31mfailed"));
    }
}
