//! Targets and roles as an operator types them.

use cohort_proto::{Role, Target};

/// `all`, `agents`, `workers`, `random:ROLE`, or a member (name, instance
/// id, `pid@host`).
pub fn parse(text: &str) -> anyhow::Result<Target> {
    Ok(match text {
        "" => anyhow::bail!("the target is empty: all, agents, workers, random:ROLE or a member"),
        "all" => Target::All,
        "agents" => Target::Role(Role::Agent),
        "workers" => Target::Role(Role::Worker),
        t => match t.strip_prefix("random:") {
            Some(r) => Target::Random(role(r)?),
            None => Target::Member(t.to_string()),
        },
    })
}

/// `agent` or `worker` (plural too).
pub fn role(text: &str) -> anyhow::Result<Role> {
    match text.trim_end_matches('s') {
        "agent" => Ok(Role::Agent),
        "worker" => Ok(Role::Worker),
        other => anyhow::bail!("{other:?} is not a role: agent or worker"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_read_as_operators_type_them() {
        let rows = [
            ("all", Target::All),
            ("workers", Target::Role(Role::Worker)),
            ("agents", Target::Role(Role::Agent)),
            ("random:worker", Target::Random(Role::Worker)),
            ("worker-3", Target::Member("worker-3".into())),
            ("1234@host-a", Target::Member("1234@host-a".into())),
        ];
        for (text, want) in rows {
            assert_eq!(parse(text).expect(text), want, "{text}");
        }
        assert!(parse("random:cook").is_err());
        assert!(parse("").is_err());
        assert_eq!(role("worker").expect("role"), Role::Worker);
        assert!(role("chef").is_err());
    }
}
