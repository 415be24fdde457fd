//! Master configuration (SPEC §6): a TOML file, then `COHORT_*` environment
//! variables, then flags; flags win. Parsing is strict: an unknown key, flag
//! or out-of-range value is an error that names it.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Default gRPC address of the master.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";

/// Environment variables the master reads, each beside the key it sets.
pub const ENV_KEYS: &[(&str, &str)] = &[
    ("COHORT_LISTEN", "listen"),
    ("COHORT_AGENT_COUNT", "agent.count"),
    ("COHORT_WORKER_COUNT", "worker.count"),
    ("COHORT_EXPECT_AGENTS", "expect.agents"),
    ("COHORT_EXPECT_WORKERS", "expect.workers"),
    ("COHORT_HEARTBEAT_INTERVAL", "health.heartbeat_interval"),
    ("COHORT_SUSPECT_AFTER", "health.suspect_after"),
    ("COHORT_DEAD_AFTER", "health.dead_after"),
    (
        "COHORT_SLOW_CONSUMER_TIMEOUT",
        "messaging.slow_consumer_timeout",
    ),
    ("COHORT_OVERFLOW", "messaging.overflow"),
    ("COHORT_MAX_CONNECTIONS", "limits.max_connections"),
    ("COHORT_TOKEN_FILE", "auth.token_file"),
];

/// The environment variable holding a bearer token directly (never a flag:
/// argv is visible to every local user).
pub const ENV_TOKEN: &str = "COHORT_TOKEN";

/// The environment variable naming a config file (like `--config`).
pub const ENV_CONFIG: &str = "COHORT_CONFIG";

/// Flags that take a value, each beside the key it sets.
const FLAG_KEYS: &[(&str, &str)] = &[
    ("--listen", "listen"),
    ("--agent-count", "agent.count"),
    ("--worker-count", "worker.count"),
    ("--expect-agents", "expect.agents"),
    ("--expect-workers", "expect.workers"),
    ("--heartbeat-interval", "health.heartbeat_interval"),
    ("--suspect-after", "health.suspect_after"),
    ("--dead-after", "health.dead_after"),
    ("--slow-consumer-timeout", "messaging.slow_consumer_timeout"),
    ("--overflow", "messaging.overflow"),
    ("--max-connections", "limits.max_connections"),
    ("--handshake-timeout", "limits.handshake_timeout"),
    ("--token-file", "auth.token_file"),
    ("--tls-cert", "tls.cert"),
    ("--tls-key", "tls.key"),
    ("--tls-client-ca", "tls.client_ca"),
    ("--min-uptime", "restart.min_uptime"),
    ("--backoff-initial", "restart.backoff_initial"),
    ("--backoff-max", "restart.backoff_max"),
    ("--drain-timeout", "restart.drain_timeout"),
    ("--kill-timeout", "restart.kill_timeout"),
    ("--max-restarts", "restart.max_restarts"),
    ("--restart-window", "restart.restart_window"),
    ("--listener", "listener"),
];

/// Text of `cohort-master --help`.
pub const USAGE: &str = "\
cohort-master: runs a Cohort cluster's master (membership, health, routing, Control API).

usage: cohort-master [--config FILE] [FLAGS]

  --config FILE                  TOML config (env COHORT_CONFIG)
  --listen ADDR                  gRPC address, port 0 = ephemeral (default 127.0.0.1:7420)
  --agent-count N                0 or 1
  --worker-count N|auto          workers to run (auto = CPU count)
  --expect-agents N              members that must be ready before ClusterReady
  --expect-workers N
  --heartbeat-interval DUR       e.g. 1s, 500ms
  --suspect-after DUR
  --dead-after DUR
  --slow-consumer-timeout DUR    a receiver that takes nothing this long while senders wait is disconnected
  --max-connections N            most connections on the gRPC address at once (default 10000)
  --handshake-timeout DUR        close a connection that starts no handshake this long (default 10s)
  --overflow block|drop          a full receiver queue makes senders wait (block, default) or drops
  --tls-cert FILE, --tls-key FILE  serve gRPC over TLS ([tls] cert, key)
  --tls-client-ca FILE           require client certificates signed by this CA (mTLS);
                                 a member's certificate must carry its name as a DNS SAN
  --token-file FILE              bearer tokens for Join and Control (one per line, two while rotating);
                                 or COHORT_TOKEN / COHORT_TOKEN_FILE in the environment
  --listener NAME=ADDR           a shared listener for workers (repeatable; port 0 allowed)
  --min-uptime DUR               restart policy (see [restart] in the README)
  --backoff-initial DUR
  --backoff-max DUR
  --drain-timeout DUR
  --kill-timeout DUR
  --max-restarts N               0 = never give up
  --restart-window DUR
  --insecure                     allow a non-loopback listen address without auth
  -h, --help                     this text
  -V, --version                  print the version

Each flag has a COHORT_* environment twin (COHORT_LISTEN, COHORT_WORKER_COUNT, ...).
Flags win over the environment, which wins over the file.
Prints `READY master ADDR` on stdout once it serves; logs go to stderr.
";

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
    /// A flag nobody knows.
    #[error("unknown flag {0} (see --help)")]
    UnknownFlag(String),
    /// `--help` or `--version` was asked for: print this and exit 0.
    #[error("{0}")]
    Info(String),
}

/// How many workers to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerCount {
    /// One per CPU.
    Auto,
    /// Exactly this many.
    Fixed(u32),
}

/// `[agent]` or `[worker]`: a role's local slots.
#[derive(Clone, Debug, PartialEq)]
pub struct RoleConfig<C> {
    /// How many local members of the role to run.
    pub count: C,
    /// The command, resolved next to cohort-master when relative.
    pub command: Vec<String>,
}

/// A listener the master binds and shares with workers.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name passed in `LISTEN_FDNAMES`.
    pub name: String,
    /// Address to bind.
    pub addr: SocketAddr,
}

/// `[expect]`: members to wait for before ClusterReady.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expect {
    /// Ready agents needed.
    pub agents: u32,
    /// Ready workers needed.
    pub workers: u32,
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
    /// How long after SIGTERM before SIGKILL.
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// The sender waits for room (flow control): nothing is lost between
    /// healthy members; a receiver that takes nothing for
    /// `slow_consumer_timeout` is disconnected.
    Block,
    /// The delivery is dropped and counted (`dropped_messages`), and a
    /// targeted sender gets UNAVAILABLE: senders never slow down.
    Drop,
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
    /// Bearer token file (one token per line, two while rotating).
    pub token_file: Option<PathBuf>,
    /// Accepted bearer tokens, from `token_file` and `COHORT_TOKEN`.
    pub tokens: Vec<crate::auth::Token>,
    /// Things worth a warning at start (the binary logs them).
    pub warnings: Vec<String>,
    /// Allow a non-loopback listen address without auth.
    pub insecure: bool,
    /// systemd's `NOTIFY_SOCKET`: where to send `READY=1` at ClusterReady.
    pub notify_socket: Option<String>,
    /// `[tls]`: serve gRPC over TLS (and require client certificates).
    pub tls: TlsConfig,
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

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().unwrap_or_else(|_| unreachable!()),
            agent: RoleConfig {
                count: 1,
                command: vec!["cohort-agent".into()],
            },
            worker: RoleConfig {
                count: WorkerCount::Auto,
                command: vec!["cohort-worker".into()],
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
            limits: crate::listen::ConnectionLimits {
                max_connections: 10_000,
                handshake_timeout: Duration::from_secs(10),
            },
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
            notify_socket: None,
            tls: TlsConfig::default(),
        }
    }
}

// The file's shape: every field optional, unknown keys refused.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    agent: Option<FileRole>,
    worker: Option<FileRole>,
    #[serde(default)]
    listener: Vec<ListenerConfig>,
    expect: Option<FileExpect>,
    health: Option<FileHealth>,
    restart: Option<FileRestart>,
    messaging: Option<FileMessaging>,
    limits: Option<FileLimits>,
    auth: Option<FileAuth>,
    tls: Option<FileTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_connections: Option<usize>,
    handshake_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRole {
    count: Option<toml::Value>,
    command: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileExpect {
    agents: Option<u32>,
    workers: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHealth {
    heartbeat_interval: Option<String>,
    suspect_after: Option<String>,
    dead_after: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRestart {
    min_uptime: Option<String>,
    backoff_initial: Option<String>,
    backoff_max: Option<String>,
    drain_timeout: Option<String>,
    kill_timeout: Option<String>,
    max_restarts: Option<u32>,
    restart_window: Option<String>,
    start_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMessaging {
    queue_messages: Option<usize>,
    queue_bytes: Option<usize>,
    slow_consumer_timeout: Option<String>,
    held_messages: Option<usize>,
    pending_requests: Option<usize>,
    overflow: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    token_file: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
}

impl Config {
    /// Builds the configuration from flags (`args` without the program
    /// name) and an environment lookup (`std::env::var` in production, a map
    /// in tests).
    pub fn load(
        args: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut flags: Vec<(String, String, &'static str)> = Vec::new();
        let mut file = env(ENV_CONFIG).map(PathBuf::from);
        let mut insecure = false;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
                _ => (arg.as_str(), None),
            };
            match flag {
                "-h" | "--help" => return Err(ConfigError::Info(USAGE.into())),
                "-V" | "--version" => {
                    return Err(ConfigError::Info(format!(
                        "cohort-master {}",
                        env!("CARGO_PKG_VERSION")
                    )));
                }
                "--insecure" => insecure = true,
                _ => {
                    let key = if flag == "--config" {
                        "config"
                    } else {
                        FLAG_KEYS
                            .iter()
                            .find(|(f, _)| *f == flag)
                            .map(|(_, k)| *k)
                            .ok_or_else(|| ConfigError::UnknownFlag(flag.to_string()))?
                    };
                    let value = match inline {
                        Some(v) => v,
                        None => it.next().cloned().ok_or_else(|| ConfigError::Value {
                            key: flag.to_string(),
                            message: "needs a value".into(),
                        })?,
                    };
                    if key == "config" {
                        file = Some(PathBuf::from(value));
                    } else {
                        flags.push((flag.to_string(), value, key));
                    }
                }
            }
        }

        let mut cfg = Config::default();
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let parsed: FileConfig = toml::from_str(&text).map_err(|e| ConfigError::File {
                path: path.clone(),
                message: e.to_string().trim().replace('\n', " "),
            })?;
            cfg.apply_file(parsed)?;
        }
        for (var, key) in ENV_KEYS {
            if let Some(v) = env(var) {
                cfg.set(key, &v).map_err(|message| ConfigError::Value {
                    key: (*var).to_string(),
                    message,
                })?;
            }
        }
        for (flag, value, key) in flags {
            cfg.set(key, &value)
                .map_err(|message| ConfigError::Value { key: flag, message })?;
        }
        cfg.insecure |= insecure;
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
        cfg.notify_socket = env("NOTIFY_SOCKET").filter(|s| !s.is_empty());
        cfg.validate()?;
        Ok(cfg)
    }

    fn apply_file(&mut self, f: FileConfig) -> Result<(), ConfigError> {
        let mut pairs: Vec<(&str, String)> = Vec::new();
        if let Some(v) = f.listen {
            pairs.push(("listen", v));
        }
        for (role, section) in [("agent", f.agent), ("worker", f.worker)] {
            let Some(section) = section else { continue };
            if let Some(c) = section.count {
                let text = match c {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    other => format!("{other:?}"),
                };
                pairs.push((
                    if role == "agent" {
                        "agent.count"
                    } else {
                        "worker.count"
                    },
                    text,
                ));
            }
            if let Some(cmd) = section.command {
                if cmd.is_empty() {
                    return Err(value_err(&format!("{role}.command"), "must name a program"));
                }
                if role == "agent" {
                    self.agent.command = cmd;
                } else {
                    self.worker.command = cmd;
                }
            }
        }
        if !f.listener.is_empty() {
            self.listeners = f.listener;
        }
        if let Some(e) = f.expect {
            self.expect.agents = e.agents.unwrap_or(self.expect.agents);
            self.expect.workers = e.workers.unwrap_or(self.expect.workers);
        }
        if let Some(h) = f.health {
            push_opt(
                &mut pairs,
                "health.heartbeat_interval",
                h.heartbeat_interval,
            );
            push_opt(&mut pairs, "health.suspect_after", h.suspect_after);
            push_opt(&mut pairs, "health.dead_after", h.dead_after);
        }
        if let Some(r) = f.restart {
            push_opt(&mut pairs, "restart.min_uptime", r.min_uptime);
            push_opt(&mut pairs, "restart.backoff_initial", r.backoff_initial);
            push_opt(&mut pairs, "restart.backoff_max", r.backoff_max);
            push_opt(&mut pairs, "restart.drain_timeout", r.drain_timeout);
            push_opt(&mut pairs, "restart.kill_timeout", r.kill_timeout);
            push_opt(&mut pairs, "restart.restart_window", r.restart_window);
            push_opt(&mut pairs, "restart.start_timeout", r.start_timeout);
            self.restart.max_restarts = r.max_restarts.unwrap_or(self.restart.max_restarts);
        }
        if let Some(m) = f.messaging {
            let m_cfg = &mut self.messaging;
            m_cfg.queue_messages = m.queue_messages.unwrap_or(m_cfg.queue_messages);
            m_cfg.queue_bytes = m.queue_bytes.unwrap_or(m_cfg.queue_bytes);
            m_cfg.held_messages = m.held_messages.unwrap_or(m_cfg.held_messages);
            m_cfg.pending_requests = m.pending_requests.unwrap_or(m_cfg.pending_requests);
            push_opt(
                &mut pairs,
                "messaging.slow_consumer_timeout",
                m.slow_consumer_timeout,
            );
            push_opt(&mut pairs, "messaging.overflow", m.overflow);
        }
        if let Some(l) = f.limits {
            self.limits.max_connections = l.max_connections.unwrap_or(self.limits.max_connections);
            push_opt(&mut pairs, "limits.handshake_timeout", l.handshake_timeout);
        }
        if let Some(a) = f.auth {
            self.token_file = a.token_file.filter(|s| !s.is_empty()).map(PathBuf::from);
        }
        if let Some(t) = f.tls {
            push_opt(&mut pairs, "tls.cert", t.cert);
            push_opt(&mut pairs, "tls.key", t.key);
            push_opt(&mut pairs, "tls.client_ca", t.client_ca);
        }
        for (key, value) in pairs {
            self.set(key, &value).map_err(|m| value_err(key, &m))?;
        }
        Ok(())
    }

    /// Sets one key from its text form (as written in env or flags).
    fn set(&mut self, key: &str, v: &str) -> Result<(), String> {
        match key {
            "listen" => {
                self.listen = v
                    .parse()
                    .map_err(|_| format!("{v:?} is not an address like 127.0.0.1:7420"))?
            }
            "agent.count" => match parse_u32(v)? {
                n @ (0 | 1) => self.agent.count = n,
                n => return Err(format!("{n} agents: a cluster has 0 or 1 agent")),
            },
            "worker.count" => {
                self.worker.count = if v == "auto" {
                    WorkerCount::Auto
                } else {
                    WorkerCount::Fixed(parse_u32(v).map_err(|e| format!("{e}, or \"auto\""))?)
                }
            }
            "expect.agents" => self.expect.agents = parse_u32(v)?,
            "expect.workers" => self.expect.workers = parse_u32(v)?,
            "health.heartbeat_interval" => self.health.heartbeat_interval = parse_duration(v)?,
            "health.suspect_after" => self.health.suspect_after = parse_duration(v)?,
            "health.dead_after" => self.health.dead_after = parse_duration(v)?,
            "tls.cert" => self.tls.cert = Some(PathBuf::from(v)),
            "tls.key" => self.tls.key = Some(PathBuf::from(v)),
            "tls.client_ca" => self.tls.client_ca = Some(PathBuf::from(v)),
            "auth.token_file" => {
                self.token_file = Some(PathBuf::from(v)).filter(|p| !p.as_os_str().is_empty())
            }
            "restart.min_uptime" => self.restart.min_uptime = parse_duration(v)?,
            "restart.backoff_initial" => self.restart.backoff_initial = parse_duration(v)?,
            "restart.backoff_max" => self.restart.backoff_max = parse_duration(v)?,
            "restart.drain_timeout" => self.restart.drain_timeout = parse_duration(v)?,
            "restart.kill_timeout" => self.restart.kill_timeout = parse_duration(v)?,
            "restart.max_restarts" => self.restart.max_restarts = parse_u32(v)?,
            "restart.restart_window" => self.restart.restart_window = parse_duration(v)?,
            "restart.start_timeout" => self.restart.start_timeout = parse_duration(v)?,
            "listener" => {
                let (name, addr) = v
                    .split_once('=')
                    .ok_or_else(|| format!("{v:?}: use NAME=ADDR, e.g. http=127.0.0.1:8080"))?;
                let addr = addr
                    .parse()
                    .map_err(|_| format!("{addr:?} is not an address like 127.0.0.1:8080"))?;
                self.listeners.retain(|l| l.name != name);
                self.listeners.push(ListenerConfig {
                    name: name.to_string(),
                    addr,
                });
            }
            "messaging.slow_consumer_timeout" => {
                self.messaging.slow_consumer_timeout = parse_duration(v)?
            }
            "limits.max_connections" => {
                self.limits.max_connections = v
                    .parse()
                    .map_err(|_| format!("{v:?} is not a number of connections"))?
            }
            "limits.handshake_timeout" => self.limits.handshake_timeout = parse_duration(v)?,
            "messaging.overflow" => {
                self.messaging.overflow = match v {
                    "block" => Overflow::Block,
                    "drop" => Overflow::Drop,
                    other => return Err(format!("{other:?}: use \"block\" or \"drop\"")),
                }
            }
            other => return Err(format!("unknown key {other}")),
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
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

fn push_opt<'a>(pairs: &mut Vec<(&'a str, String)>, key: &'a str, v: Option<String>) {
    if let Some(v) = v {
        pairs.push((key, v));
    }
}

fn value_err(key: &str, message: &str) -> ConfigError {
    ConfigError::Value {
        key: key.to_string(),
        message: message.to_string(),
    }
}

fn parse_u32(v: &str) -> Result<u32, String> {
    v.trim()
        .parse()
        .map_err(|_| format!("{v:?} is not a whole number"))
}

pub use cohort_process::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(args: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Config::load(&args, &move |k| env.get(k).cloned())
    }

    fn write(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("write");
        f
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = load(&[], &[]).expect("defaults");
        assert_eq!(c.listen.to_string(), "127.0.0.1:7420");
        assert_eq!(c.agent.count, 1);
        assert_eq!(c.worker.count, WorkerCount::Auto);
        assert_eq!(c.health.suspect_after, Duration::from_secs(3));
        assert_eq!(c.restart.backoff_initial, Duration::from_millis(200));
    }

    #[test]
    fn flags_win_over_env_which_wins_over_file() {
        let f = write("listen = \"127.0.0.1:1\"\n[expect]\nworkers = 1\n[worker]\ncount = 3\n");
        let path = f.path().to_str().expect("utf-8 path");
        let c = load(&["--config", path], &[]).expect("file");
        assert_eq!(c.listen.port(), 1);
        assert_eq!(c.worker.count, WorkerCount::Fixed(3));
        let c = load(&["--config", path], &[("COHORT_LISTEN", "127.0.0.1:2")]).expect("env");
        assert_eq!(c.listen.port(), 2);
        let c = load(
            &["--config", path, "--listen=127.0.0.1:3"],
            &[("COHORT_LISTEN", "127.0.0.1:2")],
        )
        .expect("flag");
        assert_eq!(c.listen.port(), 3);
        assert_eq!(c.expect.workers, 1);
    }

    #[test]
    fn unknown_keys_and_flags_are_named() {
        let f = write("[health]\nheartbeat = \"1s\"\n");
        let err = load(&["--config", f.path().to_str().expect("path")], &[])
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("heartbeat"), "{err}");
        let err = load(&["--bogus"], &[])
            .expect_err("unknown flag")
            .to_string();
        assert!(err.contains("--bogus"), "{err}");
    }

    #[test]
    fn bad_values_name_their_source() {
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (&["--listen", "nope"], &[], "--listen"),
            (&[], &[("COHORT_DEAD_AFTER", "10")], "COHORT_DEAD_AFTER"),
            (&["--agent-count", "2"], &[], "0 or 1"),
            (&["--suspect-after", "20s"], &[], "health.dead_after"),
            (&["--worker-count", "many"], &[], "auto"),
            (&["--listen", "0.0.0.0:7420"], &[], "--insecure"),
            (&["--overflow", "shed"], &[], "\"block\" or \"drop\""),
            (&[], &[("COHORT_OVERFLOW", "Drop")], "COHORT_OVERFLOW"),
        ];
        let f = write("[auth]\ntoken_file = \"/nonexistent/cohort/token\"\n");
        let err = load(&["--config", f.path().to_str().expect("path")], &[])
            .expect_err("missing token file")
            .to_string();
        assert!(err.contains("/nonexistent/cohort/token"), "{err}");
        let err = load(&[], &[("COHORT_TOKEN", "short")])
            .expect_err("short")
            .to_string();
        assert!(err.contains("COHORT_TOKEN") && err.contains("16"), "{err}");
        for (args, env, needle) in cases {
            let err = load(args, env).expect_err(needle).to_string();
            assert!(err.contains(needle), "{args:?}: {err}");
        }
        assert!(load(&["--listen", "0.0.0.0:0", "--insecure"], &[]).is_ok());
        let c = load(&["--overflow", "drop"], &[]).expect("drop mode");
        assert_eq!(c.messaging.overflow, Overflow::Drop);
        let tokens = write("0123456789abcdef0123\n");
        let path = tokens.path().to_str().expect("path");
        let c =
            load(&["--listen", "0.0.0.0:0", "--token-file", path], &[]).expect("token allows it");
        assert_eq!(c.tokens.len(), 1);
        let c = load(
            &["--token-file", path],
            &[("COHORT_TOKEN", "fedcba9876543210fedc")],
        )
        .expect("both");
        assert_eq!(c.tokens.len(), 2);
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("s").is_err());
    }
}
