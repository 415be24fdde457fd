//! Failover (issue 20, SPEC §9b): three masters campaign through a real
//! etcd (one etcd: a single point of failure, fine for a test), remote
//! members list all three in `COHORT_MASTER`. Two members are
//! `cohort-worker` processes, two are SDK members in this process that
//! record the term of every Welcome and delivery.

use cohort::{Member, MemberBuilder, Role};
use cohort_e2e::etcd::{Etcd, free_port, ha_master};
use cohort_e2e::metrics::{scrape, value};
use cohort_e2e::{Master, Proc, bin, cohortctl, eventually_async_within, venv_tool, workspace};
use cohort_proto::pb;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous: a failover takes about one lease TTL (2 s) and a rejoin.
const FAILOVER: Duration = Duration::from_secs(20);
const NAMES: [&str; 4] = ["s1", "s2", "w1", "w2"];

struct Cluster {
    etcd: Etcd,
    ports: Vec<u16>,
    masters: Vec<Option<Master>>,
}

impl Cluster {
    fn start() -> Cluster {
        let etcd = Etcd::start();
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut cluster = Cluster {
            etcd,
            ports,
            masters: Vec::new(),
        };
        for i in 0..3 {
            let m = cluster.start_master(i);
            cluster.masters.push(Some(m));
        }
        cluster
    }

    fn start_master(&self, i: usize) -> Master {
        let listen = format!("127.0.0.1:{}", self.ports[i]);
        ha_master(
            &listen,
            &self.etcd.url,
            // The two cohort-workers are expected: ClusterReady waits for them.
            &["--metrics-listen", "127.0.0.1:0", "--expect-workers", "2"],
        )
    }

    fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    /// `COHORT_MASTER` for the members: all three.
    fn list(&self) -> String {
        (0..3)
            .map(|i| format!("http://{}", self.addr(i)))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn worker(&self, name: &str) -> Proc {
        let mut cmd = Command::new(bin("cohort-worker"));
        cmd.env(cohort::env::MASTER, self.list())
            .env(cohort::env::NAME, name);
        Proc::spawn(name, cmd)
    }

    /// Every live master's `ClusterInfo` (a master that does not answer
    /// within 2 s counts as none).
    async fn infos(&self) -> Vec<(usize, pb::ClusterInfoResponse)> {
        let mut out = Vec::new();
        for i in 0..3 {
            if self.masters[i].is_none() {
                continue;
            }
            if let Some(info) = info(&self.addr(i)).await {
                out.push((i, info));
            }
        }
        out
    }

    /// Waits until exactly one master leads, every other live one names it
    /// with the same term, the leader lists all of `names` (sorted) READY and every
    /// standby holds no member; returns the leader's index and term.
    async fn settled(&self, limit: Duration, names: &[&str]) -> (usize, u64) {
        eventually_async_within(
            "one leader with every member, none on a standby",
            limit,
            || async move {
                let infos = self.infos().await;
                let live = self.masters.iter().filter(|m| m.is_some()).count();
                if infos.len() != live {
                    return None;
                }
                let leaders: Vec<&(usize, pb::ClusterInfoResponse)> = infos
                    .iter()
                    .filter(|(_, i)| i.master_role == "leader")
                    .collect();
                let [(leader, lead)] = leaders.as_slice() else {
                    return None;
                };
                let agreed = infos
                    .iter()
                    .all(|(_, i)| i.term == lead.term && i.leader == self.addr(*leader));
                let standbys_empty = infos
                    .iter()
                    .filter(|(i, _)| i != leader)
                    .all(|(_, i)| i.counts.iter().map(|c| c.count).sum::<u32>() == 0);
                if !(agreed && standbys_empty) {
                    return None;
                }
                let members = list(&self.addr(*leader)).await?;
                let ready = pb::MemberState::Ready as i32;
                let mut ready: Vec<&str> = members
                    .iter()
                    .filter(|m| m.state == ready)
                    .map(|m| m.name.as_str())
                    .collect();
                ready.sort();
                (ready == names).then_some((*leader, lead.term))
            },
        )
        .await
    }
}

async fn info(addr: &str) -> Option<pb::ClusterInfoResponse> {
    let call = async {
        let mut c = pb::control_client::ControlClient::connect(format!("http://{addr}"))
            .await
            .ok()?;
        c.cluster_info(pb::ClusterInfoRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
    };
    tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .ok()
        .flatten()
}

async fn list(addr: &str) -> Option<Vec<pb::MemberInfo>> {
    let call = async {
        let mut c = pb::control_client::ControlClient::connect(format!("http://{addr}"))
            .await
            .ok()?;
        c.list_members(pb::ListMembersRequest::default())
            .await
            .ok()
            .map(|r| r.into_inner().members)
    };
    tokio::time::timeout(Duration::from_secs(2), call)
        .await
        .ok()
        .flatten()
}

async fn broadcast(addr: &str, action: &str) -> Result<(), tonic::Status> {
    let mut c = pb::control_client::ControlClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    c.send(pb::SendRequest {
        action: action.into(),
        target: Some(pb::Target {
            kind: Some(pb::target::Kind::All(pb::All {})),
        }),
        ..Default::default()
    })
    .await
    .map(|_| ())
}

/// An SDK member that records `(action, term)` for every delivery.
struct Recorder {
    member: Member,
    seen: Arc<Mutex<Vec<(String, u64)>>>,
}

impl Recorder {
    async fn join(masters: &str, name: &str) -> Recorder {
        let member = MemberBuilder::new(masters, Role::Worker)
            .name(name)
            .join()
            .await
            .expect("join one of the masters");
        member.ready().await.expect("ready");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut all = member.incoming(1024);
        let (log, who) = (seen.clone(), member.clone());
        tokio::spawn(async move {
            while let Some(m) = all.recv().await {
                let entry = (m.action.clone(), who.term());
                log.lock().expect("log").push(entry);
            }
        });
        // Welcomes (a rejoin) and ClusterReady, with the term then.
        let mut events = member.events();
        let (log, who) = (seen.clone(), member.clone());
        tokio::spawn(async move {
            while let Ok(e) = events.recv().await {
                let what = match e {
                    cohort::Event::Reconnected { .. } => "<welcome>",
                    cohort::Event::ClusterReady => "<cluster ready>",
                    _ => continue,
                };
                log.lock().expect("log").push((what.into(), who.term()));
            }
        });
        Recorder { member, seen }
    }

    fn got(&self, action: &str) -> usize {
        let seen = self.seen.lock().expect("log");
        seen.iter().filter(|(a, _)| a == action).count()
    }

    /// The terms of its welcomes and deliveries, in order.
    fn terms(&self) -> Vec<u64> {
        self.seen.lock().expect("log").iter().map(|e| e.1).collect()
    }
}

fn assert_terms_grow(recorders: &[&Recorder]) {
    for r in recorders {
        let terms = r.terms();
        assert!(
            terms.windows(2).all(|w| w[0] <= w[1]),
            "a member saw a lower term after a higher one: {terms:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_leader_moves_every_member_to_the_next_ten_times() {
    // The Python example (plain grpcio) follows the leader too.
    const NAMES: [&str; 5] = ["p1", "s1", "s2", "w1", "w2"];
    let python = venv_tool("python").expect("Python with grpcio (scripts/venv)");
    let mut cluster = Cluster::start();
    let list = cluster.list();
    let _w = [cluster.worker("w1"), cluster.worker("w2")];
    let _p = Proc::spawn("python worker", {
        let mut cmd = Command::new(python);
        cmd.arg(workspace().join("examples/python-worker/worker.py"))
            .env(cohort::env::MASTER, &list)
            .env(cohort::env::NAME, "p1")
            .env("PYTHONUNBUFFERED", "1");
        cmd
    });
    let s1 = Recorder::join(&list, "s1").await;
    let s2 = Recorder::join(&list, "s2").await;
    let (mut leader, mut term) = cluster.settled(FAILOVER, &NAMES).await;
    let first_term = term;
    let info = cohortctl(&list, &["info"]);
    assert!(info.contains("role       leader (term"), "{info}");
    assert!(
        info.contains(&format!("leader     {}", cluster.addr(leader))),
        "{info}"
    );
    let mut events = Proc::spawn("cohortctl events -f", {
        let mut cmd = Command::new(bin("cohortctl"));
        cmd.env(cohort::env::MASTER, &list).args(["events", "-f"]);
        cmd
    });
    events.wait_line("the first leader's current state", |l| {
        l.starts_with("current s1 ")
    });
    let logs = Proc::spawn("cohortctl logs -f", {
        let mut cmd = Command::new(bin("cohortctl"));
        cmd.env(cohort::env::MASTER, &list).args(["logs", "-f"]);
        cmd
    });
    let mut took = Vec::new();
    let mut gone = Vec::new();
    for round in 0..10 {
        let action = format!("ping-{round}");
        broadcast(&cluster.addr(leader), &action)
            .await
            .expect("the leader routes");
        eventually_async_within("both SDK members got the ping", FAILOVER, || async {
            (s1.got(&action) == 1 && s2.got(&action) == 1).then_some(())
        })
        .await;
        assert_eq!(
            s1.member.term(),
            term,
            "welcomed by the leader of this term"
        );
        // A request in flight when the leader dies (s2 never answers it).
        let asked = (round == 0).then(|| {
            let s1 = s1.member.clone();
            tokio::spawn(async move {
                let target = cohort::Target::Member("s2".into());
                s1.request(target, "slow", "", Duration::from_secs(60))
                    .await
            })
        });
        if asked.is_some() {
            eventually_async_within("s2 got the request", FAILOVER, || async {
                (s2.got("slow") == 1).then_some(())
            })
            .await;
        }
        let pid = cluster.masters[leader].as_ref().map(|m| m.proc.child.id());
        cohort_e2e::kill(pid.expect("the leader runs"), "KILL");
        let killed_at = Instant::now();
        if let Some(mut m) = cluster.masters[leader].take() {
            m.proc.wait_exit(Duration::from_secs(5));
            gone.push(m);
        }
        let (next, next_term) = cluster.settled(FAILOVER, &NAMES).await;
        took.push(killed_at.elapsed());
        if let Some(asked) = asked {
            let answer = tokio::time::timeout(FAILOVER, asked)
                .await
                .expect("the request fails with the leader, not at its 60 s timeout")
                .expect("task");
            let err = answer.expect_err("nobody answered");
            assert_eq!(err.code(), cohort::Code::Unavailable, "{err}");
        }
        assert_ne!(next, leader, "a killed master cannot lead");
        if round == 0 {
            // `events -f` goes on, on the new leader: s1 there (as its
            // current state, or joining, whichever came first).
            events.wait_line("s1 on the new leader", |l| l.contains(" s1 (worker, "));
            cohort_e2e::eventually("logs -f follows the new leader too", || {
                logs.stderr().contains("following the leader").then_some(())
            });
            assert!(cohort_e2e::alive(logs.child.id()), "{}", logs.stderr());
            assert!(
                events.stderr().contains("following the leader"),
                "{}",
                events.stderr()
            );
        }
        assert!(next_term > term, "terms grow: {term} then {next_term}");
        assert!(cohort_e2e::alive(_w[0].child.id()) && cohort_e2e::alive(_w[1].child.id()));
        // The killed master comes back (as systemd would restart it): a standby.
        let back = cluster.start_master(leader);
        cluster.masters[leader] = Some(back);
        (leader, term) = cluster.settled(FAILOVER, &NAMES).await;
        assert_eq!(
            (leader, term),
            (next, next_term),
            "a restarted master stands by"
        );
    }
    assert!(term > first_term);
    assert_eq!(s2.got("slow"), 1, "nothing is delivered twice");
    // ClusterReady ran once, on the first leader: the others found it
    // recorded in etcd and started ready (no hold for the expected
    // workers), and the members heard it once, if at all.
    let announced = gone
        .iter()
        .chain(cluster.masters.iter().flatten())
        .filter(|m| m.proc.stderr().contains("cluster ready"))
        .count();
    assert_eq!(announced, 1, "ClusterReady ran on {announced} masters");
    for s in [&s1, &s2] {
        assert!(
            s.got("<cluster ready>") <= 1,
            "{:?}",
            s.seen.lock().expect("log")
        );
    }
    assert!(s1.member.is_cluster_ready() && s2.member.is_cluster_ready());
    assert_terms_grow(&[&s1, &s2]);
    let secs: Vec<String> = took
        .iter()
        .map(|d| format!("{:.1}", d.as_secs_f64()))
        .collect();
    println!(
        "kill -9 to every member on the new leader, seconds: {}",
        secs.join(" ")
    );
}

/// A raw member on the leader whose frames the leader reads only after
/// SIGCONT: they must reach nobody.
async fn spy(
    addr: &str,
) -> (
    tokio::sync::mpsc::Sender<pb::MemberFrame>,
    tonic::Streaming<pb::MasterFrame>,
) {
    use pb::member_frame::Kind;
    let mut client = pb::membership_client::MembershipClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the leader");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(pb::MemberFrame {
        kind: Some(Kind::Hello(pb::Hello {
            role: pb::Role::Worker as i32,
            name: "spy".into(),
            ..Default::default()
        })),
    })
    .await
    .expect("queue hello");
    let mut inbound = client
        .join(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("the leader takes the join")
        .into_inner();
    let welcome = inbound.message().await.expect("welcome").expect("a frame");
    assert!(matches!(
        welcome.kind,
        Some(pb::master_frame::Kind::Welcome(_))
    ));
    (tx, inbound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_leader_past_its_lease_never_acts_as_leader_again() {
    use pb::member_frame::Kind;
    let mut cluster = Cluster::start();
    let list = cluster.list();
    let _w = [cluster.worker("w1"), cluster.worker("w2")];
    let s1 = Recorder::join(&list, "s1").await;
    let s2 = Recorder::join(&list, "s2").await;
    let (old, term) = cluster.settled(FAILOVER, &NAMES).await;
    let (spy_tx, mut spy_rx) = spy(&cluster.addr(old)).await;
    let mut old_master = cluster.masters[old].take().expect("the leader runs");
    let old_metrics = cohort_e2e::metrics::address(&mut old_master);
    old_master.proc.signal("STOP");
    // Queued in the stopped leader's socket: it reads them after SIGCONT.
    for _ in 0..3 {
        spy_tx
            .send(pb::MemberFrame {
                kind: Some(Kind::Send(pb::Envelope {
                    action: "stale".into(),
                    target: Some(pb::Target {
                        kind: Some(pb::target::Kind::All(pb::All {})),
                    }),
                    ..Default::default()
                })),
            })
            .await
            .expect("queue a stale send");
    }
    // The others elect a leader; the members leave the silent one.
    let (new, new_term) = cluster.settled(FAILOVER, &NAMES).await;
    assert_ne!(new, old);
    assert!(new_term > term);
    old_master.proc.signal("CONT");
    cluster.masters[old] = Some(old_master);
    // It wakes past its fence: it reads the spy's sends and routes none.
    let ended = tokio::time::timeout(FAILOVER, async {
        loop {
            match spy_rx.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the old leader ends the spy's stream");
    if let Some(status) = ended {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }
    broadcast(&cluster.addr(new), "marker")
        .await
        .expect("the new leader routes");
    eventually_async_within("the marker reached both", FAILOVER, || async {
        (s1.got("marker") == 1 && s2.got("marker") == 1).then_some(())
    })
    .await;
    assert_eq!(
        s1.got("stale") + s2.got("stale"),
        0,
        "the stopped leader delivered after its lease"
    );
    let info = eventually_async_within("the old leader knows the new one", FAILOVER, || async {
        info(&cluster.addr(old))
            .await
            .filter(|i| i.leader == cluster.addr(new))
    })
    .await;
    assert_eq!(info.master_role, "standby");
    // Health: alive for a liveness probe, not ready, not the cluster.
    let grpcurl = venv_tool("grpcurl").expect("grpcurl (scripts/venv)");
    for (service, status) in [
        ("liveness", "SERVING"),
        ("cohort.v1.Membership", "NOT_SERVING"),
        ("", "NOT_SERVING"),
    ] {
        let request = format!("{{\"service\":\"{service}\"}}");
        let addr = cluster.addr(old);
        let args = [
            "-plaintext",
            "-d",
            &request,
            &addr,
            "grpc.health.v1.Health/Check",
        ];
        let out = cohort_e2e::grpcurl(&grpcurl, &args);
        assert!(out.contains(&format!("\"{status}\"")), "{service:?}: {out}");
    }
    assert_eq!(
        info.counts.iter().map(|c| c.count).sum::<u32>(),
        0,
        "it holds no member"
    );
    let text = scrape(&old_metrics);
    assert_eq!(value(&text, "cohort_leader"), Some(0.0), "{text}");
    // What the failover alerts (deploy/monitoring/alerts.yml) read.
    assert!(
        value(&text, "cohort_term").is_some_and(|t| t as u64 == new_term),
        "{text}"
    );
    assert!(
        value(&text, "cohort_lease_renewal_failures_total").is_some(),
        "{text}"
    );
    let refused = broadcast(&cluster.addr(old), "stale")
        .await
        .expect_err("a standby routes nothing");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    let leader = refused
        .metadata()
        .get("cohort-leader")
        .and_then(|v| v.to_str().ok());
    assert_eq!(leader, Some(cluster.addr(new).as_str()), "{refused:?}");
    assert_eq!(cluster.settled(FAILOVER, &NAMES).await, (new, new_term));
    assert_terms_grow(&[&s1, &s2]);
    assert_eq!(s1.member.term(), new_term);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_the_leader_steps_down_and_a_leader_returns_with_it() {
    let cluster = Cluster::start();
    let list = cluster.list();
    let _w = [cluster.worker("w1"), cluster.worker("w2")];
    let s1 = Recorder::join(&list, "s1").await;
    let _s2 = Recorder::join(&list, "s2").await;
    let (leader, _) = cluster.settled(FAILOVER, &NAMES).await;
    cluster.etcd.proc.signal("STOP");
    let stopped = Instant::now();
    // While its lease may still hold, the leader serves.
    broadcast(&cluster.addr(leader), "during")
        .await
        .expect("the leader routes while its lease holds");
    // Then nobody leads: the leader stepped down, nobody could be elected.
    eventually_async_within(
        "no master leads without etcd",
        Duration::from_secs(5),
        || async {
            let infos = cluster.infos().await;
            (infos.len() == 3 && infos.iter().all(|(_, i)| i.master_role == "standby"))
                .then_some(())
        },
    )
    .await;
    let stepped_down = stopped.elapsed();
    assert!(stepped_down < Duration::from_secs(5), "{stepped_down:?}");
    let refused = broadcast(&cluster.addr(leader), "after")
        .await
        .expect_err("stepped down");
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.etcd.proc.signal("CONT");
    let (leader, _) = cluster.settled(FAILOVER, &NAMES).await;
    broadcast(&cluster.addr(leader), "back")
        .await
        .expect("routes again");
    eventually_async_within("s1 hears the new leader", FAILOVER, || async {
        (s1.got("back") == 1).then_some(())
    })
    .await;
    assert_eq!(s1.got("after"), 0);
    println!(
        "the leader stepped down {:.1} s after etcd stopped",
        stepped_down.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_reach_etcd_over_mutual_tls_as_a_user_and_a_wrong_password_is_named() {
    use cohort_e2e::etcd::ServerTls;
    use cohort_e2e::pki::Pki;
    let etcd = Etcd::start();
    etcd.enable_auth("s3cret");
    let pki = Pki::new();
    let (cert, key) = pki.leaf("etcd", &["127.0.0.1"]);
    let tls = ServerTls {
        cert,
        key,
        client_ca: pki.ca(),
    };
    let etcd = etcd.restart_with_tls(&tls);
    assert!(etcd.url.starts_with("https://"));
    let (client_cert, client_key) = pki.leaf("master", &["master"]);
    let dir = tempfile::tempdir().expect("dir");
    let (right, wrong) = (dir.path().join("right"), dir.path().join("wrong"));
    std::fs::write(&right, "s3cret\n").expect("write");
    std::fs::write(&wrong, "guess\n").expect("write");
    let path = |p: &std::path::Path| p.to_str().expect("path").to_string();
    let start = |password: &std::path::Path| {
        let port = free_port();
        let args = [
            "--ha-etcd-ca".to_string(),
            path(&pki.ca()),
            "--ha-etcd-cert".into(),
            path(&client_cert),
            "--ha-etcd-key".into(),
            path(&client_key),
            "--ha-etcd-user".into(),
            "root".into(),
            "--ha-etcd-password-file".into(),
            path(password),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ha_master(&format!("127.0.0.1:{port}"), &etcd.url, &args)
    };
    let good = [start(&right), start(&right)];
    let leads =
        eventually_async_within("a master leads through etcd over TLS", FAILOVER, || async {
            let mut roles = Vec::new();
            for m in &good {
                roles.push(info(&m.addr).await?.master_role);
            }
            (roles.iter().filter(|r| *r == "leader").count() == 1).then_some(roles)
        })
        .await;
    assert!(leads.contains(&"standby".to_string()), "{leads:?}");
    let both = eventually_async_within("both masters campaign", FAILOVER, || async {
        let masters = info(&good[0].addr).await?.masters;
        (masters.len() == 2).then_some(masters)
    })
    .await;
    let bad = start(&wrong);
    cohort_e2e::eventually("the wrong password named in the log", || {
        bad.proc
            .stderr()
            .contains("authentication failed")
            .then_some(())
    });
    let view = info(&bad.addr).await.expect("it answers ClusterInfo");
    assert_eq!(view.master_role, "standby");
    // The masters etcd knows are still the two with the right password.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let known = info(&good[0].addr).await.expect("ClusterInfo").masters;
    assert_eq!(known.len(), 2, "{known:?}");
    assert!(
        known.iter().all(|m| both.contains(m) && *m != bad.addr),
        "the one with a wrong password never campaigned: {known:?}"
    );
}
