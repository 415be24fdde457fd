//! The heartbeat budget through the registry: members are told their new
//! interval, and a silent member is evicted after the silence its size
//! allows, neither sooner nor much later.

use super::*;

/// A registry whose cluster may send 2 heartbeats a second: more than 2
/// members heartbeat every 2 s (SUSPECT after 6 s, evicted after 20 s).
fn budgeted() -> Registry {
    let mut cfg = config(0);
    cfg.health.max_heartbeats_per_second = 2;
    Registry::new(cfg, None)
}

async fn welcome_interval(j: &mut Joined) -> Option<Duration> {
    let item = tokio::time::timeout(Duration::ZERO, j.stream.next())
        .await
        .ok()??;
    match crate::outbound::tests::decoded(item.ok()?).kind {
        Some(Out::Welcome(w)) => span(w.settings?.heartbeat_interval.as_ref()),
        _ => None,
    }
}

#[tokio::test]
async fn members_are_told_a_longer_interval_as_the_cluster_outgrows_its_budget() {
    let r = budgeted();
    let t0 = Instant::now();
    let mut a = join(&r, "a", t0);
    let mut b = join(&r, "b", t0);
    assert_eq!(welcome_interval(&mut a).await, Some(Duration::from_secs(1)));
    assert_eq!(welcome_interval(&mut b).await, Some(Duration::from_secs(1)));
    assert!(frames(&mut a).await.is_empty(), "two fit the budget");
    let mut c = join(&r, "c", t0);
    assert_eq!(welcome_interval(&mut c).await, Some(Duration::from_secs(2)));
    for j in [&mut a, &mut b] {
        assert_eq!(frames(j).await, ["heartbeat every 2s"]);
    }
    assert_eq!(r.settings(), settings(r.lock().budget.timing()));
    // Back to one member: told the shorter interval again.
    r.disconnect(&c.instance_id, Status::cancelled("gone"));
    r.disconnect(&b.instance_id, Status::cancelled("gone"));
    assert_eq!(frames(&mut a).await, ["heartbeat every 1s"]);
}

#[tokio::test]
async fn a_silent_member_is_evicted_after_the_silence_its_cluster_size_allows() {
    let r = budgeted();
    let t0 = Instant::now();
    let (a, _b, _c) = (join(&r, "a", t0), join(&r, "b", t0), join(&r, "c", t0));
    for j in [&a, &_b, &_c] {
        ready(&r, j, t0);
    }
    // At 3 members: SUSPECT after 6 s, evicted after 20 s (10 s alone).
    r.sweep(t0 + Duration::from_secs(5));
    assert_eq!(r.get("a").expect("a").state, MemberState::Ready);
    r.sweep(t0 + Duration::from_secs(6));
    assert_eq!(r.get("a").expect("a").state, MemberState::Suspect);
    r.sweep(t0 + Duration::from_secs(19));
    assert_eq!(r.member_count(), 3, "not evicted before 20 s");
    r.sweep(t0 + Duration::from_secs(20));
    assert_eq!(r.member_count(), 0, "evicted at 20 s");
    drop(a);
}

#[tokio::test]
async fn a_shorter_silence_applies_once_the_member_has_beaten_again() {
    let r = budgeted();
    let t0 = Instant::now();
    let a = join(&r, "a", t0);
    let (b, c) = (join(&r, "b", t0), join(&r, "c", t0));
    ready(&r, &a, t0);
    r.disconnect(&b.instance_id, Status::cancelled("gone"));
    r.disconnect(&c.instance_id, Status::cancelled("gone"));
    // Told 1 s again, but still judged by 20 s until it beats: it may not
    // have heard yet.
    r.sweep(t0 + Duration::from_secs(15));
    assert_eq!(r.member_count(), 1, "the old silence still holds");
    let beat = In::Heartbeat(pb::Heartbeat::default());
    let t1 = t0 + Duration::from_secs(16);
    r.on_frame(&a.instance_id, beat, t1).expect("beat");
    r.sweep(t1 + Duration::from_secs(9));
    assert_eq!(r.member_count(), 1);
    r.sweep(t1 + Duration::from_secs(10));
    assert_eq!(r.member_count(), 0, "now 10 s");
}
