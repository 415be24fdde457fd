//! Why a message could not be routed, as a domain error; the gRPC status a
//! sender or a `Control/Send` caller sees is made from it at the edge.

use cohort_proto::{MemberName, Role};
use tonic::{Code, Status};

/// Why routing failed. The messages tell the sender what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The envelope's target does not parse.
    #[error("{0}")]
    BadTarget(String),
    /// The envelope has no action.
    #[error("envelope.action is empty: name what the message is about")]
    EmptyAction,
    /// A request aimed at more than one member.
    #[error("a request goes to one member: use target.member or target.random")]
    RequestToMany,
    /// No member by that name, instance id or `pid@host`.
    #[error(
        "no member named {0}: list them with Control/ListMembers (a name, an instance id or pid@host)"
    )]
    NotFound(String),
    /// `send_random` found no ready member of the role.
    #[error("no ready {0} to receive it")]
    NoneReady(Role),
    /// The receiver's queue is full (`overflow = "drop"`).
    #[error("{0} is not keeping up (its queue is full); the message was dropped")]
    Full(MemberName),
    /// The receiver's stream is closing.
    #[error("{0} is leaving; the message was dropped")]
    Leaving(MemberName),
    /// The receiver was disconnected while the message waited for room.
    #[error("{0} was disconnected before it took the message; it was dropped")]
    CutOff(MemberName),
    /// Too many requests wait for replies.
    #[error("{0} requests are already waiting for replies; retry later")]
    TooManyPending(usize),
    /// Too many messages are held before ClusterReady.
    #[error(
        "{0} messages are already held until the cluster is ready; try again after ClusterReady"
    )]
    HeldFull(usize),
    /// A reply to no request this member was asked.
    #[error("no request {0:?} is waiting for a reply: it timed out or was answered already")]
    NoSuchRequest(String),
    /// The requester left before its reply.
    #[error("the requester has left; the reply was dropped")]
    RequesterLeft,
    /// No reply came in time.
    #[error("no reply before the request's deadline")]
    Deadline,
}

impl From<RouteError> for Status {
    fn from(e: RouteError) -> Status {
        let code = match &e {
            RouteError::BadTarget(_) | RouteError::EmptyAction | RouteError::RequestToMany => {
                Code::InvalidArgument
            }
            RouteError::NotFound(_) | RouteError::NoSuchRequest(_) => Code::NotFound,
            RouteError::NoneReady(_)
            | RouteError::Full(_)
            | RouteError::Leaving(_)
            | RouteError::CutOff(_)
            | RouteError::RequesterLeft => Code::Unavailable,
            RouteError::TooManyPending(_) | RouteError::HeldFull(_) => Code::ResourceExhausted,
            RouteError::Deadline => Code::DeadlineExceeded,
        };
        Status::new(code, e.to_string())
    }
}
