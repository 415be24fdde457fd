//! Failover across hosts (issue 20): etcd on host E, a master on each of
//! hosts A, B and C, three `cohort-worker`s on host W, all in network
//! namespaces of the test's own (SPEC §10), token auth on non-loopback
//! addresses. One etcd is a single point of failure: fine for a test.
//!
//! 1. The leader cut from etcd only: it steps down before its lease can
//!    expire (its fence), another master leads, the members move to it.
//! 2. The leader cut from the members only: it keeps its lease (etcd still
//!    hears it) and leads on; the members cannot reach it. They do not
//!    settle on a standby (which refuses them), and they say why, naming
//!    the leader, in a warning; once the cut heals they are back on it.

use cohort_e2e::netns::{Net, can_build_hosts};
use cohort_e2e::{Proc, bin, venv_tool, which};
use std::time::{Duration, Instant};

const TOKEN: &str = "failover-token-0123456789abcdef";
const E: usize = 0;
const W: usize = 4;
const MASTERS: [usize; 3] = [1, 2, 3];
const WORKERS: [&str; 3] = ["w1", "w2", "w3"];

struct Hosts {
    net: Net,
    grpcurl: std::path::PathBuf,
}

impl Hosts {
    fn master_addr(&self, host: usize) -> String {
        format!("{}:7420", self.net.addr(host))
    }

    /// A Control call made with grpcurl from inside host `from`.
    fn call(&self, from: usize, host: usize, method: &str) -> Option<serde_json::Value> {
        let argv: Vec<String> = vec![
            self.grpcurl.to_string_lossy().into_owned(),
            "-plaintext".into(),
            "-max-time".into(),
            "2".into(),
            "-H".into(),
            format!("authorization: Bearer {TOKEN}"),
            self.master_addr(host),
            format!("cohort.v1.Control/{method}"),
        ];
        let out = self.net.command(from, &argv, &[]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn role(&self, from: usize, host: usize) -> Option<String> {
        let info = self.call(from, host, "ClusterInfo")?;
        Some(info["masterRole"].as_str()?.to_string())
    }

    /// The READY members `host` lists, asked from `from`, sorted.
    fn ready(&self, from: usize, host: usize) -> Vec<String> {
        let Some(list) = self.call(from, host, "ListMembers") else {
            return Vec::new();
        };
        let mut names: Vec<String> = list["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["state"] == "MEMBER_STATE_READY")
            .filter_map(|m| m["name"].as_str().map(str::to_string))
            .collect();
        names.sort();
        names
    }

    /// Polls until one master (asked from `from`) leads and lists every
    /// worker READY; returns its host.
    fn leader_with_all(&self, from: usize, limit: Duration) -> usize {
        let start = Instant::now();
        loop {
            let leaders: Vec<usize> = MASTERS
                .iter()
                .copied()
                .filter(|&m| self.role(from, m).as_deref() == Some("leader"))
                .collect();
            if let [one] = leaders.as_slice()
                && self.ready(from, *one) == WORKERS
            {
                return *one;
            }
            assert!(
                start.elapsed() < limit,
                "no leader with every worker within {limit:?}: leaders {leaders:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

#[test]
fn partitions_of_the_leader_from_etcd_and_from_its_members() {
    if !can_build_hosts() {
        return;
    }
    let grpcurl = venv_tool("grpcurl").expect("grpcurl (scripts/venv)");
    let etcd = which("etcd").expect("etcd is not installed: scripts/test installs etcd-server");
    let tag = format!("f{}", std::process::id() % 100_000);
    let net = Net::create(&tag, 1, &["e", "a", "b", "c", "w"]).expect("test hosts");
    let hosts = Hosts { net, grpcurl };
    let net = &hosts.net;
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");

    let etcd_url = format!("http://{}:2379", net.addr(E));
    let peer = format!("http://{}:2380", net.addr(E));
    let etcd_argv: Vec<String> = vec![
        etcd.to_string_lossy().into_owned(),
        "--name=e".into(),
        format!("--data-dir={}", dir.path().join("etcd").display()),
        format!("--listen-client-urls={etcd_url}"),
        format!("--advertise-client-urls={etcd_url}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster=e={peer}"),
        "--log-level=warn".into(),
    ];
    let _etcd = net.exec(E, "etcd on host E", &etcd_argv, &[]);
    let _masters: Vec<Proc> = MASTERS
        .iter()
        .map(|&h| {
            let argv: Vec<String> = vec![
                bin("cohort-master").to_string_lossy().into_owned(),
                format!("--listen={}", hosts.master_addr(h)),
                format!("--token-file={}", token_file.display()),
                format!("--ha-etcd={etcd_url}"),
            ];
            let mut m = net.exec(h, &format!("master on host {h}"), &argv, &[]);
            m.wait_line("READY master", |l| l.starts_with("READY master "));
            m
        })
        .collect();
    let list: Vec<String> = MASTERS
        .iter()
        .map(|&h| format!("http://{}", hosts.master_addr(h)))
        .collect();
    let workers: Vec<Proc> = WORKERS
        .iter()
        .map(|name| {
            let argv = vec![bin("cohort-worker").to_string_lossy().into_owned()];
            let env = [
                (cohort::env::MASTER, list.join(",")),
                (cohort::env::NAME, name.to_string()),
                (cohort::env::TOKEN, TOKEN.to_string()),
            ];
            net.exec(W, &format!("worker {name} on host W"), &argv, &env)
        })
        .collect();
    let first = hosts.leader_with_all(W, Duration::from_secs(30));

    // 1. The leader cannot reach etcd (nor etcd it).
    net.cut(first, E, true);
    net.cut(E, first, true);
    let cut = Instant::now();
    // Never two leaders: until the cut-off one says it stands by, nobody
    // else may say it leads (asked in that order, every round).
    let stepped_down = loop {
        let old = hosts.role(W, first);
        let others: Vec<usize> = MASTERS
            .iter()
            .copied()
            .filter(|&m| m != first && hosts.role(W, m).as_deref() == Some("leader"))
            .collect();
        if old.as_deref() == Some("standby") {
            break cut.elapsed();
        }
        assert!(
            others.is_empty(),
            "{others:?} lead while {first} still says {old:?}"
        );
        assert!(
            cut.elapsed() < Duration::from_secs(10),
            "the cut-off leader did not step down"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let second = hosts.leader_with_all(W, Duration::from_secs(30));
    assert_ne!(second, first);
    assert!(
        hosts.ready(W, first).is_empty(),
        "a standby holds no member"
    );
    let moved = cut.elapsed();
    net.cut(first, E, false);
    net.cut(E, first, false);

    // 2. The members cannot reach the leader, which still holds its lease.
    // Only what the workers say from now on counts.
    let before: Vec<usize> = workers.iter().map(|w| w.stderr().len()).collect();
    net.cut(W, second, true);
    net.cut(second, W, true);
    let cut = Instant::now();
    let said = |(w, from): (&Proc, &usize)| {
        let err = w.stderr();
        let new = err.get(*from..).unwrap_or_default();
        new.lines().any(|l| {
            l.contains("no master could be joined") && l.contains(&hosts.master_addr(second))
        })
    };
    loop {
        if workers.iter().zip(&before).all(said) {
            break;
        }
        assert!(
            cut.elapsed() < Duration::from_secs(60),
            "the workers did not say why they cannot join; w1:\n{}",
            workers[0].stderr()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let told = cut.elapsed();
    assert_eq!(
        hosts.role(E, second).as_deref(),
        Some("leader"),
        "it holds its lease"
    );
    for &m in MASTERS.iter().filter(|&&m| m != second) {
        assert!(
            hosts.ready(E, m).is_empty(),
            "no member settles on a standby"
        );
    }
    net.cut(W, second, false);
    net.cut(second, W, false);
    let back = hosts.leader_with_all(W, Duration::from_secs(60));
    assert_eq!(back, second);
    println!(
        "cut from etcd: stepped down after {:.1} s, members on the new leader after {:.1} s; \
         cut from its members: they said why after {:.1} s",
        stepped_down.as_secs_f64(),
        moved.as_secs_f64(),
        told.as_secs_f64()
    );
}
