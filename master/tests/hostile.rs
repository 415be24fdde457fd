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
    let a = master.join(Role::Worker, "a").await;

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
