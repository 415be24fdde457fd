//! The names of the master's own slots and their one-time secrets: only a
//! hello on the private socket that carries a slot's newest secret may use
//! its name, and each secret serves one live registration at a time.

use super::join::Via;
use super::members::InstanceId;
use std::collections::HashMap;

/// What a hello's name and secret amount to.
#[derive(Debug, PartialEq)]
pub(super) enum Claim<'a> {
    /// The name is no slot's: anyone may take it.
    Free,
    /// The slot's own child; `holder` is the instance that registered with
    /// this secret before, if any.
    Owner { holder: Option<&'a InstanceId> },
    /// A secret shown over the network, where none is accepted.
    SecretOverNetwork,
    /// A slot's name without its secret.
    NotOwner,
}

#[derive(Default)]
pub(super) struct Secrets {
    /// Each slot's name and its newest instance's secret.
    secrets: HashMap<String, String>,
    /// The instance that registered with each slot's current secret.
    holders: HashMap<String, InstanceId>,
}

impl Secrets {
    /// Reserves `name` for a slot whose next instance carries `secret`.
    pub(super) fn reserve(&mut self, name: &str, secret: &str) {
        self.secrets.insert(name.to_string(), secret.to_string());
        self.holders.remove(name);
    }

    /// Frees a slot's name (scale down).
    pub(super) fn release(&mut self, name: &str) {
        self.secrets.remove(name);
        self.holders.remove(name);
    }

    /// Whether `name` is a slot's.
    pub(super) fn is_reserved(&self, name: &str) -> bool {
        self.secrets.contains_key(name)
    }

    /// How a hello naming `name` with `secret`, come `via`, stands.
    pub(super) fn claim(&self, name: &str, via: Via, secret: &str) -> Claim<'_> {
        match self.secrets.get(name) {
            None => Claim::Free,
            Some(s)
                if via == Via::LocalSocket
                    && crate::auth::same(s.as_bytes(), secret.as_bytes()) =>
            {
                Claim::Owner {
                    holder: self.holders.get(name),
                }
            }
            Some(_) if via == Via::Network && !secret.is_empty() => Claim::SecretOverNetwork,
            Some(_) => Claim::NotOwner,
        }
    }

    /// Records that `instance` registered with `name`'s current secret.
    pub(super) fn held_by(&mut self, name: &str, instance: InstanceId) {
        self.holders.insert(name.to_string(), instance);
    }
}
