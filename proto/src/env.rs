//! The `COHORT_*` environment variables that cross a process boundary: what
//! the master hands its children, and what every member, `cohort-worker`'s
//! payload and `cohortctl` read (SPEC §6). One home, so a name cannot differ
//! between the side that sets it and the side that reads it.

/// The master's address: `http://127.0.0.1:7420` (a bare `host:port`
/// works), `https://…` for TLS, or `unix:///path` for a local socket; with
/// several masters that fail over, a comma-separated list.
pub const MASTER: &str = "COHORT_MASTER";
/// The member's name; empty or unset lets the master assign one.
pub const NAME: &str = "COHORT_NAME";
/// `agent` or `worker` (default `worker`).
pub const ROLE: &str = "COHORT_ROLE";
/// The app a worker belongs to (default `worker`, the `[worker]` section's).
pub const APP: &str = "COHORT_APP";
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
/// `json` for JSON log lines; the master sets what its children write.
pub const LOG_FORMAT: &str = "COHORT_LOG_FORMAT";
/// The fd of the JSON-lines messenger a `cohort-worker --exec` payload gets.
pub const CHANNEL_FD: &str = "COHORT_CHANNEL_FD";
