//! Every setting declared once: a [`Layer`] of `Option`s is at the same
//! time the TOML file's shape (serde), the flags (clap derive, which also
//! writes `--help`), and, through the flags' names, the environment
//! (`--dead-after` → `COHORT_DEAD_AFTER`). Layers merge defaults → file →
//! environment → flags. The defaults are one more layer,
//! [`Layer::defaults`], the only place they are written: `--help` shows
//! them from there, and the configuration is made from the merged layers.

use super::apps::AppTable;
use super::values::{
    app_counts, bytes, duration, parse_app_count, parse_listener, parse_overflow,
    parse_worker_count,
};
use super::{AppCount, ListenerConfig, Overflow, WorkerCount};
use clap::{CommandFactory, FromArgMatches, Parser};
use cohort_process::{parse_bytes, parse_duration};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Text after the flags in `--help`.
const AFTER_HELP: &str = "\
Every flag has an environment twin: COHORT_ and the flag's name in capitals
(--dead-after → COHORT_DEAD_AFTER), except --insecure and --tls-* (members
read COHORT_TLS_* for their own certificates). Flags win over the
environment, which wins over the file (--config / COHORT_CONFIG); the file's
keys are the same names in their [section]s (README, Configuration).
The bearer token may also come from COHORT_TOKEN (never a flag).
Prints `READY master ADDR` on stdout once it serves; logs go to stderr.";

/// One source's settings: the file, the environment or the flags.
#[derive(Parser, Serialize, Deserialize, Default, Debug)]
#[command(
    name = "cohort-master",
    version,
    about = "Runs a Cohort cluster's master: membership, health, routing, the Control API.",
    after_help = AFTER_HELP
)]
#[serde(deny_unknown_fields)]
pub(super) struct Layer {
    /// TOML config file.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// gRPC address; port 0 = ephemeral.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Allow a non-loopback listen address without a token or TLS.
    #[arg(long)]
    #[serde(skip)]
    pub insecure: bool,
    /// A shared listener for the workers (repeatable; port 0 allowed).
    #[arg(long = "listener", value_name = "NAME=ADDR", value_parser = parse_listener)]
    #[serde(rename = "listener", default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<ListenerConfig>,
    /// `[[app]]` tables (file only).
    #[arg(skip)]
    #[serde(rename = "app", default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<AppTable>,
    #[command(flatten)]
    #[serde(default)]
    pub agent: AgentLayer,
    #[command(flatten)]
    #[serde(default)]
    pub worker: WorkerLayer,
    #[command(flatten)]
    #[serde(default)]
    pub expect: ExpectLayer,
    #[command(flatten)]
    #[serde(default)]
    pub health: HealthLayer,
    #[command(flatten)]
    #[serde(default)]
    pub restart: RestartLayer,
    #[command(flatten)]
    #[serde(default)]
    pub messaging: MessagingLayer,
    #[command(flatten)]
    #[serde(default)]
    pub limits: LimitsLayer,
    #[command(flatten)]
    #[serde(default)]
    pub metrics: MetricsLayer,
    #[command(flatten)]
    #[serde(default)]
    pub auth: AuthLayer,
    #[command(flatten)]
    #[serde(default)]
    pub tls: TlsLayer,
    #[command(flatten)]
    #[serde(default)]
    pub ha: HaLayer,
}

/// `[ha]`.
#[derive(clap::Args, Serialize, Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct HaLayer {
    /// Run as one of several masters that elect a leader through these
    /// etcd endpoints (comma-separated http://HOST:PORT); off unless set.
    #[arg(
        id = "ha-etcd",
        long = "ha-etcd",
        value_name = "URLS",
        value_delimiter = ','
    )]
    pub etcd: Option<Vec<String>>,
    /// The etcd key prefix of this cluster's masters.
    #[arg(id = "ha-prefix", long = "ha-prefix", value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// The leader's etcd lease (whole seconds, 2s to 60s); it steps down
    /// before the lease can expire.
    #[arg(id = "ha-lease-ttl", long = "ha-lease-ttl", value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub lease_ttl: Option<Duration>,
    /// The address members should use for this master (HOST:PORT;
    /// `{hostname}` is replaced by this host's name); required when listen
    /// is 0.0.0.0 or [::].
    #[arg(id = "ha-advertise", long = "ha-advertise", value_name = "ADDR")]
    pub advertise: Option<String>,
    /// The etcd user (with --ha-etcd-password-file); off unless set.
    #[arg(id = "ha-etcd-user", long = "ha-etcd-user", value_name = "NAME")]
    pub etcd_user: Option<String>,
    /// A file holding the etcd user's password (first line).
    #[arg(
        id = "ha-etcd-password-file",
        long = "ha-etcd-password-file",
        value_name = "FILE"
    )]
    pub etcd_password_file: Option<PathBuf>,
    /// The CA of etcd's certificate (PEM), for https:// endpoints.
    #[arg(id = "ha-etcd-ca", long = "ha-etcd-ca", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,
    /// This master's client certificate for etcd (PEM), with --ha-etcd-key.
    #[arg(id = "ha-etcd-cert", long = "ha-etcd-cert", value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,
    /// ... and its private key (PEM).
    #[arg(id = "ha-etcd-key", long = "ha-etcd-key", value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
}

/// `[metrics]`.
#[derive(clap::Args, Serialize, Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct MetricsLayer {
    /// Serve Prometheus metrics over HTTP here (GET /metrics; port 0 =
    /// ephemeral); off unless set.
    #[arg(id = "metrics-listen", long = "metrics-listen", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Series per member (six each); false keeps the cluster's totals
    /// only, for clusters of thousands.
    #[arg(
        id = "metrics-per-member",
        long = "metrics-per-member",
        value_name = "BOOL"
    )]
    pub per_member: Option<bool>,
}

/// `[agent]`.
#[derive(clap::Args, Serialize, Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct AgentLayer {
    /// Local agents to run: 0 or 1.
    #[arg(id = "agent-count", long = "agent-count", value_name = "N")]
    pub count: Option<u32>,
    /// Replace the agent gracefully when its memory stays above this (512MiB, 1GiB).
    #[arg(id = "agent-max-rss", long = "agent-max-rss", value_name = "SIZE", value_parser = parse_bytes)]
    #[serde(default, with = "bytes")]
    pub max_rss: Option<u64>,
    /// The agent's command (file only).
    #[arg(skip)]
    pub command: Option<Vec<String>>,
}

/// `[worker]`.
#[derive(clap::Args, Serialize, Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct WorkerLayer {
    /// Local workers to run, or auto (one per CPU).
    #[arg(id = "worker-count", long = "worker-count", value_name = "N|auto", value_parser = parse_worker_count)]
    pub count: Option<WorkerCount>,
    /// Replace a worker gracefully when its memory stays above this (512MiB, 1GiB).
    #[arg(id = "worker-max-rss", long = "worker-max-rss", value_name = "SIZE", value_parser = parse_bytes)]
    #[serde(default, with = "bytes")]
    pub max_rss: Option<u64>,
    /// The workers' command (file only).
    #[arg(skip)]
    pub command: Option<Vec<String>>,
}

/// `[expect]`.
#[derive(clap::Args, Serialize, Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct ExpectLayer {
    /// Remote agents that must be ready before ClusterReady.
    #[arg(long = "expect-agents", value_name = "N")]
    pub agents: Option<u32>,
    /// Remote workers that must be ready before ClusterReady.
    #[arg(long = "expect-workers", value_name = "N")]
    pub workers: Option<u32>,
    /// Ready members of an app needed before ClusterReady (repeatable).
    #[arg(long = "expect-app", value_name = "APP=N", value_parser = parse_app_count)]
    #[serde(default, with = "app_counts", skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<AppCount>,
}

/// `[health]`.
#[derive(clap::Args, Serialize, Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthLayer {
    /// How often members heartbeat.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub heartbeat_interval: Option<Duration>,
    /// Silence after which a member is SUSPECT.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub suspect_after: Option<Duration>,
    /// Silence after which a member is evicted.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub dead_after: Option<Duration>,
    /// Heartbeats a second for the whole cluster: past it, members get a
    /// longer interval (doubling), and the two silences above grow with it;
    /// 0 = always the ones above.
    #[arg(long, value_name = "N")]
    pub max_heartbeats_per_second: Option<u32>,
}

/// `[restart]`.
#[derive(clap::Args, Serialize, Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct RestartLayer {
    /// A run at least this long respawns at once.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub min_uptime: Option<Duration>,
    /// First delay after an early death.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub backoff_initial: Option<Duration>,
    /// Cap on that delay.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub backoff_max: Option<Duration>,
    /// How long a retiring member may finish its work.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub drain_timeout: Option<Duration>,
    /// At shutdown, time to exit after --drain-timeout before SIGKILL.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub kill_timeout: Option<Duration>,
    /// Restarts within --restart-window before a slot is FAILED; 0 = never
    /// give up.
    #[arg(long, value_name = "N")]
    pub max_restarts: Option<u32>,
    /// The window --max-restarts counts in.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub restart_window: Option<Duration>,
    /// Per startup stage, and per member: one not ready this long after it
    /// started (or joined) is killed (or dropped).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub start_timeout: Option<Duration>,
}

/// `[messaging]`.
#[derive(clap::Args, Serialize, Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct MessagingLayer {
    /// Messages queued for one member.
    #[arg(long, value_name = "N")]
    pub queue_messages: Option<usize>,
    /// Bytes queued for one member.
    #[arg(long, value_name = "BYTES")]
    pub queue_bytes: Option<usize>,
    /// A receiver that takes nothing this long while senders wait is
    /// disconnected.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub slow_consumer_timeout: Option<Duration>,
    /// Messages held before ClusterReady.
    #[arg(long, value_name = "N")]
    pub held_messages: Option<usize>,
    /// Requests awaiting replies at once.
    #[arg(long, value_name = "N")]
    pub pending_requests: Option<usize>,
    /// A full receiver queue makes senders wait (block) or drops.
    #[arg(long, value_name = "block|drop", value_parser = parse_overflow)]
    pub overflow: Option<Overflow>,
}

/// `[limits]`.
#[derive(clap::Args, Serialize, Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsLayer {
    /// Connections on the gRPC address at once.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// A connection that starts no handshake this long is closed.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    #[serde(default, with = "duration")]
    pub handshake_timeout: Option<Duration>,
    /// Joins from the network admitted a second (a tenth of a second's
    /// worth at once); more wait their turn, up to 10 s; 0 = no limit.
    #[arg(long, value_name = "N")]
    pub join_rate: Option<u32>,
    /// Members registered at once; a join beyond gets RESOURCE_EXHAUSTED
    /// (the master's own children always join); 0 = no limit.
    #[arg(long, value_name = "N")]
    pub max_members: Option<usize>,
}

/// `[auth]`.
#[derive(clap::Args, Serialize, Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthLayer {
    /// Bearer tokens for Join and Control, one per line (two while rotating).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// `[tls]`.
#[derive(clap::Args, Serialize, Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsLayer {
    /// Serve gRPC over TLS with this certificate chain (PEM).
    #[arg(long = "tls-cert", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// ... and this private key (PEM).
    #[arg(long = "tls-key", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS); a member's
    /// certificate must carry its name as a DNS SAN.
    #[arg(long = "tls-client-ca", value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
}

/// What went wrong reading one source.
pub(super) enum LayerError {
    /// `--help` or `--version`: the text to print.
    Info(String),
    /// A bad flag or value; the message names it.
    Bad(String),
}

fn clap_error(e: clap::Error) -> LayerError {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => LayerError::Info(e.to_string()),
        _ => {
            // The first line names the flag and the problem; the rest is usage.
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            LayerError::Bad(first.trim_start_matches("error: ").to_string())
        }
    }
}

impl Layer {
    /// Every setting's default. A setting left out here (a memory limit,
    /// the metrics listener, auth, TLS) is off unless set.
    pub fn defaults() -> Layer {
        let secs = Duration::from_secs;
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Layer {
            config: None,
            listen: Some(loopback(7420)),
            insecure: false,
            listeners: vec![ListenerConfig {
                name: "http".into(),
                addr: loopback(8080),
            }],
            apps: Vec::new(),
            agent: AgentLayer {
                count: Some(1),
                max_rss: None,
                command: Some(vec!["cohort-agent".into()]),
            },
            worker: WorkerLayer {
                count: Some(WorkerCount::Auto),
                max_rss: None,
                command: Some(vec!["cohort-worker".into()]),
            },
            expect: ExpectLayer {
                agents: Some(0),
                workers: Some(0),
                apps: Vec::new(),
            },
            health: HealthLayer {
                heartbeat_interval: Some(secs(1)),
                suspect_after: Some(secs(3)),
                dead_after: Some(secs(10)),
                max_heartbeats_per_second: Some(1000),
            },
            restart: RestartLayer {
                min_uptime: Some(secs(1)),
                backoff_initial: Some(Duration::from_millis(200)),
                backoff_max: Some(secs(30)),
                drain_timeout: Some(secs(30)),
                kill_timeout: Some(secs(5)),
                max_restarts: Some(0),
                restart_window: Some(secs(60)),
                start_timeout: Some(secs(30)),
            },
            messaging: MessagingLayer {
                queue_messages: Some(1024),
                queue_bytes: Some(8 * 1024 * 1024),
                slow_consumer_timeout: Some(secs(5)),
                held_messages: Some(4096),
                pending_requests: Some(65_536),
                overflow: Some(Overflow::Block),
            },
            limits: LimitsLayer {
                max_connections: Some(20_000),
                handshake_timeout: Some(secs(10)),
                join_rate: Some(5000),
                max_members: Some(20_000),
            },
            metrics: MetricsLayer {
                listen: None,
                per_member: Some(true),
            },
            auth: AuthLayer::default(),
            tls: TlsLayer::default(),
            ha: HaLayer {
                etcd: None,
                prefix: Some("cohort".into()),
                lease_ttl: Some(secs(2)),
                advertise: None,
                etcd_user: None,
                etcd_password_file: None,
                etcd_ca: None,
                etcd_cert: None,
                etcd_key: None,
            },
        }
    }

    /// The flags as clap parses them, each one's help ending in its default
    /// from [`Layer::defaults`].
    pub fn command() -> clap::Command {
        let defaults = defaults_by_flag();
        let mut cmd = <Layer as CommandFactory>::command();
        let args: Vec<(String, String)> = cmd
            .get_arguments()
            .filter_map(|a| Some((a.get_id().to_string(), a.get_long()?.to_string())))
            .collect();
        for (id, long) in args {
            if let Some(text) = defaults.get(&long) {
                cmd = cmd.mut_arg(id, |a| {
                    let help = a.get_help().map(ToString::to_string).unwrap_or_default();
                    a.help(format!("{help} [default: {text}]"))
                });
            }
        }
        cmd
    }

    /// The flags (without the program name).
    pub fn from_flags(args: &[String]) -> Result<Layer, LayerError> {
        let argv = std::iter::once("cohort-master".to_string()).chain(args.iter().cloned());
        let matches = Layer::command()
            .try_get_matches_from(argv)
            .map_err(clap_error)?;
        Layer::from_arg_matches(&matches).map_err(clap_error)
    }

    /// The environment twins of the flags, each read through `env`; an error
    /// names the variable.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Layer, (String, String)> {
        let mut merged = Layer::default();
        for (var, flag) in env_twins() {
            let Some(value) = env(&var) else {
                continue;
            };
            let argv = [format!("--{flag}={value}")];
            let layer = Layer::from_flags(&argv).map_err(|e| match e {
                LayerError::Bad(m) | LayerError::Info(m) => (var.clone(), m),
            })?;
            merged = merged.under(layer);
        }
        Ok(merged)
    }

    /// `over` on top of `self`: whatever `over` sets wins.
    pub fn under(self, over: Layer) -> Layer {
        let config = over.config.clone().or(self.config.clone());
        let insecure = over.insecure || self.insecure;
        let mut base = serde_json::to_value(&self).unwrap_or_default();
        let top = serde_json::to_value(&over).unwrap_or_default();
        merge(&mut base, top);
        let mut layer: Layer = serde_json::from_value(base).unwrap_or(over);
        layer.config = config;
        layer.insecure = insecure;
        layer
    }
}

/// Deep-merges `top` into `base`; nulls in `top` leave `base` alone.
fn merge(base: &mut serde_json::Value, top: serde_json::Value) {
    use serde_json::Value;
    match (base, top) {
        (Value::Object(b), Value::Object(t)) => {
            for (k, v) in t {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (_, Value::Null) => {}
        (b, t) => *b = t,
    }
}

/// Each default as `--help` shows it, by flag name: a key of section
/// `[s]` is the flag `--s-key` or `--key`, whichever exists.
fn defaults_by_flag() -> std::collections::HashMap<String, String> {
    use serde_json::Value;
    let flags: Vec<String> = <Layer as CommandFactory>::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    let shown = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => {
            let listeners: Vec<String> = items
                .iter()
                .filter_map(|l| Some(format!("{}={}", l["name"].as_str()?, l["addr"].as_str()?)))
                .collect();
            (!listeners.is_empty()).then(|| listeners.join(", "))
        }
        _ => None,
    };
    let mut out = std::collections::HashMap::new();
    let Ok(Value::Object(top)) = serde_json::to_value(Layer::defaults()) else {
        return out;
    };
    for (key, value) in &top {
        let entries: Vec<(String, &Value)> = match value {
            Value::Object(section) => section
                .iter()
                .map(|(k, v)| {
                    let k = k.replace('_', "-");
                    let prefixed = format!("{key}-{k}");
                    (
                        if flags.contains(&prefixed) {
                            prefixed
                        } else {
                            k
                        },
                        v,
                    )
                })
                .collect(),
            v => vec![(key.clone(), v)],
        };
        for (flag, v) in entries {
            if let Some(text) = shown(v).filter(|_| flags.contains(&flag)) {
                out.insert(flag, text);
            }
        }
    }
    out
}

/// `(COHORT_NAME, flag-name)` for every flag that has an environment twin.
pub(super) fn env_twins() -> Vec<(String, String)> {
    <Layer as CommandFactory>::command()
        .get_arguments()
        .filter(|a| a.get_action().takes_values())
        .filter_map(|a| a.get_long())
        .filter(|long| !long.starts_with("tls-"))
        .map(|long| {
            let var = format!("COHORT_{}", long.to_uppercase().replace('-', "_"));
            (var, long.to_string())
        })
        .collect()
}
