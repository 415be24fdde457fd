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
mod masters;
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
pub use cohort_proto::env;
