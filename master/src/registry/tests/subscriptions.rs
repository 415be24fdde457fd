//! Subscriptions: who hears of whom, coalesced sweeps, and what a busy
//! master does not count against its members.

use super::*;

#[tokio::test]
async fn members_hear_only_whom_they_watch_and_a_sweep_is_one_frame() {
    let (r, _) = registry(0);
    let t0 = Instant::now();
    let h = Config::default().health;
    let watching = |name: &str, watch: pb::EventFilter| pb::Hello {
        watch: Some(watch),
        accepts_batches: true,
        ..hello(name)
    };
    let everyone = pb::EventFilter {
        all: true,
        ..Default::default()
    };
    let one = pb::EventFilter {
        names: vec!["w-1".into()],
        ..Default::default()
    };
    let agents = pb::EventFilter {
        roles: vec![pb::Role::Agent as i32],
        ..Default::default()
    };
    let mut all = r
        .register(watching("all", everyone), Via::Network, t0)
        .expect("all");
    let mut by_name = r
        .register(watching("by-name", one), Via::Network, t0)
        .expect("name");
    let mut by_role = r
        .register(watching("by-role", agents), Via::Network, t0)
        .expect("role");
    let mut nothing = join(&r, "nothing", t0);
    for j in [&all, &by_name, &by_role, &nothing] {
        ready(&r, j, t0);
    }
    for j in [&mut all, &mut by_name, &mut by_role, &mut nothing] {
        frames(j).await;
    }
    for name in ["w-1", "w-2", "w-3"] {
        let w = join(&r, name, t0);
        ready(&r, &w, t0);
    }
    assert_eq!(
        frames(&mut all).await,
        ["event Ready w-1", "event Ready w-2", "event Ready w-3"]
    );
    assert_eq!(frames(&mut by_name).await, ["event Ready w-1"]);
    assert!(frames(&mut by_role).await.is_empty(), "no agent changed");
    assert!(frames(&mut nothing).await.is_empty(), "watches nothing");
    // The watchers keep heartbeating; w-1..3 go silent together: one sweep,
    // one frame per watcher with all it watches.
    let t1 = t0 + h.suspect_after - MS;
    for j in [&all, &by_name, &by_role, &nothing] {
        r.on_frame(&j.instance_id, In::Heartbeat(pb::Heartbeat::default()), t1)
            .expect("heartbeat");
    }
    r.sweep(t0 + h.suspect_after);
    let acks = |f: Vec<String>| f.into_iter().filter(|f| f != "ack").collect::<Vec<_>>();
    assert_eq!(
        acks(frames(&mut all).await),
        ["events Suspect w-1, Suspect w-2, Suspect w-3"]
    );
    assert_eq!(acks(frames(&mut by_name).await), ["event Suspect w-1"]);
    assert!(acks(frames(&mut nothing).await).is_empty());
    counts_agree(&r);
}

#[test]
fn a_subscription_is_bounded_and_made_of_names_and_roles() {
    let names = |n: usize| pb::EventFilter {
        names: (0..n).map(|i| format!("w-{i}")).collect(),
        ..Default::default()
    };
    assert_eq!(Watch::from_hello(None), Ok(Watch::Nothing));
    assert_eq!(
        Watch::from_hello(Some(&pb::EventFilter::default())),
        Ok(Watch::Nothing)
    );
    assert!(Watch::from_hello(Some(&names(watching::MAX_WATCHED_NAMES))).is_ok());
    let err =
        Watch::from_hello(Some(&names(watching::MAX_WATCHED_NAMES + 1))).expect_err("too many");
    assert!(err.contains("at most 1024"), "{err}");
    let bad = pb::EventFilter {
        names: vec!["not a name!".into()],
        ..Default::default()
    };
    assert!(Watch::from_hello(Some(&bad)).is_err());
    let role = pb::EventFilter {
        roles: vec![99],
        ..Default::default()
    };
    assert!(Watch::from_hello(Some(&role)).is_err());
}

#[test]
fn time_the_master_was_too_busy_to_look_is_not_counted() {
    let (r, _) = registry(0);
    let t0 = Instant::now();
    let h = Config::default().health;
    let j = join(&r, "w", t0);
    ready(&r, &j, t0);
    // The master stalled for a whole dead_after: the member's heartbeats
    // sat unread in its socket.
    let t1 = t0 + h.dead_after;
    r.forgive(h.dead_after, t1);
    r.sweep(t1);
    assert_eq!(r.get("w").map(|m| m.state).ok(), Some(MemberState::Ready));
    r.sweep(t1 + h.dead_after);
    assert!(r.get("w").is_err(), "evicted once it is silent on its own");
    counts_agree(&r);
}

#[tokio::test]
async fn a_local_process_ending_after_its_instance_left_is_told_only_to_watch_events() {
    let (r, _) = registry(0);
    let t0 = Instant::now();
    let watching = pb::Hello {
        watch: Some(pb::EventFilter {
            all: true,
            ..Default::default()
        }),
        ..hello("watcher")
    };
    let mut watcher = r.register(watching, Via::Network, t0).expect("joins");
    let w = join(&r, "w-1", t0);
    ready(&r, &watcher, t0);
    ready(&r, &w, t0);
    frames(&mut watcher).await;
    let slot = r.list().into_iter().find(|m| m.name == "w-1").expect("w-1");
    let (_, mut feed) = r.subscribe();
    // The replacement of w-1 may already hold the name: a member must not
    // hear "w-1 left" again when the old process ends.
    r.announce_exit(
        slot.clone(),
        "replaced instance exited: exited with status 0",
    );
    r.announce(EventKind::Respawned, slot, "died");
    assert_eq!(frames(&mut watcher).await, ["event Respawned w-1"]);
    let kinds: Vec<EventKind> = [feed.try_recv(), feed.try_recv()]
        .into_iter()
        .map(|e| e.expect("on WatchEvents").kind)
        .collect();
    assert_eq!(kinds, [EventKind::Exited, EventKind::Respawned]);
}
