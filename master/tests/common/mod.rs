//! What the in-process tests share: the master library on 127.0.0.1:0,
//! SDK members and raw Join streams.

#![allow(dead_code)] // each test file uses its own part

use cohort::{Member, MemberBuilder, Message, Role, Subscription};
use cohort_master::config::{Config, WorkerCount};
use cohort_proto::pb::{self, member_frame::Kind as Frame};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestMaster {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestMaster {
    pub async fn start(cfg: Config) -> TestMaster {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(cohort_master::run(listener, Vec::new(), cfg, async move {
            let _ = rx.await;
        }));
        TestMaster {
            addr,
            stop: Some(tx),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let result = tokio::time::timeout(WAIT, &mut self.task).await;
        result
            .expect("master stops in time")
            .expect("join")
            .expect("clean exit");
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn join(&self, role: Role, name: &str) -> Member {
        MemberBuilder::new(self.url(), role)
            .name(name)
            .join()
            .await
            .expect("join")
    }

    pub async fn control(&self) -> pb::control_client::ControlClient<tonic::transport::Channel> {
        pb::control_client::ControlClient::connect(self.url())
            .await
            .expect("control")
    }
}

impl Drop for TestMaster {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn config() -> Config {
    // Members here are the tests' own SDK clients: no local slots.
    let mut c = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Config::default()
    };
    c.agent.count = 0;
    c.worker.count = WorkerCount::Fixed(0);
    c
}

/// Polls `check` every 20 ms until it holds, or panics with `what` after
/// [`WAIT`].
pub async fn eventually(what: &str, check: impl Fn() -> bool) {
    let polled = async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(WAIT, polled)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

pub async fn recv(sub: &mut Subscription) -> Message {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("message in time")
        .expect("subscription open")
}

/// Opens a raw Join stream; returns the frame sender and the response.
pub async fn raw_join(
    master: &TestMaster,
    first: pb::MemberFrame,
) -> (
    mpsc::Sender<pb::MemberFrame>,
    Result<tonic::Streaming<pb::MasterFrame>, tonic::Status>,
) {
    let mut client = pb::membership_client::MembershipClient::connect(master.url())
        .await
        .expect("connect")
        .max_encoding_message_size(64 * 1024 * 1024);
    let (tx, rx) = mpsc::channel(8);
    tx.send(first).await.expect("queue");
    let r = client
        .join(ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner());
    (tx, r)
}

pub fn hello(name: &str) -> pb::MemberFrame {
    pb::MemberFrame {
        kind: Some(Frame::Hello(pb::Hello {
            role: pb::Role::Worker as i32,
            name: name.into(),
            ..Default::default()
        })),
    }
}

/// What `ListMembers` shows.
pub async fn members(master: &TestMaster) -> Vec<pb::MemberInfo> {
    master
        .control()
        .await
        .list_members(pb::ListMembersRequest::default())
        .await
        .expect("ListMembers works")
        .into_inner()
        .members
}

/// The names `ListMembers` shows, in its order.
pub async fn names(master: &TestMaster) -> Vec<String> {
    members(master).await.into_iter().map(|m| m.name).collect()
}

/// Watches the cluster's events until `member` has one of `kind`; panics
/// after 30 s.
pub async fn until_event(
    events: &mut tonic::Streaming<pb::ClusterEvent>,
    kind: pb::EventKind,
    member: &str,
) -> pb::ClusterEvent {
    let wanted = async {
        loop {
            let ev = events
                .message()
                .await
                .expect("event stream healthy")
                .expect("event stream open");
            if ev.kind == kind as i32 && ev.member.as_ref().is_some_and(|m| m.name == member) {
                return ev;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wanted)
        .await
        .unwrap_or_else(|_| panic!("no {kind:?} event for {member} within 30 s"))
}

/// The cluster's events from now on (after the current state).
pub async fn watch(master: &TestMaster) -> tonic::Streaming<pb::ClusterEvent> {
    master
        .control()
        .await
        .watch_events(pb::WatchEventsRequest {})
        .await
        .expect("WatchEvents")
        .into_inner()
}

/// The test config with heartbeats every 100 ms, SUSPECT after 300 ms and
/// eviction after `dead_after`.
pub fn quick_health(dead_after: Duration) -> Config {
    let mut cfg = config();
    cfg.health.heartbeat_interval = Duration::from_millis(100);
    cfg.health.suspect_after = Duration::from_millis(300);
    cfg.health.dead_after = dead_after;
    cfg
}
