//! Master configuration (SPEC §6): a TOML file, then `COHORT_*` environment
//! variables, then flags; flags win. Every setting is declared once, in
//! [`layer`]; parsing is strict: an unknown key, flag or out-of-range value
//! is an error that names it.

mod layer;
mod sections;
mod values;

pub use sections::*;

use layer::{Layer, LayerError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default gRPC address of the master.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";

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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().unwrap_or_else(|_| unreachable!()),
            agent: RoleConfig {
                count: 1,
                command: vec!["cohort-agent".into()],
                max_rss: None,
            },
            worker: RoleConfig {
                count: WorkerCount::Auto,
                command: vec!["cohort-worker".into()],
                max_rss: None,
            },
            listeners: vec![ListenerConfig {
                name: "http".into(),
                addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            }],
            expect: Expect::default(),
            health: HealthConfig {
                heartbeat_interval: Duration::from_secs(1),
                suspect_after: Duration::from_secs(3),
                dead_after: Duration::from_secs(10),
            },
            restart: RestartConfig {
                min_uptime: Duration::from_secs(1),
                backoff_initial: Duration::from_millis(200),
                backoff_max: Duration::from_secs(30),
                drain_timeout: Duration::from_secs(30),
                kill_timeout: Duration::from_secs(5),
                max_restarts: 0,
                restart_window: Duration::from_secs(60),
                start_timeout: Duration::from_secs(30),
            },
            metrics_listen: None,
            metrics_per_member: true,
            limits: crate::listen::ConnectionLimits {
                max_connections: 10_000,
                handshake_timeout: Duration::from_secs(10),
            },
            join_rate: 5000,
            max_members: 20_000,
            messaging: MessagingConfig {
                queue_messages: 1024,
                queue_bytes: 8 * 1024 * 1024,
                slow_consumer_timeout: Duration::from_secs(5),
                held_messages: 4096,
                pending_requests: 65_536,
                overflow: Overflow::Block,
            },
            token_file: None,
            tokens: Vec::new(),
            warnings: Vec::new(),
            insecure: false,
            tls: TlsConfig::default(),
        }
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
        let mut cfg = Config::default();
        cfg.apply(file.under(from_env).under(flags));
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

    /// Takes what the merged layer sets; the rest keeps its default.
    fn apply(&mut self, l: Layer) {
        fn set<T>(slot: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *slot = v;
            }
        }
        set(&mut self.listen, l.listen);
        self.insecure = l.insecure;
        if !l.listeners.is_empty() {
            self.listeners = l.listeners;
        }
        set(&mut self.agent.count, l.agent.count);
        set(&mut self.agent.command, l.agent.command);
        set(&mut self.worker.count, l.worker.count);
        set(&mut self.worker.command, l.worker.command);
        if l.agent.max_rss.is_some() {
            self.agent.max_rss = l.agent.max_rss;
        }
        if l.worker.max_rss.is_some() {
            self.worker.max_rss = l.worker.max_rss;
        }
        set(&mut self.expect.agents, l.expect.agents);
        set(&mut self.expect.workers, l.expect.workers);
        let h = &mut self.health;
        set(&mut h.heartbeat_interval, l.health.heartbeat_interval);
        set(&mut h.suspect_after, l.health.suspect_after);
        set(&mut h.dead_after, l.health.dead_after);
        let r = &mut self.restart;
        set(&mut r.min_uptime, l.restart.min_uptime);
        set(&mut r.backoff_initial, l.restart.backoff_initial);
        set(&mut r.backoff_max, l.restart.backoff_max);
        set(&mut r.drain_timeout, l.restart.drain_timeout);
        set(&mut r.kill_timeout, l.restart.kill_timeout);
        set(&mut r.max_restarts, l.restart.max_restarts);
        set(&mut r.restart_window, l.restart.restart_window);
        set(&mut r.start_timeout, l.restart.start_timeout);
        let m = &mut self.messaging;
        set(&mut m.queue_messages, l.messaging.queue_messages);
        set(&mut m.queue_bytes, l.messaging.queue_bytes);
        set(
            &mut m.slow_consumer_timeout,
            l.messaging.slow_consumer_timeout,
        );
        set(&mut m.held_messages, l.messaging.held_messages);
        set(&mut m.pending_requests, l.messaging.pending_requests);
        set(&mut m.overflow, l.messaging.overflow);
        if l.metrics.listen.is_some() {
            self.metrics_listen = l.metrics.listen;
        }
        set(&mut self.metrics_per_member, l.metrics.per_member);
        set(&mut self.limits.max_connections, l.limits.max_connections);
        set(
            &mut self.limits.handshake_timeout,
            l.limits.handshake_timeout,
        );
        set(&mut self.join_rate, l.limits.join_rate);
        set(&mut self.max_members, l.limits.max_members);
        // An empty path (`token_file = ""`) means none.
        let path = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
        self.token_file = path(l.auth.token_file);
        self.tls.cert = path(l.tls.cert);
        self.tls.key = path(l.tls.key);
        self.tls.client_ca = path(l.tls.client_ca);
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.agent.count > 1 {
            return Err(value_err("agent.count", "must be 0 or 1"));
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
        match self.worker.count {
            WorkerCount::Auto => u32::try_from(cpus.max(1)).unwrap_or(u32::MAX),
            WorkerCount::Fixed(n) => n,
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
