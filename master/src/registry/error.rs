//! Why a message could not be routed, as a domain error; the gRPC status a
//! sender or a `Control/Send` caller sees is made from it at the edge.

use cohort_proto::{MemberName, Role};
use std::time::Duration;
use tonic::{Code, Status};

/// The longest a request may wait for its reply.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(3600);

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
    #[error("a request goes to one member: use target.member, target.random or target.random_app")]
    RequestToMany,
    /// No member by that name, instance id or `pid@host`.
    #[error(
        "no member named {0}: list them with Control/ListMembers (a name, an instance id or pid@host)"
    )]
    NotFound(String),
    /// `send_random` found no ready member of the role.
    #[error("no ready {0} to receive it")]
    NoneReady(Role),
    /// A random-of-app target found no ready member of the app.
    #[error("no ready member of app {0} to receive it")]
    NoneReadyInApp(String),
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
    /// A send, broadcast or request carried `reply_to`: only the master's
    /// reply path delivers it, so no member can pose as another's answer.
    #[error(
        "envelope.reply_to is set only on replies: answer a request with a reply frame; a send, broadcast or request that carries it is refused"
    )]
    ReplyToOutsideReply,
    /// A plain send or broadcast carried `expects_reply`.
    #[error(
        "envelope.expects_reply is set only on requests: send a request frame (one member or one of a role) to get a reply"
    )]
    ExpectsReplyOnSend,
    /// A request asked for a longer wait than the master keeps.
    #[error("envelope.timeout is {0} s; a request waits at most {max} s", max = MAX_REQUEST_TIMEOUT.as_secs())]
    TimeoutTooLong(u64),
    /// `pid@host` names more than one member (hosts and pids are what the
    /// members say they are).
    #[error("{0} matches {1} members: address one by name or instance id")]
    Ambiguous(String, usize),
}

/// Why a member's stream ends while it reads: the member must join again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The registry no longer has this instance.
    #[error("this member was evicted; reconnect and join again")]
    Evicted,
    /// A second hello on a stream.
    #[error("hello may only be the first frame of a Join stream")]
    HelloAgain,
    /// This master's leadership lapsed ([ha]): it routes nothing more.
    #[error("this master no longer leads: join the leader (COHORT_MASTER lists every master)")]
    NotLeading,
    /// A frame's labels are over their bounds.
    #[error("{0}")]
    BadLabels(String),
}

impl From<StreamError> for Status {
    fn from(e: StreamError) -> Status {
        let code = match e {
            StreamError::Evicted | StreamError::NotLeading => Code::Unavailable,
            StreamError::HelloAgain => Code::FailedPrecondition,
            StreamError::BadLabels(_) => Code::InvalidArgument,
        };
        Status::new(code, e.to_string())
    }
}

impl From<RouteError> for Status {
    fn from(e: RouteError) -> Status {
        let code = match &e {
            RouteError::BadTarget(_)
            | RouteError::EmptyAction
            | RouteError::RequestToMany
            | RouteError::ReplyToOutsideReply
            | RouteError::ExpectsReplyOnSend
            | RouteError::TimeoutTooLong(_)
            | RouteError::Ambiguous(..) => Code::InvalidArgument,
            RouteError::NotFound(_) | RouteError::NoSuchRequest(_) => Code::NotFound,
            RouteError::NoneReady(_)
            | RouteError::NoneReadyInApp(_)
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
