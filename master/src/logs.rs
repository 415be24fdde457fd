//! Members' recent log lines, kept by the master for `Control/Logs` and
//! `cohortctl logs`: what its local children print (captured) and what
//! remote members forward over their Join stream.
//!
//! Bounded everywhere: the last [`LINES_PER_MEMBER`] lines of each member,
//! lines cut at [`MAX_LOG_LINE`](cohort_proto::log_line::MAX_LOG_LINE) bytes, [`MAX_BYTES`] in all (the oldest lines
//! of the whole cluster go first), and a remote member may send at most
//! [`REMOTE_LINES_PER_SECOND`]; what is over is counted, never queued, so
//! logging cannot slow messaging or grow memory without bound.

use cohort_proto::{Role, pb};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// Lines kept per member.
pub const LINES_PER_MEMBER: usize = 200;
/// Longest line kept (longer ones are cut, marked with `…`).
#[cfg(test)]
use cohort_proto::log_line::MAX_LOG_LINE as MAX_LINE;
/// Bytes of lines kept for the whole cluster.
pub const MAX_BYTES: usize = 32 << 20;
/// Lines per second a remote member may forward.
pub const REMOTE_LINES_PER_SECOND: u32 = 200;

/// One kept line.
#[derive(Clone, Debug, PartialEq)]
pub struct Line {
    seq: u64,
    /// The member's name.
    pub member: String,
    /// Its role.
    pub role: Role,
    /// Its app (empty for an agent).
    pub app: String,
    /// When, Unix ms.
    pub at_ms: u64,
    /// error, warn, info, debug, trace.
    pub level: &'static str,
    /// The message and its fields.
    pub text: String,
    /// stdout, stderr (local child) or member (forwarded).
    pub source: &'static str,
}

/// Which lines a reader wants.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Only this member.
    pub member: Option<String>,
    /// Only this role.
    pub role: Option<Role>,
    /// Only this app.
    pub app: Option<String>,
    /// Only from this moment, Unix ms.
    pub since_ms: u64,
    /// At most this many kept lines per member (0: all).
    pub tail: usize,
}

impl Filter {
    /// Whether `line` passes (the tail aside).
    pub fn keeps(&self, line: &Line) -> bool {
        self.member.as_ref().is_none_or(|m| *m == line.member)
            && self.role.is_none_or(|r| r == line.role)
            && self.app.as_ref().is_none_or(|a| *a == line.app)
            && line.at_ms >= self.since_ms
    }
}

#[derive(Default)]
struct Inner {
    rings: HashMap<String, VecDeque<Arc<Line>>>,
    /// Every line in the order it came, for the cluster-wide budget; an
    /// entry whose line already left its ring is skipped.
    order: VecDeque<(String, u64)>,
    bytes: usize,
    /// Lines in the rings (`order` also holds stale entries).
    live: usize,
    seq: u64,
    /// Remote members' rate: the second it counts and the lines in it.
    rate: HashMap<String, (Instant, u32)>,
}

/// The kept lines and the live feed of new ones.
pub struct LogStore {
    inner: Mutex<Inner>,
    feed: broadcast::Sender<Arc<Line>>,
}

impl Default for LogStore {
    fn default() -> Self {
        LogStore {
            inner: Mutex::default(),
            feed: broadcast::channel(4096).0,
        }
    }
}

fn cost(l: &Line) -> usize {
    64 + l.member.len() + l.level.len() + l.text.len()
}

/// Now, Unix ms.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl LogStore {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps one line and hands it to followers.
    pub fn append(
        &self,
        member: &str,
        role: Role,
        app: &str,
        level: &str,
        text: String,
        source: &'static str,
    ) {
        self.append_at(member, role, app, now_ms(), level, text, source);
    }

    #[allow(clippy::too_many_arguments)]
    fn append_at(
        &self,
        member: &str,
        role: Role,
        app: &str,
        at_ms: u64,
        level: &str,
        text: String,
        source: &'static str,
    ) {
        // A level is one of five words, whatever a member sent or printed.
        let level = match level {
            "error" => "error",
            "warn" => "warn",
            "debug" => "debug",
            "trace" => "trace",
            _ => "info",
        };
        let mut st = self.lock();
        st.seq += 1;
        let line = Arc::new(Line {
            seq: st.seq,
            member: member.to_string(),
            role,
            app: app.to_string(),
            at_ms,
            level,
            text: cohort_proto::log_line::cut(text),
            source,
        });
        let st = &mut *st;
        st.bytes += cost(&line);
        st.order.push_back((line.member.clone(), line.seq));
        let ring = st.rings.entry(line.member.clone()).or_default();
        ring.push_back(line.clone());
        st.live += 1;
        if ring.len() > LINES_PER_MEMBER
            && let Some(old) = ring.pop_front()
        {
            st.bytes -= cost(&old);
            st.live -= 1;
        }
        while st.bytes > MAX_BYTES {
            let Some((name, seq)) = st.order.pop_front() else {
                break;
            };
            if let Some(ring) = st.rings.get_mut(&name)
                && ring.front().is_some_and(|l| l.seq == seq)
                && let Some(old) = ring.pop_front()
            {
                st.bytes -= cost(&old);
                st.live -= 1;
                if ring.is_empty() {
                    st.rings.remove(&name);
                }
            }
        }
        // Stale entries (lines that left their ring by its own cap) are
        // dropped once they outnumber the live ones.
        if st.order.len() > 2 * st.live + 1024 {
            let rings = &st.rings;
            st.order.retain(|(name, seq)| {
                rings
                    .get(name)
                    .is_some_and(|r| r.front().is_some_and(|f| f.seq <= *seq))
            });
        }
        // Nobody following is fine.
        let _ = self.feed.send(line);
    }

    /// Keeps what a remote member forwarded, within its rate; returns how
    /// many lines were over it and dropped.
    pub fn forwarded(
        &self,
        member: &str,
        role: Role,
        app: &str,
        lines: Vec<pb::LogLine>,
        now: Instant,
    ) -> usize {
        let allowed = {
            let mut st = self.lock();
            if st.rate.len() > 4096 {
                st.rate
                    .retain(|_, (since, _)| now.saturating_duration_since(*since).as_secs() < 2);
            }
            let (since, used) = st.rate.entry(member.to_string()).or_insert((now, 0));
            if now.saturating_duration_since(*since).as_secs() >= 1 {
                *since = now;
                *used = 0;
            }
            let room = REMOTE_LINES_PER_SECOND.saturating_sub(*used) as usize;
            let allowed = room.min(lines.len());
            *used += allowed as u32;
            allowed
        };
        let dropped = lines.len() - allowed;
        for l in lines.into_iter().take(allowed) {
            let at = match cohort_proto::time::unix_ms(l.at.as_ref()) {
                0 => now_ms(),
                at => at,
            };
            self.append_at(member, role, app, at, &l.level, l.text, "member");
        }
        dropped
    }

    /// The kept lines `filter` wants, oldest first, and a feed of the new
    /// ones (taken under the lock that appends: nothing falls between them
    /// and nothing comes twice).
    pub fn read(&self, filter: &Filter) -> (Vec<Arc<Line>>, broadcast::Receiver<Arc<Line>>) {
        let st = self.lock();
        let feed = self.feed.subscribe();
        let mut lines: Vec<Arc<Line>> = Vec::new();
        for ring in st.rings.values() {
            let kept: Vec<&Arc<Line>> = ring.iter().filter(|l| filter.keeps(l)).collect();
            let skip = match filter.tail {
                0 => 0,
                n => kept.len().saturating_sub(n),
            };
            lines.extend(kept.into_iter().skip(skip).cloned());
        }
        lines.sort_by_key(|l| l.seq);
        (lines, feed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(lines: &[Arc<Line>]) -> Vec<String> {
        lines
            .iter()
            .map(|l| format!("{} {}", l.member, l.text))
            .collect()
    }

    #[test]
    fn lines_are_kept_per_member_cut_and_read_in_order() {
        let store = LogStore::default();
        store.append(
            "w-1",
            Role::Worker,
            "worker",
            "info",
            "one".into(),
            "stdout",
        );
        store.append("agent", Role::Agent, "", "warn", "two".into(), "stderr");
        store.append(
            "w-1",
            Role::Worker,
            "worker",
            "info",
            "x".repeat(5000),
            "stdout",
        );
        let (all, _) = store.read(&Filter::default());
        assert_eq!(all.len(), 3);
        assert_eq!(texts(&all)[..2], ["w-1 one", "agent two"]);
        assert_eq!(all[2].text.len(), MAX_LINE + '…'.len_utf8());
        let agents = Filter {
            role: Some(Role::Agent),
            ..Filter::default()
        };
        assert_eq!(texts(&store.read(&agents).0), ["agent two"]);
        for i in 0..LINES_PER_MEMBER + 50 {
            store.append(
                "w-1",
                Role::Worker,
                "worker",
                "info",
                format!("n{i}"),
                "stdout",
            );
        }
        let one = Filter {
            member: Some("w-1".into()),
            tail: 2,
            ..Filter::default()
        };
        let last = format!("w-1 n{}", LINES_PER_MEMBER + 49);
        assert_eq!(texts(&store.read(&one).0)[1], last);
        let all_of_w1 = Filter {
            member: Some("w-1".into()),
            ..Filter::default()
        };
        assert_eq!(store.read(&all_of_w1).0.len(), LINES_PER_MEMBER);
    }

    #[test]
    fn a_remote_member_is_held_to_its_rate_and_the_budget_holds() {
        let store = LogStore::default();
        let t0 = Instant::now();
        let lines = |n: usize| {
            (0..n)
                .map(|i| pb::LogLine {
                    at: cohort_proto::time::timestamp(1),
                    level: "info".into(),
                    text: format!("l{i}"),
                })
                .collect()
        };
        assert_eq!(store.forwarded("r", Role::Worker, "web", lines(150), t0), 0);
        assert_eq!(
            store.forwarded("r", Role::Worker, "web", lines(150), t0),
            100
        );
        let next = t0 + std::time::Duration::from_secs(1);
        assert_eq!(
            store.forwarded("r", Role::Worker, "web", lines(10), next),
            0
        );
        // The whole store stays within its bytes, however many members.
        for m in 0..2000 {
            for _ in 0..LINES_PER_MEMBER {
                store.append(
                    &format!("m{m}"),
                    Role::Worker,
                    "worker",
                    "info",
                    "y".repeat(200),
                    "stdout",
                );
            }
        }
        assert!(store.lock().bytes <= MAX_BYTES);
    }
}
