//! What the Control API reads: members one by one, a page at a time, and
//! counted.

use super::*;

impl Registry {
    /// Every member, ordered by name.
    pub fn list(&self) -> Vec<MemberSnapshot> {
        self.lock().members.values().map(Member::info).collect()
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
        let from = after.map_or(Unbounded, Excluded);
        st.members
            .range::<MemberName, _>((from, Unbounded))
            .map(|(_, m)| m.info())
            .filter(|m| keep(m))
            .take(limit)
            .collect()
    }

    /// One member by name, instance id or `pid@host`.
    pub fn get(&self, member: &str) -> Result<MemberSnapshot, Status> {
        let st = self.lock();
        let name = resolve_member(&st, member)?;
        st.members
            .get(&name)
            .map(Member::info)
            .ok_or_else(|| not_found(member).into())
    }

    /// Whether a member of this name is registered.
    pub fn is_registered(&self, name: &str) -> bool {
        MemberName::parse(name).is_ok_and(|n| self.lock().members.contains_key(&n))
    }

    /// How many members are registered.
    pub fn member_count(&self) -> usize {
        self.lock().members.len()
    }

    /// Counts by role and state.
    pub fn summary(&self) -> Summary {
        let st = self.lock();
        let mut counts: BTreeMap<(Role, MemberState), u32> = BTreeMap::new();
        for m in st.members.values() {
            *counts.entry((m.role, m.state())).or_default() += 1;
        }
        Summary {
            counts: counts.into_iter().map(|((r, s), n)| (r, s, n)).collect(),
            cluster_ready: st.cluster_ready,
        }
    }
}
