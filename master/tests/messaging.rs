//! In-process tests: the master library on 127.0.0.1:0, real SDK members
//! over real gRPC, and raw tonic clients for malformed input.

use cohort::{Error, Member, MemberBuilder, Role, Subscription, Target};
use cohort_proto::pb::{self, member_frame::Kind as Frame};
use std::time::Duration;
use tonic::Code;

mod common;
use common::*;

/// A cluster of one agent and three ready workers, each subscribed to
/// `test` and to the `fence` action used to prove nothing else arrived.
async fn cluster(m: &TestMaster) -> Vec<(Member, Subscription)> {
    let mut out = Vec::new();
    for (role, name) in [
        (Role::Agent, "agent"),
        (Role::Worker, "worker-1"),
        (Role::Worker, "worker-2"),
        (Role::Worker, "worker-3"),
    ] {
        let member = m.join(role, name).await;
        let sub = member.on("test");
        member.ready().await.expect("ready");
        out.push((member, sub));
    }
    out
}

/// After `sender` sent its test message, sends each member a `test` fence
/// and returns which members got the test message before their fence
/// (per-sender FIFO makes this exact, no sleeps).
async fn who_got(sender: &Member, members: &mut [(Member, Subscription)]) -> Vec<String> {
    let mut got = Vec::new();
    for (m, sub) in members.iter_mut() {
        sender
            .send_to(m.name(), "test", "fence")
            .await
            .expect("fence");
        loop {
            let msg = recv(sub).await;
            if msg.text() == Some("fence") {
                break;
            }
            assert_eq!(msg.from, sender.name());
            got.push(m.name());
        }
    }
    got
}

#[tokio::test]
async fn every_messenger_call_reaches_exactly_its_members() {
    let master = TestMaster::start(config()).await;
    let mut members = cluster(&master).await;
    let w1 = members[1].0.clone();
    let agent = members[0].0.clone();

    assert_eq!(w1.broadcast("test", "b").await.expect("broadcast"), 4);
    assert_eq!(
        who_got(&w1, &mut members).await,
        ["agent", "worker-1", "worker-2", "worker-3"]
    );

    assert_eq!(w1.send_to_app("test", "app").await.expect("app"), 3);
    assert_eq!(
        who_got(&w1, &mut members).await,
        ["worker-1", "worker-2", "worker-3"]
    );

    assert_eq!(agent.send_to_app("test", "app").await.expect("app"), 3);
    assert_eq!(
        who_got(&agent, &mut members).await,
        ["worker-1", "worker-2", "worker-3"]
    );

    assert_eq!(w1.send_to_agent("test", "agent").await.expect("agent"), 1);
    assert_eq!(who_got(&w1, &mut members).await, ["agent"]);

    assert_eq!(w1.send_to("worker-3", "test", "to").await.expect("to"), 1);
    assert_eq!(who_got(&w1, &mut members).await, ["worker-3"]);

    let id2 = members[2].0.instance_id();
    assert_eq!(w1.send_to(id2, "test", "by id").await.expect("by id"), 1);
    assert_eq!(who_got(&w1, &mut members).await, ["worker-2"]);

    assert_eq!(w1.send_random("test", "r").await.expect("random"), 1);
    assert_eq!(who_got(&w1, &mut members).await.len(), 1);

    master.stop().await;
}

#[tokio::test]
async fn send_random_rotates_over_ready_workers_only() {
    let master = TestMaster::start(config()).await;
    let mut members = cluster(&master).await;
    let not_ready = master.join(Role::Worker, "worker-4").await;
    let mut not_ready_sub = not_ready.on("test");
    let sender = members[0].0.clone();
    for _ in 0..6 {
        sender.send_random("test", "r").await.expect("random");
    }
    let got = who_got(&sender, &mut members).await;
    assert_eq!(
        got,
        [
            "worker-1", "worker-1", "worker-2", "worker-2", "worker-3", "worker-3"
        ]
    );
    sender
        .send_to("worker-4", "test", "fence")
        .await
        .expect("fence");
    assert_eq!(recv(&mut not_ready_sub).await.text(), Some("fence"));
    master.stop().await;
}

#[tokio::test]
async fn fifo_per_sender_under_concurrent_senders() {
    let master = TestMaster::start(config()).await;
    let receiver = master.join(Role::Worker, "sink").await;
    let mut sub = receiver.on("seq");
    const PER_SENDER: u32 = 300;
    let mut senders = Vec::new();
    for i in 0..3 {
        let m = master.join(Role::Worker, &format!("src-{i}")).await;
        senders.push(tokio::spawn(async move {
            for n in 0..PER_SENDER {
                m.post(Target::Member("sink".into()), "seq", n.to_string())
                    .await
                    .expect("post");
            }
            m
        }));
    }
    let mut next = std::collections::HashMap::new();
    for _ in 0..3 * PER_SENDER {
        let msg = recv(&mut sub).await;
        let n: u32 = msg.text().and_then(|t| t.parse().ok()).expect("number");
        let expected = next.entry(msg.from.clone()).or_insert(0u32);
        assert_eq!(n, *expected, "out of order from {}", msg.from);
        *expected += 1;
    }
    assert!(next.values().all(|n| *n == PER_SENDER));
    for s in senders {
        s.await.expect("sender");
    }
    master.stop().await;
}

#[tokio::test]
async fn request_reply_deadline_and_not_found() {
    let master = TestMaster::start(config()).await;
    let responder = master.join(Role::Worker, "responder").await;
    let silent = master.join(Role::Worker, "silent").await;
    let _ignored = silent.on("ping");
    let mut pings = responder.on("ping");
    tokio::spawn(async move {
        while let Some(msg) = pings.recv().await {
            assert!(msg.expects_reply());
            let answer = format!("pong:{}", msg.text().unwrap_or_default());
            msg.reply(answer).await.expect("reply");
        }
    });
    let caller = master.join(Role::Agent, "caller").await;
    let reply = caller
        .request(Target::Member("responder".into()), "ping", "1", WAIT)
        .await
        .expect("reply");
    assert_eq!(reply.text(), Some("pong:1"));
    assert_eq!(reply.from, "responder");

    let err = caller
        .request(
            Target::Member("silent".into()),
            "ping",
            "2",
            Duration::from_millis(300),
        )
        .await
        .expect_err("nobody answers");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");

    let err = caller
        .request(Target::Member("worker-9".into()), "ping", "3", WAIT)
        .await
        .expect_err("no such member");
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.to_string().contains("no member named worker-9"),
        "{err}"
    );

    let err = caller
        .send_to("worker-9", "x", "y")
        .await
        .expect_err("no such member");
    assert_eq!(err.code(), Code::NotFound);

    let err = caller
        .send_random("x", "y")
        .await
        .expect_err("nobody ready");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    master.stop().await;
}

#[tokio::test]
async fn sends_before_cluster_ready_arrive_right_after_it() {
    let mut cfg = config();
    cfg.expect.workers = 2;
    let master = TestMaster::start(cfg).await;
    let early = master.join(Role::Worker, "worker-1").await;
    early.ready().await.expect("ready");
    assert!(!early.is_cluster_ready());
    early
        .post(Target::Role(Role::Worker), "greeting", "sent before ready")
        .await
        .expect("post");

    let late = master.join(Role::Worker, "worker-2").await;
    let mut events = late.events();
    let mut greetings = late.on("greeting");
    late.ready().await.expect("ready");
    let msg = recv(&mut greetings).await;
    assert_eq!(msg.text(), Some("sent before ready"));
    assert!(late.is_cluster_ready(), "held messages follow ClusterReady");
    let saw_ready = std::iter::from_fn(|| events.try_recv().ok())
        .any(|e| matches!(e, cohort::Event::ClusterReady));
    assert!(saw_ready);
    master.stop().await;
}

#[tokio::test]
async fn bad_input_gets_clear_statuses_and_disturbs_nobody() {
    let master = TestMaster::start(config()).await;
    let bystander = master.join(Role::Worker, "bystander").await;
    let mut bystander_sub = bystander.on("still-there");

    let (_tx, r) = raw_join(
        &master,
        pb::MemberFrame {
            kind: Some(Frame::Ready(pb::Ready::default())),
        },
    )
    .await;
    let err = r.expect_err("ready before hello");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("must be hello"), "{}", err.message());

    let err = MemberBuilder::new(master.url(), Role::Worker)
        .name("bad name!")
        .join()
        .await
        .expect_err("invalid name");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // A name held by a live member is retried until the join timeout
    // (the holder may be on its way out), then refused.
    let err = MemberBuilder::new(master.url(), Role::Worker)
        .name("bystander")
        .join_timeout(Duration::from_millis(500))
        .join()
        .await
        .expect_err("duplicate");
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");

    let (_tx, r) = raw_join(
        &master,
        pb::MemberFrame {
            kind: Some(Frame::Hello(pb::Hello::default())),
        },
    )
    .await;
    assert_eq!(r.expect_err("no role").code(), Code::InvalidArgument);

    // An oversized frame ends only the offending stream.
    let (tx, r) = raw_join(&master, hello("big")).await;
    let mut stream = r.expect("joined");
    let big = pb::MemberFrame {
        kind: Some(Frame::Send(pb::Envelope {
            action: "x".into(),
            data: vec![7u8; 5 * 1024 * 1024].into(),
            target: Some(Target::All.into()),
            ..Default::default()
        })),
    };
    tx.send(big).await.expect("queue");
    let status = loop {
        match tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("answer in time")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("stream ended without a status"),
            Err(s) => break s,
        }
    };
    assert!(
        status.message().contains("too large") || status.message().contains("length"),
        "{status:?}"
    );
    let err = bystander
        .send(Target::All, "x", vec![0u8; 5 * 1024 * 1024])
        .await
        .expect_err("sdk refuses");
    assert!(matches!(err, Error::TooLarge { .. }));

    // The master and the bystander carry on.
    let other = master.join(Role::Worker, "other").await;
    assert_eq!(
        other
            .send_to("bystander", "still-there", "yes")
            .await
            .expect("send"),
        1
    );
    assert_eq!(recv(&mut bystander_sub).await.text(), Some("yes"));
    assert_eq!(names(&master).await, ["bystander", "other"]);
    master.stop().await;
}

#[tokio::test]
async fn silent_member_turns_suspect_then_is_evicted_and_its_name_freed() {
    let master = TestMaster::start(quick_health(Duration::from_millis(900))).await;
    let mut events = watch(&master).await;
    // A raw client that says hello and then nothing, like a hung process.
    let (_tx, r) = raw_join(&master, hello("mute")).await;
    let _stream = r.expect("joined");
    let healthy = master.join(Role::Worker, "healthy").await;

    let mut seen = Vec::new();
    while !seen.contains(&(pb::EventKind::Left, "mute".to_string())) {
        let ev = tokio::time::timeout(WAIT, events.message())
            .await
            .expect("event in time")
            .expect("stream ok")
            .expect("not ended");
        let name = ev.member.map(|m| m.name).unwrap_or_default();
        seen.push((pb::EventKind::try_from(ev.kind).expect("kind"), name));
    }
    let mute: Vec<_> = seen
        .iter()
        .filter(|(_, n)| n == "mute")
        .map(|(k, _)| *k)
        .collect();
    assert_eq!(
        mute,
        [
            pb::EventKind::Joined,
            pb::EventKind::Suspect,
            pb::EventKind::Left
        ]
    );
    assert!(!seen.contains(&(pb::EventKind::Suspect, "healthy".to_string())));
    // The evicted name can be taken again; the healthy member stayed.
    let again = master.join(Role::Worker, "mute").await;
    assert_eq!(again.name(), "mute");
    assert_eq!(healthy.send_to("mute", "x", "y").await.expect("send"), 1);
    master.stop().await;
}

#[tokio::test]
async fn suspect_name_can_be_taken_over_by_a_new_instance() {
    let master = TestMaster::start(quick_health(Duration::from_secs(60))).await;
    let mut control = master.control().await;
    let mut events = watch(&master).await;
    let (_tx, r) = raw_join(&master, hello("worker-1")).await;
    let _stream = r.expect("joined");
    // Silent: SUSPECT after 300 ms, not dead for a minute.
    until_event(&mut events, pb::EventKind::Suspect, "worker-1").await;
    let new = master.join(Role::Worker, "worker-1").await;
    let info = control
        .get_member(pb::GetMemberRequest {
            member: "worker-1".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(info.instance_id, new.instance_id());
    master.stop().await;
}

#[tokio::test]
async fn member_reregisters_after_the_master_restarts_on_the_same_address() {
    let master = TestMaster::start(config()).await;
    let addr = master.addr;
    let member = master.join(Role::Worker, "").await;
    let name = member.name();
    assert_eq!(name, "worker-1");
    let first_instance = member.instance_id();
    let mut events = member.events();
    member.ready().await.expect("ready");
    master.stop().await;

    let mut cfg = config();
    cfg.listen = addr;
    let master = TestMaster::start(cfg).await;
    let mut events_after = watch(&master).await;
    let reconnected = tokio::time::timeout(Duration::from_secs(40), async {
        loop {
            if let Ok(cohort::Event::Reconnected { instance_id }) = events.recv().await {
                return instance_id;
            }
        }
    })
    .await
    .expect("reconnected within the backoff cap");
    assert_ne!(reconnected, first_instance);
    let info = master
        .control()
        .await
        .get_member(pb::GetMemberRequest {
            member: name.clone(),
        })
        .await
        .expect("registered again under the same name")
        .into_inner();
    assert_eq!(info.instance_id, reconnected);
    // `ready()` is repeated on reconnect.
    until_event(&mut events_after, pb::EventKind::Ready, &name).await;
    member.close().await;
    master.stop().await;
}

#[tokio::test]
async fn control_send_takes_json_and_returns_the_reply_as_json() {
    let master = TestMaster::start(config()).await;
    let worker = master.join(Role::Worker, "worker-1").await;
    let mut sub = worker.on("sum");
    tokio::spawn(async move {
        while let Some(msg) = sub.recv().await {
            assert_eq!(msg.from, "control");
            assert_eq!(msg.text(), Some(r#"{"a":2,"b":3}"#));
            msg.reply(r#"{"sum":5}"#).await.expect("reply");
        }
    });
    let json = cohort_master::json::from_json_bytes(br#"{"a":2,"b":3}"#);
    let resp = master
        .control()
        .await
        .send(pb::SendRequest {
            action: "sum".into(),
            json,
            target: Some(Target::Member("worker-1".into()).into()),
            expect_reply: true,
            ..Default::default()
        })
        .await
        .expect("send")
        .into_inner();
    assert_eq!(resp.delivered, 1);
    let reply = resp.reply_json.expect("json reply");
    assert_eq!(
        cohort_master::json::to_json(&reply).to_string(),
        r#"{"sum":5}"#
    );

    let err = master
        .control()
        .await
        .send(pb::SendRequest {
            action: "sum".into(),
            target: Some(Target::Member("worker-9".into()).into()),
            ..Default::default()
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    master.stop().await;
}

#[tokio::test]
async fn a_replacement_waits_for_its_name_while_the_old_instance_leaves() {
    // A fixed name (the agent, a StatefulSet pod) whose old instance is
    // still terminating when the new one starts.
    let master = TestMaster::start(config()).await;
    let old = master.join(Role::Worker, "fixed").await;
    // The SDK's own account of its join (this test's runtime is this
    // thread, so its tasks log here).
    let logs = Logs::default();
    let _logging = tracing::subscriber::set_default(logs.subscriber());
    let new = tokio::spawn(
        MemberBuilder::new(master.url(), Role::Worker)
            .name("fixed")
            .join(),
    );
    // Refused while the name is held, it waits to try again.
    eventually("the join refused and retried", || {
        logs.text().contains("reconnecting after delay")
    })
    .await;
    assert!(!new.is_finished(), "joined while the name was held");
    old.close().await;
    let new = tokio::time::timeout(Duration::from_secs(20), new)
        .await
        .expect("joined once the name was free")
        .expect("task")
        .expect("join");
    assert_eq!(new.name(), "fixed");
    master.stop().await;
}

#[tokio::test]
async fn members_hear_the_events_of_whom_they_watch_and_workers_none_by_default() {
    use cohort::{Event, MemberEventKind};
    let master = TestMaster::start(config()).await;
    let quiet = master.join(Role::Worker, "quiet").await;
    let watcher = MemberBuilder::new(master.url(), Role::Worker)
        .name("watcher")
        .watch_member("target")
        .join()
        .await
        .expect("join");
    let agent = master.join(Role::Agent, "agent").await;
    let (mut quiet_events, mut watched, mut all) =
        (quiet.events(), watcher.events(), agent.events());
    for m in [&quiet, &watcher, &agent] {
        m.ready().await.expect("ready");
    }
    let target = master.join(Role::Worker, "target").await;
    target.ready().await.expect("ready");
    let other = master.join(Role::Worker, "other").await;
    other.ready().await.expect("ready");
    target.close().await;
    // An event about `name` of `kind` comes within 10 s; with `only`, no
    // event about another member comes before it.
    async fn expect(
        events: &mut tokio::sync::broadcast::Receiver<Event>,
        name: &str,
        kind: MemberEventKind,
        only: bool,
    ) {
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Ok(Event::Member(e)) = events.recv().await {
                    assert!(!only || e.name == name, "heard of {}", e.name);
                    if e.name == name && e.kind == kind {
                        return;
                    }
                }
            }
        });
        found
            .await
            .unwrap_or_else(|_| panic!("no {kind:?} event about {name}"));
    }
    expect(&mut watched, "target", MemberEventKind::Ready, true).await;
    expect(&mut watched, "target", MemberEventKind::Left, true).await;
    // The agent watches everyone by default.
    expect(&mut all, "other", MemberEventKind::Ready, false).await;
    expect(&mut all, "target", MemberEventKind::Left, false).await;
    // What the watcher heard was only about its target; the default worker
    // heard of nobody.
    let about = |events: &mut tokio::sync::broadcast::Receiver<Event>| {
        std::iter::from_fn(|| events.try_recv().ok())
            .filter_map(|e| match e {
                Event::Member(m) => Some(m.name),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert!(about(&mut watched).iter().all(|n| n == "target"));
    assert_eq!(about(&mut quiet_events), Vec::<String>::new());
    master.stop().await;
}

/// Log lines written on this thread while its subscriber is set.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + use<> {
        let logs = self.clone();
        tracing_subscriber::fmt()
            .with_env_filter("cohort=debug")
            .with_writer(move || logs.clone())
            .finish()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
