//! The sections of the configuration as the master uses them: plain data
//! with every value set.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How many workers to run (`"auto"` or a number in the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum WorkerCount {
    /// Exactly this many.
    Fixed(u32),
    /// One per CPU.
    #[serde(with = "auto")]
    Auto,
}

impl WorkerCount {
    /// The number on a host with `cpus` CPUs.
    pub fn resolve(self, cpus: usize) -> u32 {
        match self {
            WorkerCount::Auto => u32::try_from(cpus.max(1)).unwrap_or(u32::MAX),
            WorkerCount::Fixed(n) => n,
        }
    }
}

/// `"auto"` as the unit variant's text in the file.
mod auto {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("auto")
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<(), D::Error> {
        match String::deserialize(d)?.as_str() {
            "auto" => Ok(()),
            other => Err(serde::de::Error::custom(format!(
                "{other:?}: use \"auto\" or a number"
            ))),
        }
    }
}

/// `[agent]` or `[worker]`: a role's local slots.
#[derive(Clone, Debug, PartialEq)]
pub struct RoleConfig<C> {
    /// How many local members of the role to run.
    pub count: C,
    /// The command, resolved next to cohort-master when relative.
    pub command: Vec<String>,
    /// Replace a member gracefully when its reported RSS stays above this.
    pub max_rss: Option<u64>,
}

/// A listener the master binds and shares with workers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name passed in `LISTEN_FDNAMES`.
    pub name: String,
    /// Address to bind.
    pub addr: SocketAddr,
}

/// `[expect]`: members to wait for before ClusterReady.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// Ready agents needed.
    pub agents: u32,
    /// Ready workers needed.
    pub workers: u32,
    /// Ready members needed per app (`COHORT_APP`), by name.
    pub apps: Vec<AppCount>,
}

/// `APP=N`: so many ready members of an app.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppCount {
    /// The app.
    pub app: String,
    /// How many of its members.
    pub count: u32,
}

/// `[health]` timings (SPEC §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthConfig {
    /// How often members heartbeat.
    pub heartbeat_interval: Duration,
    /// Silence after which a member is SUSPECT.
    pub suspect_after: Duration,
    /// Silence after which a member is evicted.
    pub dead_after: Duration,
    /// Heartbeats a second for the whole cluster: a larger cluster gets a
    /// longer interval, and `suspect_after` and `dead_after` with it
    /// (0 = always the configured ones).
    pub max_heartbeats_per_second: u32,
}

/// `[restart]` policy (used by local supervision).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartConfig {
    /// A run at least this long resets the backoff.
    pub min_uptime: Duration,
    /// First backoff delay.
    pub backoff_initial: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
    /// How long a draining member may take to finish.
    pub drain_timeout: Duration,
    /// At shutdown: how long a member may take to exit after its
    /// `drain_timeout`, before SIGKILL.
    pub kill_timeout: Duration,
    /// Restarts allowed within `restart_window` before a slot is FAILED
    /// (0 = no limit).
    pub max_restarts: u32,
    /// The window `max_restarts` counts in.
    pub restart_window: Duration,
    /// How long a startup stage (agent, then workers) may take to be ready.
    pub start_timeout: Duration,
}

/// `[messaging]`: per-member queues and the pre-ready hold (SPEC §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessagingConfig {
    /// Most messages queued for one member.
    pub queue_messages: usize,
    /// Most bytes queued for one member.
    pub queue_bytes: usize,
    /// A member whose queue stays full this long is disconnected.
    pub slow_consumer_timeout: Duration,
    /// Most messages held before ClusterReady.
    pub held_messages: usize,
    /// Most requests awaiting a reply at once.
    pub pending_requests: usize,
    /// What happens to a delivery whose receiver's queue is full.
    pub overflow: Overflow,
}

/// `[messaging] overflow`: what a full receiver queue does to its senders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overflow {
    /// The sender waits for room (flow control): nothing is lost between
    /// healthy members; a receiver that takes nothing for
    /// `slow_consumer_timeout` is disconnected.
    Block,
    /// The delivery is dropped and counted (`dropped_messages`), and a
    /// targeted sender gets UNAVAILABLE: senders never slow down.
    Drop,
}

/// `[tls]` PEM files. With `client_ca`, clients must present a certificate
/// signed by it whose DNS name is the member name they join as (mTLS).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// Server certificate chain.
    pub cert: Option<PathBuf>,
    /// Server private key.
    pub key: Option<PathBuf>,
    /// CA for client certificates.
    pub client_ca: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }
}

/// `[ha]`: masters that elect a leader through etcd (SPEC §9b); on only
/// when `etcd` names at least one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HaConfig {
    /// etcd client URLs (`http://HOST:PORT`).
    pub etcd: Vec<String>,
    /// Key prefix: candidates under `PREFIX/masters/`, the ready mark at
    /// `PREFIX/ready`.
    pub prefix: String,
    /// The lease a leader holds; it steps down before it can expire.
    pub lease_ttl: Duration,
    /// The address members and `cohortctl` should use for this master.
    pub advertise: String,
    /// etcd authentication: the user, and the file holding its password
    /// (read at every connect, never a flag).
    pub user: Option<(String, PathBuf)>,
    /// etcd over TLS (`https://` endpoints): the CA that signed etcd's
    /// certificate, and this master's certificate and key if etcd asks
    /// for one.
    pub tls: Option<EtcdTls>,
}

/// PEM files for TLS to etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA of etcd's server certificate.
    pub ca: PathBuf,
    /// Client certificate and key (etcd's `--client-cert-auth`).
    pub identity: Option<(PathBuf, PathBuf)>,
}
