//! The gate in front of `Membership` and `Control` on a master of several:
//! a standby refuses them (but `Control/ClusterInfo`) with `UNAVAILABLE`
//! and the leader's address in the `cohort-leader` metadata key, so callers
//! follow; a leader whose fence is down refuses the same way.

use super::election::Election;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;

/// The metadata key naming the leader's address (SPEC §9b).
pub(crate) const LEADER_KEY: &str = "cohort-leader";
/// Answered on a standby too: it tells callers where the leader is.
const OPEN_PATH: &str = "/cohort.v1.Control/ClusterInfo";

/// What this server is in the election.
#[derive(Clone)]
pub(crate) struct Gate {
    election: Election,
    leading: bool,
}

impl Gate {
    /// The gate of a server that leads (`leading`) or stands by.
    pub(crate) fn new(election: Election, leading: bool) -> Gate {
        Gate { election, leading }
    }

    /// Wraps `inner` behind this gate.
    pub(crate) fn wrap<S>(&self, inner: S) -> Gated<S> {
        Gated {
            gate: self.clone(),
            inner,
        }
    }

    /// Whether a call may pass now.
    fn open(&self, path: &str) -> bool {
        path == OPEN_PATH || (self.leading && self.election.fence().holds())
    }

    /// The refusal a caller gets: waits up to 1.5 lease TTLs for a leader
    /// to be known, so a caller that comes during an election is sent on
    /// rather than turned away (to this very master when it has just been
    /// elected: its leader phase starts in a moment).
    async fn refusal(self) -> tonic::Status {
        let mut watch = self.election.watch();
        let (me, was_leading) = (self.election.advertised().to_string(), self.leading);
        let known = move |v: &super::election::View| match &v.leader {
            Some(l) if *l != me => true,
            Some(_) => v.leading && !was_leading,
            None => false,
        };
        // An election after a leader died takes one TTL and a read of etcd
        // (a quarter TTL): wait that long and a little more.
        let hold = self.election.lease_ttl() * 3 / 2;
        // A master cut off from etcd knows nothing worth waiting for.
        if self.election.view().connected {
            let _ = tokio::time::timeout(hold, watch.wait_for(known)).await;
        }
        refuse(&self.election, self.leading)
    }
}

/// `UNAVAILABLE` naming the leader, if one is known (this master itself
/// only when it was elected after this server's phase began:
/// `phase_leading` false).
fn refuse(election: &Election, phase_leading: bool) -> tonic::Status {
    let view = election.view();
    let me = election.advertised();
    let elected_since = view.leading && !phase_leading;
    match view.leader.filter(|l| l != me || elected_since) {
        Some(leader) => {
            let mut status = tonic::Status::unavailable(format!(
                "this master is a standby: the leader is {leader} (term {}); \
                 follow the cohort-leader metadata",
                view.term
            ));
            if let Ok(value) = leader.parse() {
                status.metadata_mut().insert(LEADER_KEY, value);
            }
            status
        }
        None if !view.connected => tonic::Status::unavailable(
            "this master cannot reach etcd, so it does not know which master leads: try another master",
        ),
        None => tonic::Status::unavailable(
            "no master leads at the moment (an election is in progress): try again or another master",
        ),
    }
}

/// A service behind a [`Gate`].
#[derive(Clone)]
pub(crate) struct Gated<S> {
    gate: Gate,
    inner: S,
}

impl<S: NamedService> NamedService for Gated<S> {
    const NAME: &'static str = S::NAME;
}

type Answer = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S, B> tower::Service<http::Request<Body>> for Gated<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<B>, Error = Infallible>,
    S::Future: Send + 'static,
    B: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Answer {
        if self.gate.open(req.uri().path()) {
            let answer = self.inner.call(req);
            return Box::pin(async move { Ok(answer.await?.map(Body::new)) });
        }
        let gate = self.gate.clone();
        Box::pin(async move { Ok(gate.refusal().await.into_http()) })
    }
}
