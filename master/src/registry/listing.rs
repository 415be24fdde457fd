//! What the Control API reads: members one by one, a page at a time, and
//! counted.
use super::error::RouteError;
use super::members::{Member, not_found, resolve_member};
use super::{Registry, Summary};
use crate::model::{MemberSnapshot, MemberState};
use cohort_proto::{MemberName, Role};
use std::collections::BTreeMap;

impl Registry {
    /// Every member, ordered by name.
    pub fn list(&self) -> Vec<MemberSnapshot> {
        self.lock().members.ordered().map(Member::info).collect()
    }

    /// Up to `limit` members named after `after` that `keep` keeps, in
    /// name order: a page costs its own size, not the cluster's.
    pub fn page(
        &self,
        after: Option<&MemberName>,
        limit: usize,
        keep: &dyn Fn(&MemberSnapshot) -> bool,
    ) -> Vec<MemberSnapshot> {
        use std::ops::Bound::{Excluded, Unbounded};
        let st = self.lock();
        st.members
            .after(after.map_or(Unbounded, Excluded))
            .map(Member::info)
            .filter(|m| keep(m))
            .take(limit)
            .collect()
    }

    /// One member by name, instance id or `pid@host`.
    pub fn get(&self, member: &str) -> Result<MemberSnapshot, RouteError> {
        let st = self.lock();
        let name = resolve_member(&st, member)?;
        st.members
            .get(&name)
            .map(Member::info)
            .ok_or_else(|| not_found(member))
    }

    /// Whether a member of this name is registered.
    pub fn is_registered(&self, name: &str) -> bool {
        MemberName::parse(name).is_ok_and(|n| self.lock().members.contains_key(&n))
    }

    /// How many members are registered.
    pub fn member_count(&self) -> usize {
        self.lock().members.len()
    }

    /// Counts by role and state, kept as members change: O(1) in the
    /// cluster's size.
    pub fn summary(&self) -> Summary {
        let st = self.lock();
        Summary {
            counts: st.counts.0.iter().map(|((r, s), n)| (*r, *s, *n)).collect(),
            cluster_ready: st.barrier.is_open(),
        }
    }
}

/// Members by role and state.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Counts(pub(super) BTreeMap<(Role, MemberState), u32>);

impl Counts {
    pub(super) fn add(&mut self, role: Role, state: MemberState) {
        *self.0.entry((role, state)).or_default() += 1;
    }

    pub(super) fn remove(&mut self, role: Role, state: MemberState) {
        if let Some(n) = self.0.get_mut(&(role, state)) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.0.remove(&(role, state));
            }
        }
    }

    pub(super) fn moved(&mut self, role: Role, from: MemberState, to: MemberState) {
        if from != to {
            self.remove(role, from);
            self.add(role, to);
        }
    }

    /// The counts recomputed from scratch (tests compare).
    #[cfg(test)]
    pub(super) fn of(members: &super::Roster) -> Counts {
        let mut c = Counts::default();
        for m in members.values() {
            c.add(m.role, m.state());
        }
        c
    }
}
