//! Domain types shared by the master and the SDK: a member's role, a
//! validated member name, and where an envelope goes. Each converts to and
//! from its protobuf form here, so no other crate matches on raw enum ints.

use crate::pb;
use std::fmt;

/// What a member does in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// The one member that does the cluster's shared background duties.
    Agent,
    /// A member that runs business code.
    Worker,
}

impl Role {
    /// Lower-case name as used in names, logs and config (`agent`, `worker`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(Role::Agent),
            "worker" => Ok(Role::Worker),
            other => Err(format!(
                "unknown role {other:?}: use \"agent\" or \"worker\""
            )),
        }
    }
}

impl From<Role> for pb::Role {
    fn from(r: Role) -> Self {
        match r {
            Role::Agent => pb::Role::Agent,
            Role::Worker => pb::Role::Worker,
        }
    }
}

impl From<Role> for i32 {
    fn from(r: Role) -> Self {
        pb::Role::from(r) as i32
    }
}

impl TryFrom<i32> for Role {
    type Error = String;
    fn try_from(v: i32) -> Result<Self, Self::Error> {
        match pb::Role::try_from(v) {
            Ok(pb::Role::Agent) => Ok(Role::Agent),
            Ok(pb::Role::Worker) => Ok(Role::Worker),
            _ => Err(format!("role must be ROLE_AGENT or ROLE_WORKER (got {v})")),
        }
    }
}

/// Longest member name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// A member name: 1–128 of `A-Z a-z 0-9 . _ -`, not `.` or `..`, and not
/// shaped like an instance id (a UUID), so that a name, an instance id and
/// `pid@host` (names have no `@`) can never be mistaken for one another.
/// Shared, not copied, when cloned: the master keys and tags everything
/// with names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberName(std::sync::Arc<str>);

impl MemberName {
    /// Validates `s` as a member name; the error says what is allowed.
    pub fn parse(s: impl Into<String>) -> Result<Self, String> {
        let s = s.into();
        let ok_chars = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        let shown: String = s.chars().take(40).collect();
        if s.is_empty() || s.len() > MAX_NAME_LEN || !ok_chars {
            return Err(format!(
                "invalid member name {shown:?}: use 1 to {MAX_NAME_LEN} characters of A-Z a-z 0-9 . _ -"
            ));
        }
        if s == "." || s == ".." {
            return Err(format!(
                "invalid member name {shown:?}: . and .. are not names"
            ));
        }
        if is_instance_id(&s) {
            return Err(format!(
                "invalid member name {shown:?}: it has the shape of an instance id (a UUID); \
                 pick a name that cannot be mistaken for one"
            ));
        }
        Ok(MemberName(s.into()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `s` has the shape of an instance id: a UUID in its hyphenated
/// (36) or simple (32 hex digits) form.
pub fn is_instance_id(s: &str) -> bool {
    let hex = |part: &str| part.bytes().all(|b| b.is_ascii_hexdigit());
    match s.len() {
        32 => hex(s),
        36 => {
            let parts: Vec<&str> = s.split('-').collect();
            parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12]) && parts.iter().all(|p| hex(p))
        }
        _ => false,
    }
}

impl std::borrow::Borrow<str> for MemberName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MemberName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where an envelope goes (SPEC §3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Every member, the sender included.
    All,
    /// Every member of a role, the sender included.
    Role(Role),
    /// One member by name, instance id or `pid@host`.
    Member(String),
    /// One ready member of a role, round-robin.
    Random(Role),
    /// Every member of an app.
    App(String),
    /// One ready member of an app, round-robin.
    RandomApp(String),
}

/// The app of workers that name none: the `[worker]` section's.
pub const DEFAULT_APP: &str = "worker";
/// The longest app name (its members are `APP-N`).
pub const MAX_APP_LEN: usize = 63;

/// Checks an app name: letters, digits, `_`, `-` and `.`, 1 to 63 bytes.
pub fn check_app(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_APP_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    match ok {
        true => Ok(()),
        false => Err(format!(
            "app {:?}: use 1 to {MAX_APP_LEN} letters, digits, _, - and .",
            name.chars().take(80).collect::<String>()
        )),
    }
}

/// Most labels a member carries (`hello.labels` and `ready.labels`).
pub const MAX_LABELS: usize = 32;
/// Longest label key.
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// Longest label value.
pub const MAX_LABEL_VALUE_LEN: usize = 255;

/// Checks labels (`field`: `hello` or `ready`) against their bounds:
/// whatever a member says of itself is copied into every listing.
pub fn check_labels(
    field: &str,
    labels: &std::collections::HashMap<String, String>,
) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "{field}.labels has {} entries: at most {MAX_LABELS} are accepted",
            labels.len()
        ));
    }
    for (k, v) in labels {
        let (what, len, max) = match (k.len() > MAX_LABEL_KEY_LEN, v.len() > MAX_LABEL_VALUE_LEN) {
            (true, _) => ("labels key".to_string(), k.len(), MAX_LABEL_KEY_LEN),
            (_, true) => (format!("labels[{k}]"), v.len(), MAX_LABEL_VALUE_LEN),
            _ => continue,
        };
        return Err(format!(
            "{field}.{what} is {len} bytes: at most {max} are accepted"
        ));
    }
    Ok(())
}

impl Role {
    /// A role as an operator types it: `agent`, `worker`, or their plurals.
    pub fn from_word(s: &str) -> Result<Role, String> {
        match s {
            "agent" | "agents" => Ok(Role::Agent),
            "worker" | "workers" => Ok(Role::Worker),
            other => Err(format!("{other:?} is not a role: agent or worker")),
        }
    }
}

/// A target as operators and payloads write it, the one grammar of
/// `cohortctl send`, `cohort-worker --exec` and the tests: `all`; `agents`
/// or `workers` (every member of the role); `random:ROLE` (`random` alone:
/// a worker); `app:APP` (every member of an app), `random:app:APP` (one of
/// them); `member:NAME`, or a bare name, instance id or `pid@host`.
impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Target, String> {
        const FORMS: &str = "all, agents, workers, random:ROLE, app:APP, random:app:APP or a member (NAME or member:NAME)";
        Ok(match s {
            "" => return Err(format!("the target is empty: {FORMS}")),
            "all" => Target::All,
            "agents" => Target::Role(Role::Agent),
            "workers" => Target::Role(Role::Worker),
            "random" => Target::Random(Role::Worker),
            _ => match (s.strip_prefix("random:"), s.strip_prefix("member:")) {
                (Some(rest), _) if rest.starts_with("app:") => {
                    let app = &rest["app:".len()..];
                    check_app(app)?;
                    Target::RandomApp(app.to_string())
                }
                (Some(role), _) => Target::Random(Role::from_word(role)?),
                (_, _) if s.starts_with("app:") => {
                    let app = &s["app:".len()..];
                    check_app(app)?;
                    Target::App(app.to_string())
                }
                (_, Some("")) => return Err(format!("member: names no member: {FORMS}")),
                (_, Some(member)) => Target::Member(member.to_string()),
                _ => Target::Member(s.to_string()),
            },
        })
    }
}

impl From<Target> for pb::Target {
    fn from(t: Target) -> Self {
        use pb::target::Kind;
        let kind = match t {
            Target::All => Kind::All(pb::All {}),
            Target::Role(r) => Kind::Role(r.into()),
            Target::Member(m) => Kind::Member(m),
            Target::Random(r) => Kind::Random(r.into()),
            Target::App(a) => Kind::App(a),
            Target::RandomApp(a) => Kind::RandomApp(a),
        };
        pb::Target { kind: Some(kind) }
    }
}

impl TryFrom<Option<&pb::Target>> for Target {
    type Error = String;
    fn try_from(t: Option<&pb::Target>) -> Result<Self, Self::Error> {
        use pb::target::Kind;
        match t.and_then(|t| t.kind.as_ref()) {
            None => Err("envelope has no target: set all, role, member or random".into()),
            Some(Kind::All(_)) => Ok(Target::All),
            Some(Kind::Role(r)) => Ok(Target::Role(Role::try_from(*r)?)),
            Some(Kind::Random(r)) => Ok(Target::Random(Role::try_from(*r)?)),
            Some(Kind::Member(m)) if m.is_empty() => Err("target.member is empty".into()),
            Some(Kind::Member(m)) => Ok(Target::Member(m.clone())),
            Some(Kind::App(a)) => check_app(a).map(|()| Target::App(a.clone())),
            Some(Kind::RandomApp(a)) => check_app(a).map(|()| Target::RandomApp(a.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_alphabet() {
        let almost_uuid = "3f0c2b1a-0000-4000-8000-00000000000g";
        for ok in [
            "worker-1",
            "agent",
            "a.b_c-D9",
            "...",
            almost_uuid,
            &"x".repeat(128),
        ] {
            assert!(MemberName::parse(ok).is_ok(), "{ok}");
        }
        let uuid = "3f0c2b1a-0000-4000-8000-000000000000";
        let simple = "3f0c2b1a000040008000000000000000";
        let bad = [
            "",
            "has space",
            "slash/",
            "é",
            "1@host",
            ".",
            "..",
            uuid,
            simple,
        ];
        for bad in bad.iter().copied().chain([&*"x".repeat(129)]) {
            let err = MemberName::parse(bad).expect_err(bad);
            assert!(err.contains("invalid member name"), "{err}");
        }
    }

    #[test]
    fn role_round_trips_and_rejects_unspecified() {
        for r in [Role::Agent, Role::Worker] {
            assert_eq!(Role::try_from(i32::from(r)), Ok(r));
        }
        assert!(Role::try_from(0).is_err());
        assert!(Role::try_from(7).is_err());
    }

    #[test]
    fn target_round_trips() {
        for t in [
            Target::All,
            Target::Role(Role::Worker),
            Target::Member("worker-2".into()),
            Target::Random(Role::Agent),
            Target::App("web".into()),
            Target::RandomApp("web".into()),
        ] {
            let p = pb::Target::from(t.clone());
            assert_eq!(Target::try_from(Some(&p)), Ok(t));
        }
        assert!(Target::try_from(None).is_err());
    }

    #[test]
    fn targets_read_as_operators_type_them() {
        let rows = [
            ("all", Target::All),
            ("workers", Target::Role(Role::Worker)),
            ("agents", Target::Role(Role::Agent)),
            ("random:worker", Target::Random(Role::Worker)),
            ("random:agents", Target::Random(Role::Agent)),
            ("random", Target::Random(Role::Worker)),
            ("app:web", Target::App("web".into())),
            ("random:app:web", Target::RandomApp("web".into())),
            ("worker-3", Target::Member("worker-3".into())),
            ("agent", Target::Member("agent".into())),
            ("member:worker-2", Target::Member("worker-2".into())),
            ("1234@host-a", Target::Member("1234@host-a".into())),
        ];
        for (text, want) in rows {
            assert_eq!(text.parse::<Target>().as_ref(), Ok(&want), "{text}");
        }
        for bad in ["", "member:", "random:cook", "random:workersss"] {
            let err = bad.parse::<Target>().expect_err(bad);
            assert!(err.contains("agent"), "{bad}: {err}");
        }
        for bad in [
            "app:",
            "random:app:",
            "app:has space",
            &format!("app:{}", "a".repeat(64)),
        ] {
            let err = bad.parse::<Target>().expect_err(bad);
            assert!(err.contains("letters, digits"), "{bad}: {err}");
        }
        assert_eq!(Role::from_word("workers"), Ok(Role::Worker));
        assert!(Role::from_word("workersss").is_err());
        assert!(Role::from_word("chef").is_err());
    }
}
