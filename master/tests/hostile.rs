//! Raw clients sending what the SDK never would: oversized hello fields,
//! replies to requests they were not asked, names that pose as other
//! identities. Each is refused with a clear status and hurts nobody else.

use cohort::{Role, Target};
use cohort_proto::pb::{self, master_frame::Kind as In, member_frame::Kind as Frame};
use tonic::Code;

mod common;
use common::*;

fn hello_with(name: &str, edit: impl FnOnce(&mut pb::Hello)) -> pb::MemberFrame {
    let mut h = pb::Hello {
        role: pb::Role::Worker as i32,
        name: name.into(),
        ..Default::default()
    };
    edit(&mut h);
    pb::MemberFrame {
        kind: Some(Frame::Hello(h)),
    }
}

async fn refused(master: &TestMaster, hello: pb::MemberFrame) -> tonic::Status {
    let (_tx, response) = raw_join(master, hello).await;
    match response {
        Err(status) => status,
        Ok(mut stream) => stream
            .message()
            .await
            .expect_err("the master refuses this hello"),
    }
}

#[tokio::test]
async fn oversized_hello_fields_are_refused_and_break_nothing() {
    let master = TestMaster::start(config()).await;
    let big = "h".repeat(3 * 1024 * 1024);
    let cases: Vec<(pb::MemberFrame, &str)> = vec![
        (
            hello_with("big-host", |h| h.host = big.clone()),
            "hello.host is 3145728 bytes: at most 255",
        ),
        (
            hello_with("big-version", |h| h.version = "v".repeat(129)),
            "hello.version",
        ),
        (
            hello_with("many-labels", |h| {
                h.labels = (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
            }),
            "hello.labels has 33 entries",
        ),
        (
            hello_with("big-label", |h| {
                h.labels.insert("k".into(), "v".repeat(256));
            }),
            "hello.labels[k]",
        ),
    ];
    for (hello, needle) in cases {
        let status = refused(&master, hello).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(needle), "{status:?}");
    }
    // Everything else goes on: joins, listings.
    let ok = master.join(Role::Worker, "ok").await;
    ok.ready().await.expect("ready");
    assert_eq!(names(&master).await, ["ok"]);
    master.stop().await;
}

#[tokio::test]
async fn oversized_ready_labels_end_only_that_stream() {
    let master = TestMaster::start(config()).await;
    let ok = master.join(Role::Worker, "ok").await;
    ok.ready().await.expect("ready");
    let big = "h".repeat(3 * 1024 * 1024);
    let cases: Vec<(&str, pb::Ready, &str)> = vec![
        (
            "big",
            pb::Ready {
                labels: [("http".to_string(), big)].into_iter().collect(),
            },
            "ready.labels[http] is 3145728 bytes: at most 255",
        ),
        (
            "many",
            pb::Ready {
                labels: (0..33).map(|i| (format!("k{i}"), "v".into())).collect(),
            },
            "ready.labels has 33 entries",
        ),
    ];
    for (name, ready, needle) in cases {
        let (tx, stream) = raw_join(&master, hello(name)).await;
        let mut stream = stream.expect("joins");
        tx.send(frame(Frame::Ready(ready))).await.expect("sent");
        let status = loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("{name}: the stream ended without a status"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(needle), "{status:?}");
    }
    // The SDK refuses them before sending; the member goes on.
    let big = [("http".to_string(), "x".repeat(256))]
        .into_iter()
        .collect();
    let err = ok.ready_with_labels(big).await.expect_err("refused");
    assert!(
        err.to_string().contains("ready.labels[http] is 256 bytes"),
        "{err}"
    );
    assert_eq!(names(&master).await, ["ok"]);
    master.stop().await;
}

#[tokio::test]
async fn names_cannot_pose_as_instance_ids_or_control() {
    let master = TestMaster::start(config()).await;
    let victim = master.join(Role::Worker, "victim").await;
    for name in [victim.instance_id(), ".".into(), "..".into()] {
        let status = refused(&master, hello(&name)).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().contains("invalid member name"),
            "{status:?}"
        );
    }
    let status = refused(&master, hello("control")).await;
    assert!(status.message().contains("reserved"), "{status:?}");
    // Addressed by its instance id, the victim still gets its messages.
    let mut sub = victim.on("x");
    let sender = master.join(Role::Worker, "sender").await;
    sender
        .send(Target::Member(victim.instance_id()), "x", "for the victim")
        .await
        .expect("delivered");
    assert_eq!(recv(&mut sub).await.text(), Some("for the victim"));
    master.stop().await;
}

/// Reads a raw member's stream until `pick` takes a frame.
async fn next_frame<T>(
    stream: &mut tonic::Streaming<pb::MasterFrame>,
    pick: impl Fn(In) -> Option<T>,
) -> T {
    loop {
        let frame = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("a frame in time")
            .expect("stream ok")
            .expect("stream open");
        if let Some(t) = frame.kind.and_then(&pick) {
            return t;
        }
    }
}

async fn next_delivery(stream: &mut tonic::Streaming<pb::MasterFrame>) -> pb::Envelope {
    next_frame(stream, |k| match k {
        In::Deliver(env) => Some(env),
        _ => None,
    })
    .await
}

async fn next_result(stream: &mut tonic::Streaming<pb::MasterFrame>) -> pb::SendResult {
    next_frame(stream, |k| match k {
        In::SendResult(r) => Some(r),
        _ => None,
    })
    .await
}

fn reply(reply_to: &str, data: &str) -> pb::MemberFrame {
    pb::MemberFrame {
        kind: Some(Frame::Reply(pb::Envelope {
            id: "spoof".into(),
            action: "answer".into(),
            reply_to: reply_to.into(),
            data: data.as_bytes().to_vec().into(),
            ..Default::default()
        })),
    }
}

#[tokio::test]
async fn only_the_member_asked_can_answer_a_request() {
    let master = TestMaster::start(config()).await;
    let (b_tx, b) = raw_join(&master, hello("b")).await;
    let mut b = b.expect("b joins");
    let (c_tx, c) = raw_join(&master, hello("c")).await;
    let mut c = c.expect("c joins");
    let a = master.join(Role::Agent, "a").await;

    // From a member.
    let asking = {
        let a = a.clone();
        tokio::spawn(async move {
            a.request(Target::Member("b".into()), "q", "?", WAIT)
                .await
                .map(|m| m.text().map(str::to_string))
        })
    };
    let request = next_delivery(&mut b).await;
    assert_ne!(request.id, "r1", "request ids are not guessable");
    // C learned (or guessed) the id and answers first.
    c_tx.send(reply(&request.id, "from c")).await.expect("send");
    let spoofed = next_result(&mut c).await;
    assert_eq!(spoofed.code, Code::NotFound as i32, "{spoofed:?}");
    b_tx.send(reply(&request.id, "from b")).await.expect("send");
    let answer = asking.await.expect("join").expect("answered");
    assert_eq!(answer.as_deref(), Some("from b"));

    // From Control/Send.
    let mut control = master.control().await;
    let asking = tokio::spawn(async move {
        control
            .send(pb::SendRequest {
                action: "q".into(),
                target: Some(Target::Member("b".into()).into()),
                expect_reply: true,
                timeout: Some(cohort_proto::time::duration(
                    std::time::Duration::from_secs(10),
                )),
                ..Default::default()
            })
            .await
    });
    let request = next_delivery(&mut b).await;
    c_tx.send(reply(&request.id, "from c")).await.expect("send");
    assert_eq!(next_result(&mut c).await.code, Code::NotFound as i32);
    b_tx.send(reply(&request.id, "from b")).await.expect("send");
    let answer = asking.await.expect("join").expect("answered").into_inner();
    assert_eq!(answer.reply.expect("reply").data, "from b".as_bytes());
    master.stop().await;
}

fn frame(kind: Frame) -> pb::MemberFrame {
    pb::MemberFrame { kind: Some(kind) }
}

/// A plain envelope from a raw member, with an ack wanted.
fn plain(id: &str, target: Target, edit: impl FnOnce(&mut pb::Envelope)) -> pb::Envelope {
    let mut env = pb::Envelope {
        id: id.into(),
        action: "answer".into(),
        data: "forged".as_bytes().to_vec().into(),
        target: Some(target.into()),
        ack: true,
        ..Default::default()
    };
    edit(&mut env);
    env
}

type Frames = tokio::sync::mpsc::Sender<pb::MemberFrame>;

/// Sends `frame` from a raw member and checks that the master refuses it
/// with INVALID_ARGUMENT naming `needle`.
async fn refusal(
    tx: &Frames,
    stream: &mut tonic::Streaming<pb::MasterFrame>,
    frame: pb::MemberFrame,
    needle: &str,
) -> pb::SendResult {
    tx.send(frame).await.expect("send");
    let refused = next_result(stream).await;
    assert_eq!(refused.code, Code::InvalidArgument as i32, "{refused:?}");
    assert!(refused.message.contains(needle), "{refused:?}");
    refused
}

/// Sends a marker from C to B and checks it is B's next delivery: anything
/// forged before it would have come first (FIFO per sender).
async fn marker_is_next(c_tx: &Frames, b: &mut tonic::Streaming<pb::MasterFrame>) {
    let marker = plain("marker", Target::Member("b".into()), |e| {
        e.action = "marker".into();
    });
    c_tx.send(frame(Frame::Send(marker))).await.expect("send");
    let env = next_delivery(b).await;
    assert_eq!(
        env.action, "marker",
        "nothing forged was delivered first: {env:?}"
    );
}

#[tokio::test]
async fn a_plain_send_never_passes_as_a_reply() {
    let master = TestMaster::start(config()).await;
    // B, the one ready worker, answers requests to a worker; C (joined, not
    // ready, so never picked) forges; A asks.
    let (b_tx, b) = raw_join(&master, hello("b")).await;
    let mut b = b.expect("b joins");
    b_tx.send(frame(Frame::Ready(pb::Ready::default())))
        .await
        .expect("ready");
    let (c_tx, c) = raw_join(&master, hello("c")).await;
    let mut c = c.expect("c joins");
    let a = master.join(Role::Agent, "a").await;
    a.ready().await.expect("ready");
    // A message from A shows C the shape of A's ids.
    a.send_to("c", "hi", "from a").await.expect("sent");
    let seen = next_delivery(&mut c).await;
    assert_eq!(seen.from, "a");
    let asking = {
        let a = a.clone();
        tokio::spawn(async move {
            a.request(Target::Random(Role::Worker), "q", "?", WAIT)
                .await
                .map(|m| (m.from.clone(), m.text().map(str::to_string)))
        })
    };
    let request = next_delivery(&mut b).await;
    assert!(request.expects_reply);
    // C aims at A's pending request: the id A's last message had, the ones
    // a counter would give next, and the id the master gave the request.
    let mut guesses = vec![seen.id.clone(), request.id.clone()];
    if let Some((prefix, n)) = seen.id.rsplit_once('-')
        && let Ok(n) = n.parse::<u64>()
    {
        guesses.extend((1..=3).map(|k| format!("{prefix}-{}", n + k)));
    }
    for (i, guess) in guesses.iter().enumerate() {
        for target in [Target::Member("a".into()), Target::All] {
            let id = format!("forged-{i}-{target:?}");
            let env = plain(&id, target, |e| e.reply_to = guess.clone());
            let refused = refusal(&c_tx, &mut c, frame(Frame::Send(env)), "reply_to").await;
            assert_eq!(refused.id, id);
        }
        // In a batch, and as a request to A, the same.
        let batch = pb::Envelopes {
            envelopes: vec![plain(&format!("batched-{i}"), Target::All, |e| {
                e.reply_to = guess.clone();
            })],
        };
        refusal(&c_tx, &mut c, frame(Frame::SendBatch(batch)), "reply_to").await;
        let req = plain(&format!("req-{i}"), Target::Member("a".into()), |e| {
            e.reply_to = guess.clone();
            e.ack = false;
        });
        refusal(&c_tx, &mut c, frame(Frame::Request(req)), "reply_to").await;
    }
    // Nothing forged reached B (the broadcasts' other receiver) ahead of a
    // real message; and A's request gets the real reply, from B.
    marker_is_next(&c_tx, &mut b).await;
    b_tx.send(reply(&request.id, "from b")).await.expect("send");
    let (from, text) = asking.await.expect("join").expect("answered");
    assert_eq!((from.as_str(), text.as_deref()), ("b", Some("from b")));
    assert_eq!(a.dropped_messages(), 0, "A was handed nothing forged");
    master.stop().await;
}

#[tokio::test]
async fn expects_reply_outside_a_request_is_refused_and_reaches_nobody() {
    let master = TestMaster::start(config()).await;
    let (_b_tx, b) = raw_join(&master, hello("b")).await;
    let mut b = b.expect("b joins");
    let (c_tx, c) = raw_join(&master, hello("c")).await;
    let mut c = c.expect("c joins");
    for target in [
        Target::Member("b".into()),
        Target::Role(Role::Worker),
        Target::All,
    ] {
        let env = plain("ask", target, |e| e.expects_reply = true);
        refusal(&c_tx, &mut c, frame(Frame::Send(env)), "expects_reply").await;
    }
    marker_is_next(&c_tx, &mut b).await;
    master.stop().await;
}

#[tokio::test]
async fn request_timeouts_and_claimed_pids_cannot_be_abused() {
    let master = TestMaster::start(config()).await;
    let (_b_tx, b) = raw_join(&master, hello("b")).await;
    let mut b = b.expect("b joins");
    let (c_tx, c) = raw_join(&master, hello("c")).await;
    let mut c = c.expect("c joins");
    // A wait past any deadline the master can keep.
    let forever = plain("forever", Target::Member("b".into()), |e| {
        e.timeout = Some(prost_types::Duration {
            seconds: i64::MAX,
            nanos: 0,
        });
    });
    refusal(
        &c_tx,
        &mut c,
        frame(Frame::Request(forever)),
        "at most 3600 s",
    )
    .await;

    // Two members claim the same pid@host: neither gets what was meant for
    // "the" one.
    let claim = |name: &str| hello_with(name, |h| (h.pid, h.host) = (4242, "h".into()));
    let (_d_tx, d) = raw_join(&master, claim("d")).await;
    let _d = d.expect("d joins");
    let (_e_tx, e) = raw_join(&master, claim("e")).await;
    let _e = e.expect("e joins");
    let to_pid = plain("to-pid", Target::Member("4242@h".into()), |_| {});
    refusal(
        &c_tx,
        &mut c,
        frame(Frame::Send(to_pid)),
        "matches 2 members",
    )
    .await;
    // The master serves on.
    marker_is_next(&c_tx, &mut b).await;
    master.stop().await;
}

#[tokio::test]
async fn a_held_message_keeps_its_real_sender_after_the_sender_leaves() {
    let mut cfg = config();
    cfg.expect.workers = 2;
    let master = TestMaster::start(cfg).await;
    let listener = master.join(Role::Worker, "listener").await;
    let mut got = listener.on("held");
    listener.ready().await.expect("ready");
    // Before ClusterReady, C sends with a `from` of its choosing, then
    // leaves while the message is held.
    let (c_tx, c) = raw_join(&master, hello("c")).await;
    let mut c = c.expect("c joins");
    let env = plain("held-1", Target::Member("listener".into()), |e| {
        e.action = "held".into();
        e.from = "listener".into();
        e.ack = false;
    });
    c_tx.send(frame(Frame::Send(env))).await.expect("send");
    // A second hello ends C's stream once everything before it was taken.
    let mut events = watch(&master).await;
    c_tx.send(hello("c")).await.expect("send");
    let ended = loop {
        match tokio::time::timeout(WAIT, c.message())
            .await
            .expect("in time")
        {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ends with a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::FailedPrecondition, "{ended:?}");
    until_event(&mut events, pb::EventKind::Left, "c").await;
    // The second worker makes the cluster ready: the held message goes out
    // under the name of the member that sent it.
    let second = master.join(Role::Worker, "second").await;
    second.ready().await.expect("ready");
    let msg = recv(&mut got).await;
    assert_eq!(msg.from, "c", "the master stamps the sender, even gone");
    master.stop().await;
}
