//! `cohortctl logs`: which members' lines to ask for, and how each line
//! reads (`NAME | 12:00:01.234 INFO text`, the name coloured per member on
//! a terminal, like `pm2 logs`).

use cohort::pb;
use serde_json::json;
use std::time::Duration;

/// The request for `which` (`all`, a role, `app:APP`, or a member name).
pub fn request(
    which: Option<&str>,
    since: Option<Duration>,
    tail: u32,
    follow: bool,
) -> pb::LogsRequest {
    let mut req = pb::LogsRequest {
        tail,
        follow,
        since: since.and_then(|s| {
            let ms = u64::try_from(s.as_millis()).unwrap_or(u64::MAX);
            cohort_proto::time::timestamp(crate::show::now_ms().saturating_sub(ms))
        }),
        ..Default::default()
    };
    match which {
        None | Some("all") => {}
        Some(w) if w.starts_with("app:") => req.app = w["app:".len()..].to_string(),
        Some(w) => match cohort::Role::from_word(w) {
            Ok(role) => req.role = role.into(),
            Err(_) => req.member = w.to_string(),
        },
    }
    req
}

/// `HH:MM:SS.mmm`, UTC.
fn clock(at_ms: u64) -> String {
    let s = at_ms / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        at_ms % 1000
    )
}

/// One of six colours, always the same for a name.
fn hue(name: &str) -> u8 {
    let h = name
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    31 + (h % 6) as u8
}

/// One line, or its JSON.
pub fn line(e: &pb::LogEntry, colour: bool, as_json: bool) -> String {
    let at_ms = cohort_proto::time::unix_ms(e.at.as_ref());
    if as_json {
        return json!({
            "member": e.member,
            "role": crate::show::role(e.role),
            "at": e.at.as_ref().map(ToString::to_string),
            "level": e.level,
            "source": e.source,
            "text": e.text,
        })
        .to_string();
    }
    let name = format!("{:<12}", e.member);
    let level = e.level.to_uppercase();
    if !colour {
        return format!("{name} | {} {level:<5} {}", clock(at_ms), e.text);
    }
    let level = match e.level.as_str() {
        "error" => format!("\x1b[31m{level:<5}\x1b[0m"),
        "warn" => format!("\x1b[33m{level:<5}\x1b[0m"),
        _ => format!("{level:<5}"),
    };
    format!(
        "\x1b[{}m{name}\x1b[0m | \x1b[2m{}\x1b[0m {level} {}",
        hue(&e.member),
        clock(at_ms),
        e.text
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_picks_a_role_a_member_or_everyone() {
        assert_eq!(
            request(Some("workers"), None, 5, true).role,
            pb::Role::Worker as i32
        );
        let one = request(Some("worker-2"), None, 0, false);
        assert_eq!((one.member.as_str(), one.role), ("worker-2", 0));
        let all = request(Some("all"), Some(Duration::from_secs(600)), 0, false);
        assert!(all.member.is_empty() && all.role == 0);
        let since = cohort_proto::time::unix_ms(all.since.as_ref());
        assert!(crate::show::now_ms() - since >= 600_000);
    }

    #[test]
    fn a_line_names_its_member_and_time() {
        let e = pb::LogEntry {
            member: "worker-1".into(),
            at: cohort_proto::time::timestamp(3_723_004),
            level: "warn".into(),
            text: "app: slow".into(),
            ..Default::default()
        };
        assert_eq!(
            line(&e, false, false),
            "worker-1     | 01:02:03.004 WARN  app: slow"
        );
        assert!(line(&e, true, false).contains("\x1b[33mWARN"));
        assert!(line(&e, false, true).contains("\"member\":\"worker-1\""));
        assert_eq!(hue("worker-1"), hue("worker-1"));
    }
}
