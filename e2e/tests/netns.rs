//! Hosts on one machine (SPEC §10): network namespaces joined by a bridge
//! that lives in its own namespace, addresses 10.77.0.0/24, every process
//! inside a namespace, and an `unreachable` route for that range in the
//! root namespace while the test runs, so nothing can leave the machine.
//!
//! Master on host A (token auth, non-loopback listen), one worker on each of
//! hosts B and C. Cut C: its member goes SUSPECT, then is evicted within
//! `dead_after` + 1 s while B is untouched. Heal: C rejoins within the
//! backoff cap. Cut only A → C (nftables in C): C's member stops getting
//! heartbeat acks and reconnects by itself. Restart the master: both
//! re-register. Needs root and iproute2; elsewhere it skips with a message.

use cohort_e2e::netns::{Net, can_build_hosts};
use cohort_e2e::{Proc, bin, venv_tool};
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "netns-token-0123456789abcdef";
const DEAD_AFTER: Duration = Duration::from_secs(2);

/// (name, state) of every member, asked with grpcurl from inside host A.
fn members(net: &Net, grpcurl: &std::path::Path) -> Option<Vec<(String, String)>> {
    let out = Command::new("ip")
        .args(["netns", "exec", &net.hosts[0]])
        .arg(grpcurl)
        .args([
            "-plaintext",
            "-max-time",
            "2",
            "-H",
            &format!("authorization: Bearer {TOKEN}"),
            "10.77.0.1:7420",
            "cohort.v1.Control/ListMembers",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(
        v["members"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or("").to_string(),
                    m["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect(),
    )
}

fn state_of(list: &[(String, String)], name: &str) -> Option<String> {
    list.iter().find(|(n, _)| n == name).map(|(_, s)| s.clone())
}

/// Polls until `pred` holds for the member list; returns how long it took.
fn until(
    net: &Net,
    grpcurl: &std::path::Path,
    what: &str,
    limit: Duration,
    pred: impl Fn(&[(String, String)]) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if let Some(list) = members(net, grpcurl)
            && pred(&list)
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{what} not within {limit:?}; members: {:?}",
            members(net, grpcurl)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_master(net: &Net, token_file: &std::path::Path) -> Proc {
    let argv: Vec<String> = [
        bin("cohort-master").to_string_lossy().into_owned(),
        "--listen=10.77.0.1:7420".into(),
        format!("--token-file={}", token_file.display()),
        "--agent-count=0".into(),
        "--worker-count=0".into(),
        "--expect-workers=2".into(),
        "--heartbeat-interval=200ms".into(),
        "--suspect-after=600ms".into(),
        format!("--dead-after={}ms", DEAD_AFTER.as_millis()),
    ]
    .into();
    let mut master = net.exec(0, "master on host A", &argv, &[]);
    master.wait_line("READY master", |l| {
        l.starts_with("READY master 10.77.0.1:7420")
    });
    master
}

#[test]
fn partition_eviction_rejoin_and_master_restart_across_hosts() {
    if !can_build_hosts() {
        return;
    }
    let Some(grpcurl) = venv_tool("grpcurl") else {
        return;
    };
    let tag = format!("{}", std::process::id() % 100_000);
    let net = Net::create(&tag, 0, &["a", "b", "c"]).expect("test hosts");
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");

    let mut master = start_master(&net, &token_file);
    let env = |name: &str| {
        vec![
            ("COHORT_MASTER", "http://10.77.0.1:7420".to_string()),
            ("COHORT_TOKEN", TOKEN.to_string()),
            ("COHORT_NAME", name.to_string()),
        ]
    };
    let worker = vec![bin("cohort-worker").to_string_lossy().into_owned()];
    let _b = net.exec(1, "worker on host B", &worker, &env("b-1"));
    let _c = net.exec(2, "worker on host C", &worker, &env("c-1"));
    fn ready(name: &'static str) -> impl Fn(&[(String, String)]) -> bool {
        move |l| state_of(l, name).as_deref() == Some("MEMBER_STATE_READY")
    }
    until(
        &net,
        &grpcurl,
        "both remote workers READY",
        Duration::from_secs(20),
        |l| ready("b-1")(l) && ready("c-1")(l),
    );

    // Cut host C off.
    net.port("c", false);
    let cut = Instant::now();
    until(
        &net,
        &grpcurl,
        "c-1 SUSPECT",
        Duration::from_secs(10),
        |l| state_of(l, "c-1").as_deref() == Some("MEMBER_STATE_SUSPECT"),
    );
    let suspect = cut.elapsed();
    until(
        &net,
        &grpcurl,
        "c-1 evicted",
        DEAD_AFTER + Duration::from_secs(5),
        |l| state_of(l, "c-1").is_none(),
    );
    let evicted = cut.elapsed();
    eprintln!(
        "partition: c-1 SUSPECT after {} ms, evicted after {} ms (dead_after {} ms)",
        suspect.as_millis(),
        evicted.as_millis(),
        DEAD_AFTER.as_millis()
    );
    assert!(
        evicted <= DEAD_AFTER + Duration::from_secs(1),
        "evicted after {evicted:?}"
    );
    assert!(
        ready("b-1")(&members(&net, &grpcurl).expect("list")),
        "host B is untouched"
    );

    // Heal: C's member rejoins within the reconnect backoff cap (30 s).
    net.port("c", true);
    let rejoin = until(
        &net,
        &grpcurl,
        "c-1 rejoined",
        Duration::from_secs(40),
        ready("c-1"),
    );
    eprintln!("heal: c-1 READY again after {} ms", rejoin.as_millis());

    // One-way partition: host C hears nothing from A, while A still hears
    // C's heartbeats. C's member misses the acks and reconnects by itself
    // (closing its stream, which A sees at once); it is back after healing.
    if Command::new("nft").arg("--version").output().is_ok() {
        let c = &net.hosts[2];
        let nft = |rules: &str| {
            let ok = Command::new("ip")
                .args(["netns", "exec", c, "nft", rules])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "nft {rules}");
        };
        nft("add table inet oneway");
        nft("add chain inet oneway in { type filter hook input priority 0; }");
        nft("add rule inet oneway in ip saddr 10.77.0.1 drop");
        let cut = Instant::now();
        until(
            &net,
            &grpcurl,
            "c-1 gone after missing acks",
            DEAD_AFTER + Duration::from_secs(5),
            |l| state_of(l, "c-1").is_none(),
        );
        let noticed = cut.elapsed();
        assert!(
            ready("b-1")(&members(&net, &grpcurl).expect("list")),
            "host B is untouched"
        );
        nft("delete table inet oneway");
        let back = until(
            &net,
            &grpcurl,
            "c-1 back after the one-way cut",
            Duration::from_secs(40),
            ready("c-1"),
        );
        eprintln!(
            "one-way: c-1 reconnected on its own {} ms after acks stopped, READY {} ms after healing",
            noticed.as_millis(),
            back.as_millis()
        );
    } else {
        eprintln!("one-way partition skipped: nft (nftables) is not installed");
    }

    // Restart the master: every remote member re-registers.
    master.signal("TERM");
    master
        .wait_exit(Duration::from_secs(15))
        .expect("master stops");
    let t = Instant::now();
    let _master = start_master(&net, &token_file);
    until(
        &net,
        &grpcurl,
        "both re-registered",
        Duration::from_secs(40),
        |l| ready("b-1")(l) && ready("c-1")(l),
    );
    eprintln!(
        "master restart: view complete {} ms after the new master started",
        t.elapsed().as_millis()
    );
}
