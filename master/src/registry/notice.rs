//! What the registry reports to the supervisor about local members.

/// What the registry tells the supervisor about its own (local) members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A local member reported ready.
    Ready {
        /// Its name.
        name: String,
        /// Its pid.
        pid: u32,
    },
    /// A local member is leaving; with `replace` it asks for a replacement
    /// first (the fatal-error path).
    Leaving {
        /// Its name.
        name: String,
        /// Its pid.
        pid: u32,
        /// Start a replacement now.
        replace: bool,
    },
    /// A local member's memory stayed above its role's `max_rss`: the
    /// master asked it to drain; the supervisor starts its replacement now.
    OverMemory {
        /// Its name.
        name: String,
        /// Its pid.
        pid: u32,
        /// What was measured, against what limit.
        reason: String,
    },
    /// A local member was evicted while its process may live on (silent,
    /// not reading, never ready): the supervisor kills and replaces it.
    Evicted {
        /// Its name.
        name: String,
        /// Its pid.
        pid: u32,
        /// Why it was evicted.
        reason: String,
    },
}
