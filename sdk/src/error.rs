//! The SDK's error type; each variant maps to the gRPC code a caller would
//! expect (`NOT_FOUND` for an unknown member, `DEADLINE_EXCEEDED` for a
//! request nobody answered in time, ...).

use std::time::Duration;
use tonic::Code;

/// Why a join, send or request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The master refused (for example `NOT_FOUND: no member named worker-9`).
    #[error("{code:?}: {message}")]
    Status {
        /// The gRPC code.
        code: Code,
        /// The master's explanation.
        message: String,
    },
    /// Not connected to the master right now (the SDK is reconnecting).
    #[error("not connected to the master: {0}")]
    Disconnected(String),
    /// The message is over the size limit; nothing was sent.
    #[error("message of {size} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Encoded size of the data.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// No reply or result arrived in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The member's settings are wrong (a bad `COHORT_*` variable).
    #[error("bad member configuration: {0}")]
    Config(String),
    /// The master could not be reached.
    #[error("cannot reach the master at {addr}: {message}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        message: String,
    },
}

impl Error {
    /// The gRPC code this error corresponds to.
    pub fn code(&self) -> Code {
        match self {
            Error::Status { code, .. } => *code,
            Error::Disconnected(_) | Error::Connect { .. } => Code::Unavailable,
            Error::TooLarge { .. } => Code::ResourceExhausted,
            Error::Timeout(_) => Code::DeadlineExceeded,
            Error::Config(_) => Code::InvalidArgument,
        }
    }
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Status {
            code: s.code(),
            message: s.message().to_string(),
        }
    }
}
