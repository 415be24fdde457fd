//! The Cohort member SDK: what every agent and worker links.
//!
//! A [`Member`] keeps one `Membership/Join` stream to the master open for its
//! whole life: it heartbeats with its CPU % and RSS, reconnects with capped,
//! jittered backoff and re-registers under the same name, and carries the
//! messenger (Egg's `broadcast`, `sendToApp`, `sendToAgent`, `sendRandom`,
//! `sendTo`, plus `request`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), cohort::Error> {
//! let member = cohort::MemberBuilder::from_env()?.join().await?;
//! let mut refresh = member.on("refresh");
//! member.ready().await?;
//! member.cluster_ready().await;
//! member.send_to_app("hello", "from a worker").await?;
//! while let Some(msg) = refresh.recv().await {
//!     println!("{} says {:?}", msg.from, msg.text());
//! }
//! # Ok(()) }
//! ```
//!
//! Modules: [`backoff`] (reconnect delays), `builder` (how to join),
//! `member` (the handle and the messenger), `shared` (the state the handle
//! and the connection share, and received messages), `event` (cluster and connection events), [`logs`] (a remote member's
//! log lines to the master), `connection` (the stream, heartbeats, reconnects),
//! `transport` (http, https with optional mTLS, unix sockets), `stats`
//! (sysinfo sampling), `error`.

pub mod backoff;
mod builder;
mod connection;
mod error;
mod event;
pub mod logs;
mod member;
mod shared;
mod stats;
mod transport;

pub use builder::MemberBuilder;
pub use cohort_proto::{MemberName, Role, Target, pb};
pub use error::Error;
pub use event::{Event, MemberEvent, MemberEventKind};
pub use member::Member;
pub use shared::{Message, Subscription};
pub use tonic::Code;
pub use transport::TlsFiles;

/// Environment variables a member reads (SPEC §6).
pub mod env {
    /// The master's address: `http://127.0.0.1:7420` (a bare `host:port`
    /// works), `https://…` for TLS, or `unix:///path` for a local socket.
    pub const MASTER: &str = "COHORT_MASTER";
    /// The member's name; empty or unset lets the master assign one.
    pub const NAME: &str = "COHORT_NAME";
    /// `agent` or `worker` (default `worker`).
    pub const ROLE: &str = "COHORT_ROLE";
    /// The one-time secret a master hands its local children.
    pub const SECRET: &str = "COHORT_SECRET";
    /// A bearer token for the master.
    pub const TOKEN: &str = "COHORT_TOKEN";
    /// A file holding the bearer token.
    pub const TOKEN_FILE: &str = "COHORT_TOKEN_FILE";
    /// PEM file of the CA that signed the master's certificate (`https://`).
    pub const TLS_CA: &str = "COHORT_TLS_CA";
    /// PEM client certificate for mTLS; its DNS name must be the member name.
    pub const TLS_CERT: &str = "COHORT_TLS_CERT";
    /// PEM key of the client certificate.
    pub const TLS_KEY: &str = "COHORT_TLS_KEY";
}
