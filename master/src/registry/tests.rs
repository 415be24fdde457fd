//! The registry on its own, with an injected clock: no sockets, no sleeps.

use super::watching::Watch;
use super::*;
use crate::config::Config;
use cohort_proto::Target;
use tokio_stream::StreamExt;
use tonic::Code;

const MS: Duration = Duration::from_millis(1);

mod budget;
mod subscriptions;

fn registry(expect_workers: u32) -> (Registry, tokio::sync::mpsc::Receiver<Notice>) {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    (Registry::new(config(expect_workers), Some(tx)), rx)
}

fn config(expect_workers: u32) -> RegistryConfig {
    let c = Config::default();
    RegistryConfig {
        health: c.health,
        messaging: c.messaging,
        expect: Expect {
            agents: 0,
            workers: expect_workers,
            apps: Vec::new(),
        },
        join_timeout: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(30),
        local_agent: false,
        max_rss: MaxRss(HashMap::from([("worker".to_string(), 100 << 20)])),
        health_checks: HashMap::new(),
        max_members: 0,
        leadership: None,
    }
}

fn hello(name: &str) -> pb::Hello {
    pb::Hello {
        role: pb::Role::Worker as i32,
        name: name.into(),
        pid: 7,
        host: "h".into(),
        ..Default::default()
    }
}

fn join(r: &Registry, name: &str, now: Instant) -> Joined {
    r.register(hello(name), Via::Network, now).expect("joins")
}

fn ready(r: &Registry, j: &Joined, now: Instant) {
    r.on_frame(&j.instance_id, In::Ready(pb::Ready::default()), now)
        .expect("ready");
}

/// The counts kept as members change agree with a recount.
fn counts_agree(r: &Registry) {
    let st = r.lock();
    assert_eq!(st.counts, Counts::of(&st.members));
}

fn envelope(action: &str, target: Target) -> pb::Envelope {
    pb::Envelope {
        id: format!("id-{action}"),
        action: action.into(),
        target: Some(target.into()),
        ..Default::default()
    }
}

/// Every frame queued for a member right now, as short words.
async fn frames(j: &mut Joined) -> Vec<String> {
    let mut seen = Vec::new();
    while let Ok(Some(item)) = tokio::time::timeout(Duration::ZERO, j.stream.next()).await {
        seen.push(
            match item.map(|f| crate::outbound::tests::decoded(f).kind) {
                Ok(Some(Out::Welcome(_))) => "welcome".to_string(),
                Ok(Some(Out::Deliver(e))) if !e.reply_to.is_empty() => {
                    format!("reply {} to {} from {}", e.action, e.reply_to, e.from)
                }
                Ok(Some(Out::Deliver(e))) => format!("{} from {}", e.action, e.from),
                Ok(Some(Out::ClusterReady(_))) => "cluster ready".into(),
                Ok(Some(Out::MemberEvent(e))) => format!(
                    "event {:?} {}",
                    pb::EventKind::try_from(e.kind).unwrap_or_default(),
                    e.member.map(|m| m.name).unwrap_or_default()
                ),
                Ok(Some(Out::MemberEvents(b))) => format!(
                    "events {}",
                    b.events
                        .iter()
                        .map(|e| format!(
                            "{:?} {}",
                            pb::EventKind::try_from(e.kind).unwrap_or_default(),
                            e.member
                                .as_ref()
                                .map(|m| m.name.as_str())
                                .unwrap_or_default()
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Ok(Some(Out::SendResult(r))) => {
                    format!("result {} {:?}", r.id, Code::from_i32(r.code))
                }
                Ok(Some(Out::HeartbeatAck(_))) => "ack".into(),
                Ok(Some(Out::Settings(s))) => format!(
                    "heartbeat every {:?}",
                    span(s.heartbeat_interval.as_ref()).unwrap_or_default()
                ),
                Ok(Some(Out::Drain(d))) => format!(
                    "drain within {} ms",
                    cohort_proto::time::span(d.deadline.as_ref()).map_or(0, |d| d.as_millis())
                ),
                Ok(Some(Out::Error(e))) => format!("error {}", e.message),
                Ok(other) => format!("{other:?}"),
                Err(status) => format!("end {:?}", status.code()),
            },
        );
    }
    seen
}

#[tokio::test]
async fn targets_reach_exactly_their_members() {
    let (r, _) = registry(0);
    let t0 = Instant::now();
    let mut a = join(&r, "a", t0);
    let mut b = join(&r, "b", t0);
    let mut agent = r
        .register(
            pb::Hello {
                role: pb::Role::Agent as i32,
                ..hello("agent")
            },
            Via::Network,
            t0,
        )
        .expect("agent");
    for j in [&a, &b, &agent] {
        ready(&r, j, t0);
    }
    for j in [&mut a, &mut b, &mut agent] {
        frames(j).await;
    }
    type Row<'a> = (Target, [&'a str; 3]);
    let rows: [Row; 5] = [
        (Target::All, ["x from a", "x from a", "x from a"]),
        (Target::Role(Role::Worker), ["x from a", "x from a", ""]),
        (Target::Role(Role::Agent), ["", "", "x from a"]),
        (Target::Member("b".into()), ["", "x from a", ""]),
        (
            Target::Member(b.instance_id.to_string()),
            ["", "x from a", ""],
        ),
    ];
    for (target, expected) in rows {
        let stall = r
            .on_frame(&a.instance_id, In::Send(envelope("x", target.clone())), t0)
            .expect("routed");
        assert!(stall.is_none());
        let got = [
            frames(&mut a).await.join(","),
            frames(&mut b).await.join(","),
            frames(&mut agent).await.join(","),
        ];
        assert_eq!(got, expected, "{target:?}");
    }
}

#[tokio::test]
async fn messages_before_cluster_ready_are_held_then_delivered_in_order() {
    let (r, _) = registry(2);
    let t0 = Instant::now();
    let mut a = join(&r, "a", t0);
    ready(&r, &a, t0);
    for action in ["one", "two"] {
        r.on_frame(&a.instance_id, In::Send(envelope(action, Target::All)), t0)
            .expect("held");
    }
    let no_events = |seen: Vec<String>| -> Vec<String> {
        seen.into_iter()
            .filter(|f| !f.starts_with("event"))
            .collect()
    };
    assert_eq!(
        no_events(frames(&mut a).await),
        ["welcome"],
        "nothing before ready"
    );
    let mut b = join(&r, "b", t0);
    ready(&r, &b, t0 + MS);
    let both = ["cluster ready", "one from a", "two from a"];
    assert_eq!(
        no_events(frames(&mut b).await),
        [&["welcome"][..], &both].concat()
    );
    assert_eq!(no_events(frames(&mut a).await), both);
}

#[tokio::test]
async fn health_sweeps_by_the_injected_clock() {
    let (r, mut notices) = registry(0);
    let t0 = Instant::now();
    let h = Config::default().health;
    r.reserve("local", "s3cret");
    let local = r
        .register(
            pb::Hello {
                secret: "s3cret".into(),
                ..hello("local")
            },
            Via::LocalSocket,
            t0,
        )
        .expect("local joins");
    ready(&r, &local, t0);
    let never_ready = join(&r, "slow-starter", t0);
    let state = |name: &str| r.get(name).ok().map(|m| m.state);
    r.sweep(t0 + h.suspect_after - MS);
    assert_eq!(state("local"), Some(MemberState::Ready));
    r.sweep(t0 + h.suspect_after);
    assert_eq!(state("local"), Some(MemberState::Suspect));
    // Heard from again: ready, and the clock restarts from then.
    let t1 = t0 + h.suspect_after + MS;
    r.on_frame(
        &local.instance_id,
        In::Heartbeat(pb::Heartbeat::default()),
        t1,
    )
    .expect("heartbeat");
    assert_eq!(state("local"), Some(MemberState::Ready));
    r.sweep(t1 + h.dead_after);
    assert_eq!(state("local"), None, "evicted");
    match notices.try_recv() {
        Ok(Notice::Ready { .. }) => {}
        other => panic!("{other:?}"),
    }
    match notices.try_recv() {
        Ok(Notice::Evicted { name, reason, .. }) => {
            assert_eq!(name, "local");
            assert!(reason.contains("no heartbeat"), "{reason}");
        }
        other => panic!("the supervisor hears of it: {other:?}"),
    }
    assert_eq!(state("slow-starter"), None, "never ready in 30 s");
    drop(never_ready);
    counts_agree(&r);
}

#[tokio::test]
async fn a_reply_counts_only_from_the_instance_asked_and_requests_expire() {
    let (r, _) = registry(0);
    let t0 = Instant::now();
    let mut a = join(&r, "a", t0);
    let mut b = join(&r, "b", t0);
    let mut c = join(&r, "c", t0);
    for j in [&mut a, &mut b, &mut c] {
        frames(j).await;
    }
    let ask = |id: &str, timeout_ms: u64| pb::Envelope {
        id: id.into(),
        timeout: (timeout_ms > 0)
            .then(|| cohort_proto::time::duration(Duration::from_millis(timeout_ms))),
        ..envelope("q", Target::Member("b".into()))
    };
    r.on_frame(&a.instance_id, In::Request(ask("q1", 0)), t0)
        .expect("request");
    let rid = match b
        .stream
        .next()
        .await
        .and_then(|f| crate::outbound::tests::decoded(f.ok()?).kind)
    {
        Some(Out::Deliver(e)) => e.id,
        other => panic!("{other:?}"),
    };
    let answer = |id: &str| pb::Envelope {
        id: id.into(),
        action: "answer".into(),
        reply_to: rid.clone(),
        ..Default::default()
    };
    r.on_frame(&c.instance_id, In::Reply(answer("from-c")), t0)
        .expect("c");
    assert_eq!(frames(&mut c).await, ["result from-c NotFound"]);
    assert!(frames(&mut a).await.is_empty());
    r.on_frame(&b.instance_id, In::Reply(answer("from-b")), t0)
        .expect("b");
    assert_eq!(frames(&mut a).await, ["reply answer to q1 from b"]);

    r.on_frame(&a.instance_id, In::Request(ask("q2", 100)), t0)
        .expect("request");
    r.sweep(t0 + 99 * MS);
    assert!(frames(&mut a).await.is_empty());
    r.sweep(t0 + 100 * MS);
    assert_eq!(frames(&mut a).await, ["result q2 DeadlineExceeded"]);
}

#[tokio::test]
async fn a_drain_says_how_long_and_an_eviction_says_why() {
    let (r, _) = registry(0);
    let t0 = Instant::now();
    let mut a = join(&r, "a", t0);
    frames(&mut a).await;
    r.drain("a").expect("drain");
    assert_eq!(frames(&mut a).await[0], "drain within 30000 ms");
    r.sweep(t0 + Config::default().health.dead_after);
    let end = frames(&mut a).await;
    assert!(
        end[0].starts_with("error removed from the cluster: no heartbeat"),
        "{end:?}"
    );
    assert_eq!(end[1], "end Unavailable");
    counts_agree(&r);
}

#[tokio::test]
async fn a_member_over_max_rss_for_three_heartbeats_is_drained_and_replaced() {
    let (r, mut notices) = registry(0);
    let t0 = Instant::now();
    r.reserve("worker-1", "s");
    let mut j = r
        .register(
            pb::Hello {
                secret: "s".into(),
                ..hello("worker-1")
            },
            Via::LocalSocket,
            t0,
        )
        .expect("local");
    ready(&r, &j, t0);
    frames(&mut j).await;
    let instance = j.instance_id.clone();
    let beat = |rss_mib: u64| {
        let hb = pb::Heartbeat {
            rss_bytes: rss_mib << 20,
            ..Default::default()
        };
        r.on_frame(&instance, In::Heartbeat(hb), t0).expect("beat");
    };
    // A spike, then back under: nothing.
    beat(150);
    beat(150);
    beat(90);
    beat(150);
    beat(150);
    assert!(
        !frames(&mut j).await.iter().any(|f| f.starts_with("drain")),
        "two in a row is not enough"
    );
    beat(150);
    let seen = frames(&mut j).await;
    assert!(seen.iter().any(|f| f.starts_with("drain")), "{seen:?}");
    assert_eq!(
        r.get("worker-1").map(|m| m.state).ok(),
        Some(MemberState::Draining)
    );
    let mut got = None;
    while let Ok(n) = notices.try_recv() {
        if let Notice::Unhealthy { name, reason, .. } = n {
            got = Some((name, reason));
        }
    }
    let (name, reason) = got.expect("the supervisor is told");
    assert_eq!(name, "worker-1");
    assert!(reason.contains("150 MiB above max_rss 100 MiB"), "{reason}");
    counts_agree(&r);
}

#[tokio::test]
async fn a_full_cluster_refuses_new_names_but_not_its_own_children_or_replacements() {
    let r = Registry::new(
        RegistryConfig {
            max_members: 2,
            ..config(0)
        },
        None,
    );
    let t0 = Instant::now();
    let a = join(&r, "a", t0);
    let b = join(&r, "b", t0);
    let status = r
        .register(hello("c"), Via::Network, t0)
        .err()
        .expect("full");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.message().contains("max_members"), "{status:?}");
    assert_eq!(r.metrics.joins_refused_full.get(), 1, "counted on /metrics");
    // The master's own child has its place.
    r.reserve("worker-1", "s3cret");
    let local = pb::Hello {
        secret: "s3cret".into(),
        ..hello("worker-1")
    };
    r.register(local, Via::LocalSocket, t0)
        .expect("local joins");
    // A new instance of a suspect member takes its place.
    let h = Config::default().health;
    let t1 = t0 + h.suspect_after;
    r.sweep(t1);
    let a2 = r
        .register(hello("a"), Via::Network, t1)
        .expect("a replaced");
    // The old instance's end frees nothing; the child counts, so it takes
    // two leaving (3 → 1) before a new name fits under 2.
    r.disconnect(&a.instance_id, Status::unavailable("gone"));
    r.disconnect(&b.instance_id, Status::cancelled("left"));
    assert!(r.register(hello("c"), Via::Network, t1).is_err());
    r.disconnect(&a2.instance_id, Status::cancelled("left"));
    r.register(hello("c"), Via::Network, t1)
        .expect("room for c");
    counts_agree(&r);
}

#[tokio::test]
async fn a_leader_past_its_fence_registers_and_routes_nothing() {
    let fence = crate::ha::Fence::new();
    fence.raise(std::time::Instant::now() + Duration::from_secs(60));
    let r = Registry::new(
        RegistryConfig {
            leadership: Some(super::Leadership {
                term: 42,
                fence: fence.clone(),
                was_ready: true,
            }),
            ..config(3)
        },
        None,
    );
    assert!(
        r.summary().cluster_ready,
        "a leader after a ready one starts ready"
    );
    let t0 = Instant::now();
    let a = join(&r, "a", t0);
    fence.lower();
    let status = r
        .register(hello("b"), Via::Network, t0)
        .err()
        .expect("refused past the fence");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let send = In::Send(envelope("x", Target::Member("a".into())));
    let err = r.on_frame(&a.instance_id, send, t0).err().expect("refused");
    assert!(matches!(err, StreamError::NotLeading), "{err}");
    assert_eq!(r.term(), 42);
}

#[tokio::test]
async fn a_leader_acks_often_enough_for_members_that_leave_after_suspect_after() {
    let acks = |leadership: Option<super::Leadership>| async move {
        let r = Registry::new(
            RegistryConfig {
                leadership,
                ..config(0)
            },
            None,
        );
        let t0 = Instant::now();
        let mut a = join(&r, "a", t0);
        let _ = frames(&mut a).await;
        let mut acked = Vec::new();
        // A heartbeat a second (the default), for 10 s.
        for s in 0..10 {
            let beat = In::Heartbeat(pb::Heartbeat {
                seq: s,
                ..Default::default()
            });
            r.on_frame(&a.instance_id, beat, t0 + Duration::from_secs(s))
                .expect("beat");
            if frames(&mut a).await.contains(&"ack".to_string()) {
                acked.push(s);
            }
        }
        acked
    };
    // One master: every quarter of dead_after (10 s): at 0, 3, 6, 9 s.
    assert_eq!(acks(None).await, [0, 3, 6, 9]);
    // Several: members leave a master silent for suspect_after (3 s), so
    // the gap between acks stays well below it: every second here.
    let fence = crate::ha::Fence::new();
    fence.raise(std::time::Instant::now() + Duration::from_secs(600));
    let leading = super::Leadership {
        term: 7,
        fence,
        was_ready: false,
    };
    assert_eq!(acks(Some(leading)).await, (0..10).collect::<Vec<u64>>());
}

#[tokio::test]
async fn cluster_ready_waits_for_the_members_expected_of_an_app() {
    use crate::config::AppCount;
    let mut cfg = config(0);
    cfg.expect.apps = vec![AppCount {
        app: "web".into(),
        count: 2,
    }];
    let r = Registry::new(cfg, None);
    assert!(!r.summary().cluster_ready);
    assert_eq!(r.expected(), "0 agents and 0 workers, 2 of app web");
    let t0 = Instant::now();
    let in_app = |name: &str, app: &str| pb::Hello {
        app: app.into(),
        ..hello(name)
    };
    let ready = |hello: pb::Hello| {
        let j = r.register(hello, Via::Network, t0).expect("join");
        r.on_frame(&j.instance_id, In::Ready(pb::Ready::default()), t0)
            .expect("ready");
        j
    };
    let _other = ready(in_app("queue-1", "queue"));
    let _w1 = ready(in_app("web-1", "web"));
    assert!(!r.summary().cluster_ready, "one of two web members");
    let _w2 = ready(in_app("web-2", "web"));
    assert!(r.summary().cluster_ready, "both web members ready");
}

#[tokio::test]
async fn a_probed_member_is_ready_when_its_probe_passes_and_drained_after_failures_in_a_row() {
    use crate::config::{HealthCheck, Probe};
    let (r, mut notices) = registry(1);
    let check = HealthCheck {
        probe: Probe::Http("/healthz".into()),
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        failures: 2,
    };
    r.set_health(HashMap::from([("web".to_string(), check)]));
    let t0 = Instant::now();
    let j = r
        .register(
            pb::Hello {
                app: "web".into(),
                labels: HashMap::from([("http".to_string(), "127.0.0.1:9".to_string())]),
                ..hello("web-1")
            },
            Via::Network,
            t0,
        )
        .expect("joins");
    let other = join(&r, "worker-9", t0);
    let targets = r.probe_targets();
    assert_eq!(targets.len(), 1, "only web's member is probed");
    assert_eq!(targets[0].http.as_deref(), Some("127.0.0.1:9"));
    let id = j.instance_id.to_string();
    // Saying it is ready is not enough; its probe passing is.
    ready(&r, &j, t0);
    assert_eq!(
        r.get("web-1").map(|m| m.state).ok(),
        Some(MemberState::Joined)
    );
    r.probe_result("web-1", &id, Err("HTTP 503".into()));
    r.probe_result("web-1", "another-instance", Ok(()));
    assert_eq!(
        r.get("web-1").map(|m| m.state).ok(),
        Some(MemberState::Joined)
    );
    r.probe_result("web-1", &id, Ok(()));
    assert_eq!(
        r.get("web-1").map(|m| m.state).ok(),
        Some(MemberState::Ready)
    );
    // One failure, a pass, one failure: not in a row. Then two in a row.
    for result in [Err("HTTP 503"), Ok(()), Err("HTTP 503")] {
        r.probe_result("web-1", &id, result.map_err(String::from));
    }
    assert_eq!(
        r.get("web-1").map(|m| m.state).ok(),
        Some(MemberState::Ready)
    );
    r.probe_result("web-1", &id, Err("HTTP 503".into()));
    assert_eq!(
        r.get("web-1").map(|m| m.state).ok(),
        Some(MemberState::Draining)
    );
    assert!(
        r.probe_targets().is_empty(),
        "a draining member is not probed"
    );
    // Not local: drained only, its own supervisor restarts it.
    assert!(notices.try_recv().is_err());
    // An unprobed app is ready as it says.
    ready(&r, &other, t0);
    assert_eq!(
        r.get("worker-9").map(|m| m.state).ok(),
        Some(MemberState::Ready)
    );
    counts_agree(&r);
}

#[tokio::test]
async fn labels_given_with_ready_are_kept_within_their_bounds() {
    let (r, _notices) = registry(0);
    let t0 = Instant::now();
    let j = join(&r, "worker-1", t0);
    let with = |labels: Vec<(String, String)>| {
        In::Ready(pb::Ready {
            labels: labels.into_iter().collect(),
        })
    };
    let http = vec![("http".to_string(), "127.0.0.1:3001".to_string())];
    r.on_frame(&j.instance_id, with(http), t0).expect("ready");
    let listed = r.get("worker-1").expect("listed");
    assert_eq!(
        listed.labels.get("http").map(String::as_str),
        Some("127.0.0.1:3001")
    );
    assert_eq!(listed.state, MemberState::Ready);
    // Over the bounds: refused with a reason, the labels unchanged.
    let long = vec![("http".to_string(), "x".repeat(300))];
    let Err(err) = r.on_frame(&j.instance_id, with(long), t0) else {
        panic!("a 300-byte label was taken");
    };
    assert!(
        err.to_string()
            .contains("ready.labels[http] is 300 bytes: at most 255"),
        "{err}"
    );
    let many = (0..40)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    let Err(err) = r.on_frame(&j.instance_id, with(many), t0) else {
        panic!("40 labels were taken");
    };
    assert!(err.to_string().contains("at most 32"), "{err}");
    let listed = r.get("worker-1").expect("listed");
    assert_eq!(listed.labels.len(), 1);
}
