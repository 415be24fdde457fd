//! The master through gRPC, as tests ask it: Control clients, the member
//! list and its readiness (plain and TLS), and the event feed.

use crate::{WAIT, eventually_async};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A Control client for the master at `addr`.
pub async fn control(
    addr: &str,
) -> cohort_proto::pb::control_client::ControlClient<tonic::transport::Channel> {
    cohort_proto::pb::control_client::ControlClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to Control")
}

/// The real address of the master's shared listener `http` (port 0 is
/// resolved by the master).
pub async fn http_addr(addr: &str) -> String {
    let info = control(addr)
        .await
        .cluster_info(cohort_proto::pb::ClusterInfoRequest {})
        .await
        .expect("ClusterInfo")
        .into_inner();
    info.listeners
        .into_iter()
        .find(|l| l.name == "http")
        .map(|l| l.addr)
        .expect("an http listener")
}

/// Every member the master lists.
pub async fn members(addr: &str) -> Vec<cohort_proto::pb::MemberInfo> {
    members_with(addr, None).await
}

/// Every member the master lists, asking with a bearer token.
pub async fn members_with(addr: &str, token: Option<&str>) -> Vec<cohort_proto::pb::MemberInfo> {
    let mut request = tonic::Request::new(cohort_proto::pb::ListMembersRequest::default());
    cohort_proto::auth::Bearer::new(token)
        .expect("token fits a header")
        .apply(&mut request);
    control(addr)
        .await
        .list_members(request)
        .await
        .expect("ListMembers")
        .into_inner()
        .members
}

/// Waits until the master lists exactly `names`, each READY, and returns them.
pub async fn wait_ready(addr: &str, names: &[&str]) -> Vec<cohort_proto::pb::MemberInfo> {
    wait_ready_with(addr, names, None).await
}

/// [`wait_ready`] against a master that wants a bearer token.
pub async fn wait_ready_with(
    addr: &str,
    names: &[&str],
    token: Option<&str>,
) -> Vec<cohort_proto::pb::MemberInfo> {
    let ready = cohort_proto::pb::MemberState::Ready as i32;
    eventually_async(&format!("{names:?} READY"), || async {
        let m = members_with(addr, token).await;
        let listed: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        (listed == names && m.iter().all(|m| m.state == ready)).then_some(m)
    })
    .await
}

/// [`wait_ready`] against a TLS master (`ca` signed its certificate;
/// `identity` is a client certificate and key for mTLS).
pub async fn wait_ready_tls(
    addr: &str,
    names: &[&str],
    ca: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
) -> Vec<cohort_proto::pb::MemberInfo> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("ca")));
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(c).expect("cert"),
            std::fs::read(k).expect("key"),
        ));
    }
    // Each try is bounded, so one that stalls is tried again.
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .expect("url")
        .tls_config(tls.timeout(Duration::from_secs(5)))
        .expect("tls")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let ready = cohort_proto::pb::MemberState::Ready as i32;
    eventually_async(&format!("{names:?} READY over TLS"), || {
        let endpoint = endpoint.clone();
        async move {
            let channel = endpoint.connect().await.ok()?;
            let mut client = cohort_proto::pb::control_client::ControlClient::new(channel);
            let m = client
                .list_members(cohort_proto::pb::ListMembersRequest::default())
                .await
                .ok()?
                .into_inner()
                .members;
            let listed: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
            (listed == names && m.iter().all(|m| m.state == ready)).then_some(m)
        }
    })
    .await
}

/// Subscribes to the master's `WatchEvents` (current state first).
pub async fn watch(addr: &str) -> tonic::Streaming<cohort_proto::pb::ClusterEvent> {
    control(addr)
        .await
        .watch_events(cohort_proto::pb::WatchEventsRequest {})
        .await
        .expect("WatchEvents")
        .into_inner()
}

/// The next event, or a panic after [`WAIT`].
pub async fn next_event(
    events: &mut tonic::Streaming<cohort_proto::pb::ClusterEvent>,
) -> cohort_proto::pb::ClusterEvent {
    tokio::time::timeout(WAIT, events.message())
        .await
        .expect("an event in time")
        .expect("the event stream is healthy")
        .expect("the event stream is open")
}
