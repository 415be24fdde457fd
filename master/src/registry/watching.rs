//! Which membership events a member hears (`Hello.watch`): none unless it
//! asks, so a cluster of N workers is not N² event frames; an agent or a
//! dashboard asks for all, a worker for the few members it cares about.
use crate::model::MemberSnapshot;
use cohort_proto::{MemberName, Role, pb};

use std::collections::HashSet;

/// Most names a member may watch one by one (it can watch roles or all).
pub const MAX_WATCHED_NAMES: usize = 1024;

/// A member's subscription.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Watch {
    /// No membership events.
    #[default]
    Nothing,
    /// Every member's.
    All,
    /// Those of these roles and these names.
    Some {
        /// Roles watched.
        roles: Vec<Role>,
        /// Names watched.
        names: HashSet<String>,
    },
}

impl Watch {
    /// The subscription a hello asks for, or why it cannot have it.
    pub fn from_hello(filter: Option<&pb::EventFilter>) -> Result<Watch, String> {
        let Some(f) = filter else {
            return Ok(Watch::Nothing);
        };
        if f.all {
            return Ok(Watch::All);
        }
        if f.names.len() > MAX_WATCHED_NAMES {
            return Err(format!(
                "hello.watch.names has {} entries: at most {MAX_WATCHED_NAMES}; watch a role or all instead",
                f.names.len()
            ));
        }
        let roles = f
            .roles
            .iter()
            .map(|r| Role::try_from(*r).map_err(|e| format!("hello.watch.roles: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(bad) = f
            .names
            .iter()
            .find(|n| MemberName::parse(n.as_str()).is_err())
        {
            let shown: String = bad.chars().take(64).collect();
            return Err(format!("hello.watch.names: {shown:?} is not a member name"));
        }
        if roles.is_empty() && f.names.is_empty() {
            return Ok(Watch::Nothing);
        }
        Ok(Watch::Some {
            roles,
            names: f.names.iter().cloned().collect(),
        })
    }

    /// Whether an event about `member` is for this subscriber.
    pub fn covers(&self, member: &MemberSnapshot) -> bool {
        self.covers_named(member.role, &member.name)
    }

    /// Whether the member of `role` named `name` is watched.
    pub fn covers_named(&self, role: Role, name: &str) -> bool {
        match self {
            Watch::Nothing => false,
            Watch::All => true,
            Watch::Some { roles, names } => roles.contains(&role) || names.contains(name),
        }
    }
}
