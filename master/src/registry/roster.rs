//! The members by name: found by hash (every heartbeat looks one up, and
//! a tree of 10,000 names costs a score of string comparisons a lookup),
//! walked in the order they joined where order does not matter (members
//! that share a connection joined together, and a broadcast that reaches
//! them one after another keeps that connection's state hot: a quarter
//! less CPU per broadcast than hash order), and in name order through a
//! separate index where it does (listing pages, the round-robin pick).
//! Each registration's instance id leads to its name through a third
//! index, kept in step by the same insert and remove.

use super::members::{InstanceId, Member};
use cohort_proto::MemberName;
use indexmap::IndexMap;
use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::ops::Bound;

#[derive(Default)]
pub(super) struct Roster {
    by_name: IndexMap<MemberName, Member>,
    order: BTreeSet<MemberName>,
    by_instance: HashMap<InstanceId, MemberName>,
}

impl Roster {
    /// Adds a member under its name (which must be free).
    pub(super) fn insert(&mut self, member: Member) {
        let name = member.name.clone();
        self.order.insert(name.clone());
        self.by_instance
            .insert(member.instance_id.clone(), name.clone());
        self.by_name.insert(name, member);
    }

    pub(super) fn remove(&mut self, name: &MemberName) -> Option<Member> {
        let m = self.by_name.swap_remove(name)?;
        self.order.remove(name);
        self.by_instance.remove(&m.instance_id);
        Some(m)
    }

    /// The name of the member registered as `instance`, while it is.
    pub(super) fn by_instance<Q>(&self, instance: &Q) -> Option<&MemberName>
    where
        InstanceId: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.by_instance.get(instance)
    }

    pub(super) fn get<Q>(&self, name: &Q) -> Option<&Member>
    where
        MemberName: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.by_name.get(name)
    }

    pub(super) fn get_mut<Q>(&mut self, name: &Q) -> Option<&mut Member>
    where
        MemberName: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.by_name.get_mut(name)
    }

    pub(super) fn contains_key<Q>(&self, name: &Q) -> bool
    where
        MemberName: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.by_name.contains_key(name)
    }

    /// The registered name spelled `name`, shared.
    pub(super) fn name(&self, name: &str) -> Option<&MemberName> {
        self.by_name.get_key_value(name).map(|(k, _)| k)
    }

    pub(super) fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Every member, about in the order they joined.
    pub(super) fn values(&self) -> impl Iterator<Item = &Member> {
        self.by_name.values()
    }

    /// Every member, about in the order they joined.
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut Member> {
        self.by_name.values_mut()
    }

    /// Takes every member out.
    pub(super) fn take_all(&mut self) -> impl Iterator<Item = Member> + use<> {
        self.order.clear();
        self.by_instance.clear();
        std::mem::take(&mut self.by_name).into_values()
    }

    /// The members named after `from`, in name order.
    pub(super) fn after<'a>(
        &'a self,
        from: Bound<&'a MemberName>,
    ) -> impl Iterator<Item = &'a Member> + 'a {
        self.order
            .range::<MemberName, _>((from, Bound::Unbounded))
            .filter_map(|name| self.by_name.get(name))
    }

    /// Every member, in name order.
    pub(super) fn ordered(&self) -> impl Iterator<Item = &Member> {
        self.after(Bound::Unbounded)
    }
}
