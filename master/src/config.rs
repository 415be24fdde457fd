//! Master configuration (SPEC §6): a TOML file, then `COHORT_*` environment
//! variables, then flags; flags win. Every setting is declared once, in
//! [`layer`]; parsing is strict: an unknown key, flag or out-of-range value
//! is an error that names it.

mod apps;
mod layer;
mod sections;
mod values;

pub use apps::{App, HealthCheck, Join, Probe, RESERVED as RESERVED_APPS, RestartMode};
pub use sections::*;

use layer::{Layer, LayerError};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Local members of one app at most (`count`, `Control/Scale`): a number
/// beyond is a mistake, not a plan, and would only exhaust the host.
pub const MAX_LOCAL_MEMBERS: u32 = 4096;

/// The environment variable holding a bearer token directly (never a flag:
/// argv is visible to every local user).
const ENV_TOKEN: &str = cohort_proto::env::TOKEN;

/// A configuration problem; the message names the key and what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown keys.
    #[error("config file {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// The parser's message, naming the key.
        message: String,
    },
    /// A key's value is out of range or malformed.
    #[error("{key}: {message}")]
    Value {
        /// Which key (`health.dead_after`, `--listen`, `COHORT_LISTEN`).
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// A flag nobody knows, or a flag's value that does not parse.
    #[error("{0} (see --help)")]
    Flag(String),
    /// `--help` or `--version` was asked for: print this and exit 0.
    #[error("{0}")]
    Info(String),
}

/// The master's whole configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// gRPC address.
    pub listen: SocketAddr,
    /// Local agent slots.
    pub agent: RoleConfig<u32>,
    /// Local worker slots.
    pub worker: RoleConfig<WorkerCount>,
    /// Shared listeners.
    pub listeners: Vec<ListenerConfig>,
    /// `[[app]]`s, beside the `[agent]` and `[worker]` sections' own.
    pub apps: Vec<App>,
    /// Remote members to wait for.
    pub expect: Expect,
    /// Heartbeat timings.
    pub health: HealthConfig,
    /// Restart policy.
    pub restart: RestartConfig,
    /// Queues.
    pub messaging: MessagingConfig,
    /// Bounds on connections to the gRPC address.
    pub limits: crate::listen::ConnectionLimits,
    /// `[limits] join_rate`: joins from the network admitted a second (0 =
    /// no limit).
    pub join_rate: u32,
    /// `[limits] max_members`: members registered at once (0 = no limit).
    pub max_members: usize,
    /// `[metrics] listen`: where Prometheus metrics are served, if at all.
    pub metrics_listen: Option<SocketAddr>,
    /// `[metrics] per_member`: series per member, or the totals only.
    pub metrics_per_member: bool,
    /// Bearer token file (one token per line, two while rotating).
    pub token_file: Option<PathBuf>,
    /// Accepted bearer tokens, from `token_file` and `COHORT_TOKEN`.
    pub tokens: Vec<crate::auth::Token>,
    /// Things worth a warning at start (the binary logs them).
    pub warnings: Vec<String>,
    /// Allow a non-loopback listen address without auth.
    pub insecure: bool,
    /// `[tls]`: serve gRPC over TLS (and require client certificates).
    pub tls: TlsConfig,
    /// `[ha]`: one of several masters electing a leader through etcd.
    pub ha: Option<HaConfig>,
    /// The flags it was loaded with: a reload reads the file again with
    /// them.
    pub args: Vec<String>,
}

impl Default for Config {
    /// The configuration with nothing set: [`Layer::defaults`].
    fn default() -> Self {
        Config::try_from(Layer::defaults())
            .unwrap_or_else(|e| unreachable!("the defaults layer sets every key: {e}"))
    }
}

impl TryFrom<Layer> for Config {
    type Error = ConfigError;

    /// The configuration from merged layers (over the defaults, which set
    /// every key that has one).
    fn try_from(l: Layer) -> Result<Config, ConfigError> {
        fn need<T>(v: Option<T>, key: &str) -> Result<T, ConfigError> {
            v.ok_or_else(|| value_err(key, "is not set and has no default"))
        }
        // An empty path (`token_file = ""`) means none.
        let path = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
        let (h, r, m) = (l.health, l.restart, l.messaging);
        Ok(Config {
            listen: need(l.listen, "listen")?,
            agent: RoleConfig {
                count: need(l.agent.count, "agent.count")?,
                command: need(l.agent.command, "agent.command")?,
                max_rss: l.agent.max_rss,
            },
            worker: RoleConfig {
                count: need(l.worker.count, "worker.count")?,
                command: need(l.worker.command, "worker.command")?,
                max_rss: l.worker.max_rss,
            },
            apps: apps::resolve(l.apps, &l.listeners)?,
            listeners: l.listeners,
            expect: Expect {
                agents: need(l.expect.agents, "expect.agents")?,
                workers: need(l.expect.workers, "expect.workers")?,
                apps: l.expect.apps,
            },
            health: HealthConfig {
                heartbeat_interval: need(h.heartbeat_interval, "health.heartbeat_interval")?,
                suspect_after: need(h.suspect_after, "health.suspect_after")?,
                dead_after: need(h.dead_after, "health.dead_after")?,
                max_heartbeats_per_second: need(
                    h.max_heartbeats_per_second,
                    "health.max_heartbeats_per_second",
                )?,
            },
            restart: RestartConfig {
                min_uptime: need(r.min_uptime, "restart.min_uptime")?,
                backoff_initial: need(r.backoff_initial, "restart.backoff_initial")?,
                backoff_max: need(r.backoff_max, "restart.backoff_max")?,
                drain_timeout: need(r.drain_timeout, "restart.drain_timeout")?,
                kill_timeout: need(r.kill_timeout, "restart.kill_timeout")?,
                max_restarts: need(r.max_restarts, "restart.max_restarts")?,
                restart_window: need(r.restart_window, "restart.restart_window")?,
                start_timeout: need(r.start_timeout, "restart.start_timeout")?,
            },
            messaging: MessagingConfig {
                queue_messages: need(m.queue_messages, "messaging.queue_messages")?,
                queue_bytes: need(m.queue_bytes, "messaging.queue_bytes")?,
                slow_consumer_timeout: need(
                    m.slow_consumer_timeout,
                    "messaging.slow_consumer_timeout",
                )?,
                held_messages: need(m.held_messages, "messaging.held_messages")?,
                pending_requests: need(m.pending_requests, "messaging.pending_requests")?,
                overflow: need(m.overflow, "messaging.overflow")?,
            },
            limits: crate::listen::ConnectionLimits {
                max_connections: need(l.limits.max_connections, "limits.max_connections")?,
                handshake_timeout: need(l.limits.handshake_timeout, "limits.handshake_timeout")?,
            },
            join_rate: need(l.limits.join_rate, "limits.join_rate")?,
            max_members: need(l.limits.max_members, "limits.max_members")?,
            metrics_listen: l.metrics.listen,
            metrics_per_member: need(l.metrics.per_member, "metrics.per_member")?,
            token_file: path(l.auth.token_file),
            tokens: Vec::new(),
            warnings: Vec::new(),
            insecure: l.insecure,
            tls: TlsConfig {
                cert: path(l.tls.cert),
                key: path(l.tls.key),
                client_ca: path(l.tls.client_ca),
            },
            ha: match l.ha.etcd.clone().filter(|e| !e.is_empty()) {
                None => None,
                Some(etcd) => {
                    let h = l.ha;
                    let user = match (h.etcd_user, path(h.etcd_password_file)) {
                        (None, None) => None,
                        (Some(u), Some(p)) if !u.is_empty() => Some((u, p)),
                        _ => {
                            return Err(value_err(
                                "ha.etcd_user",
                                "set both etcd_user and etcd_password_file (--ha-etcd-user, --ha-etcd-password-file)",
                            ));
                        }
                    };
                    let identity = match (path(h.etcd_cert), path(h.etcd_key)) {
                        (None, None) => None,
                        (Some(c), Some(k)) => Some((c, k)),
                        _ => {
                            return Err(value_err(
                                "ha.etcd_cert",
                                "set both etcd_cert and etcd_key (--ha-etcd-cert, --ha-etcd-key)",
                            ));
                        }
                    };
                    let tls = match (path(h.etcd_ca), identity) {
                        (Some(ca), identity) => Some(EtcdTls { ca, identity }),
                        (None, None) => None,
                        (None, Some(_)) => {
                            return Err(value_err(
                                "ha.etcd_ca",
                                "a client certificate for etcd needs etcd's CA too (--ha-etcd-ca)",
                            ));
                        }
                    };
                    Some(HaConfig {
                        etcd,
                        prefix: need(h.prefix, "ha.prefix")?,
                        lease_ttl: need(h.lease_ttl, "ha.lease_ttl")?,
                        advertise: h.advertise.unwrap_or_default(),
                        user,
                        tls,
                    })
                }
            },
            args: Vec::new(),
        })
    }
}

impl Config {
    /// Builds the configuration from flags (`args` without the program
    /// name) and an environment lookup (`std::env::var` in production, a map
    /// in tests).
    pub fn load(
        args: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let flags = Layer::from_flags(args).map_err(|e| match e {
            LayerError::Info(text) => ConfigError::Info(text),
            LayerError::Bad(message) => ConfigError::Flag(message),
        })?;
        let from_env =
            Layer::from_env(env).map_err(|(key, message)| ConfigError::Value { key, message })?;
        let file = match flags.config.clone().or(from_env.config.clone()) {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    message: e.to_string().trim().replace('\n', " "),
                })?
            }
            None => Layer::default(),
        };
        let given = file.under(from_env).under(flags);
        let local = (given.agent.count, given.worker.count);
        let has_apps = !given.apps.is_empty();
        let mut merged = Layer::defaults().under(given);
        if merged.ha.etcd.as_ref().is_some_and(|e| !e.is_empty()) {
            ha_children(local, has_apps)?;
            merged.agent.count = Some(0);
            merged.worker.count = Some(WorkerCount::Fixed(0));
        }
        // With [[app]] tables the file says what runs: the demo agent and
        // workers only when their sections ask for them.
        if has_apps {
            merged.agent.count = local.0.or(Some(0));
            merged.worker.count = local.1.or(Some(WorkerCount::Fixed(0)));
        }
        let mut cfg = Config::try_from(merged)?;
        cfg.args = args.to_vec();
        if let Some(path) = &cfg.token_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            cfg.tokens = crate::auth::parse_token_file(&text)
                .map_err(|m| value_err("auth.token_file", &m))?;
        }
        if env(ENV_TOKEN).is_some_and(|t| t.is_empty()) && cfg.tokens.is_empty() {
            cfg.warnings.push(format!(
                "{ENV_TOKEN} is set but empty: no token is required (authentication is off)"
            ));
        }
        if let Some(t) = env(ENV_TOKEN).filter(|t| !t.is_empty()) {
            let mut all =
                crate::auth::parse_token_file(&t).map_err(|m| value_err(ENV_TOKEN, &m))?;
            all.append(&mut cfg.tokens);
            all.dedup();
            if all.len() > 2 {
                return Err(value_err(
                    ENV_TOKEN,
                    "with the token file that makes more than two active tokens",
                ));
            }
            cfg.tokens = all;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.agent.count > 1 {
            return Err(value_err("agent.count", "must be 0 or 1"));
        }
        let too_many = |c: WorkerCount| matches!(c, WorkerCount::Fixed(n) if n > MAX_LOCAL_MEMBERS);
        if too_many(self.worker.count) {
            return Err(value_err(
                "worker.count",
                &format!("must be at most {MAX_LOCAL_MEMBERS} (or \"auto\")"),
            ));
        }
        if let Some(app) = self.apps.iter().find(|a| too_many(a.count)) {
            return Err(value_err(
                &format!("app {}: count", app.name),
                &format!("must be at most {MAX_LOCAL_MEMBERS} (or \"auto\")"),
            ));
        }
        for (role, cmd) in [
            ("agent", &self.agent.command),
            ("worker", &self.worker.command),
        ] {
            if cmd.first().is_none_or(|p| p.is_empty()) {
                return Err(value_err(&format!("{role}.command"), "must name a program"));
            }
        }
        let h = &self.health;
        if h.heartbeat_interval.is_zero() {
            return Err(value_err("health.heartbeat_interval", "must be above 0"));
        }
        if h.suspect_after <= h.heartbeat_interval {
            return Err(value_err(
                "health.suspect_after",
                "must be longer than health.heartbeat_interval",
            ));
        }
        if h.dead_after <= h.suspect_after {
            return Err(value_err(
                "health.dead_after",
                "must be longer than health.suspect_after",
            ));
        }
        for l in &self.listeners {
            let ok = !l.name.is_empty()
                && l.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                return Err(value_err(
                    "listener.name",
                    &format!("{:?}: use letters, digits, _ and -", l.name),
                ));
            }
        }
        if !(1..=1_000_000).contains(&self.limits.max_connections)
            || self.limits.handshake_timeout.is_zero()
        {
            return Err(value_err(
                "limits",
                "max_connections must be 1 to 1000000 and handshake_timeout above 0",
            ));
        }
        if self.join_rate > 1_000_000 {
            return Err(value_err(
                "limits.join_rate",
                "must be at most 1000000 (0 = no limit)",
            ));
        }
        if self.messaging.queue_messages == 0 || self.messaging.queue_bytes == 0 {
            return Err(value_err("messaging", "queue sizes must be above 0"));
        }
        if self.messaging.queue_bytes > u32::MAX as usize
            || self.messaging.queue_messages > u32::MAX as usize
        {
            return Err(value_err(
                "messaging",
                "queue sizes must be at most 4294967295",
            ));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(value_err(
                "tls",
                "set both cert and key (--tls-cert, --tls-key)",
            ));
        }
        if self.tls.client_ca.is_some() && !self.tls.enabled() {
            return Err(value_err(
                "tls.client_ca",
                "mTLS needs the server's own cert and key too",
            ));
        }
        if let Some(ha) = &self.ha {
            ha.validate(self.listen)?;
        }
        if !self.listen.ip().is_loopback()
            && self.tokens.is_empty()
            && !self.tls.enabled()
            && !self.insecure
        {
            return Err(value_err(
                "listen",
                &format!(
                    "{} is not a loopback address and no auth is configured: \
                     set [auth] token_file (or --token-file, COHORT_TOKEN_FILE, COHORT_TOKEN) or [tls], \
                     listen on a loopback address, or pass --insecure to accept anyone who can reach it",
                    self.listen
                ),
            ));
        }
        Ok(())
    }

    /// How many local workers to run on a host with `cpus` CPUs.
    pub fn worker_count(&self, cpus: usize) -> u32 {
        self.worker.count.resolve(cpus)
    }
}

/// In HA mode masters run no local children (a standby would run a second
/// set; members run under systemd or Kubernetes instead): an explicit
/// count above 0 is refused, the defaults become 0.
fn ha_children(
    (agents, workers): (Option<u32>, Option<WorkerCount>),
    apps: bool,
) -> Result<(), ConfigError> {
    let why = "must be 0 with [ha]: masters that fail over run no local members \
               (run agents and workers under systemd or Kubernetes with COHORT_MASTER listing every master)";
    if apps {
        return Err(value_err(
            "app",
            "[[app]] tables cannot go with [ha]: masters that fail over run no local members \
             (run each app under systemd or Kubernetes with COHORT_APP and COHORT_MASTER listing every master)",
        ));
    }
    if agents.is_some_and(|n| n > 0) {
        return Err(value_err("agent.count", why));
    }
    if workers.is_some_and(|c| c != WorkerCount::Fixed(0)) {
        return Err(value_err("worker.count", why));
    }
    Ok(())
}

impl HaConfig {
    fn validate(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        for url in &self.etcd {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 512 {
                return Err(value_err(
                    "ha.etcd",
                    &format!("{url:?}: use etcd client URLs such as http://127.0.0.1:2379"),
                ));
            }
            // One scheme for all: TLS is on for every endpoint or none.
            if url.starts_with("https://") != self.tls.is_some() {
                return Err(value_err(
                    "ha.etcd",
                    &format!(
                        "{url:?}: https:// endpoints go with etcd_ca (--ha-etcd-ca), and etcd_ca with https:// endpoints only"
                    ),
                ));
            }
        }
        let prefix_ok = !self.prefix.is_empty()
            && self.prefix.len() <= 128
            && self
                .prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b));
        if !prefix_ok {
            return Err(value_err(
                "ha.prefix",
                "use 1 to 128 letters, digits and _ - . /",
            ));
        }
        let ttl = self.lease_ttl;
        if ttl.subsec_nanos() != 0 || !(2..=60).contains(&ttl.as_secs()) {
            return Err(value_err(
                "ha.lease_ttl",
                "must be whole seconds from 2s to 60s (etcd leases count whole seconds; about 2 s is etcd's floor)",
            ));
        }
        if self.advertise.is_empty() && listen.ip().is_unspecified() {
            return Err(value_err(
                "ha.advertise",
                &format!(
                    "is required when listen is {listen}: the address members should use for this master (HOST:PORT)"
                ),
            ));
        }
        Ok(())
    }

    /// The address members are sent to for this master: `advertise`, with
    /// `{hostname}` replaced by this host's name (a StatefulSet pod's name:
    /// `{hostname}.cohort-master-peers:7420`), or the bound address.
    pub fn advertised(&self, bound: SocketAddr) -> String {
        if self.advertise.is_empty() {
            bound.to_string()
        } else {
            self.advertise
                .replace("{hostname}", &cohort_process::hostname())
        }
    }
}

fn value_err(key: &str, message: &str) -> ConfigError {
    ConfigError::Value {
        key: key.to_string(),
        message: message.to_string(),
    }
}

pub use cohort_process::parse_duration;

#[cfg(test)]
mod tests;
