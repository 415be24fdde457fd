//! Prometheus metrics from the real master: the text a scrape gets, and
//! (where the Debian package is installed, as scripts/test does) a real
//! Prometheus server scraping it on 127.0.0.1 and answering a query.

use cohort_e2e::metrics::{scrape, value};
use cohort_e2e::{Master, control, eventually_within, http, wait_ready, which};
use cohort_proto::pb;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_serves_prometheus_metrics_a_real_prometheus_can_query() {
    let mut master = Master::start(&["--worker-count", "2", "--metrics-listen", "127.0.0.1:0"]);
    let metrics = cohort_e2e::metrics::address(&mut master);
    let addr = master.addr.clone();
    wait_ready(&addr, &["agent", "worker-1", "worker-2"]).await;

    let (code, _) = http(&metrics, "GET", "/nothing").expect("GET");
    assert_eq!(code, 404);
    let text = scrape(&metrics);
    assert_eq!(
        value(&text, r#"cohort_members{role="worker",state="ready"}"#),
        Some(2.0),
        "{text}"
    );
    assert_eq!(value(&text, "cohort_cluster_ready"), Some(1.0));
    assert!(text.contains("cohort_build_info{version="), "{text}");
    assert!(text.contains(r#"cohort_member_restarts_total{member="worker-1",role="worker"} 0"#));
    // Routing counts: a broadcast through Control reaches 3 members.
    let before = value(&text, "cohort_messages_routed_total").unwrap_or(0.0);
    control(&addr)
        .await
        .send(pb::SendRequest {
            action: "hello".into(),
            data: b"x".to_vec().into(),
            target: Some(pb::Target {
                kind: Some(pb::target::Kind::All(pb::All {})),
            }),
            ..Default::default()
        })
        .await
        .expect("send");
    let after = value(&scrape(&metrics), "cohort_messages_routed_total");
    assert_eq!(after, Some(before + 3.0));
    // Heartbeats carry each member's memory.
    let rss = r#"cohort_member_resident_memory_bytes{member="worker-1",role="worker"}"#;
    cohort_e2e::eventually("worker-1's RSS from a heartbeat", || {
        value(&scrape(&metrics), rss).filter(|v| *v > 0.0)
    });

    // A real Prometheus scraping it, when installed.
    let Some(prometheus) = which("prometheus") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "prometheus is not installed (scripts/test installs it)"
        );
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("prometheus.yml");
    let alerts = cohort_e2e::workspace().join("deploy/monitoring/alerts.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: cohort\n    static_configs:\n      - targets: ['{metrics}']\n",
            alerts.display()
        ),
    )
    .expect("config");
    let web = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let web_addr = web.local_addr().expect("addr").to_string();
    drop(web);
    let mut cmd = std::process::Command::new(prometheus);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web_addr}"));
    let _server = cohort_e2e::Proc::spawn("prometheus", cmd);
    // What Prometheus answers for `expr` once it has a sample of it.
    let query = |expr: &str, want: &dyn Fn(&str) -> bool| -> String {
        let path = format!("/api/v1/query?query={}", encode(expr));
        let what = format!("Prometheus answering {expr} as wanted");
        eventually_within(&what, Duration::from_secs(60), || {
            match http(&web_addr, "GET", &path) {
                Ok((200, body)) if want(&body) => Some(body),
                _ => None,
            }
        })
    };
    let ready = r#"cohort_members{role="worker",state="ready"}"#;
    let body = query(ready, &|b| b.contains("\"value\""));
    assert!(body.contains("\"2\""), "{body}");
    // The same ready members as ListMembers.
    let listed = cohort_e2e::members(&addr).await;
    let ready_n = listed
        .iter()
        .filter(|m| m.state == pb::MemberState::Ready as i32)
        .count();
    let expr = format!(r#"sum(cohort_members{{state="ready"}}) == {ready_n}"#);
    query(&expr, &|b| b.contains("\"value\""));
    assert_eq!(listed.len(), 3, "{listed:?}");
    // A crash and respawn counts as a restart.
    let worker_1 = cohort_e2e::members(&addr)
        .await
        .into_iter()
        .find(|m| m.name == "worker-1")
        .expect("worker-1");
    cohort_e2e::kill(worker_1.pid, "KILL");
    query(
        r#"cohort_member_restarts_total{member="worker-1"} == 1"#,
        &|b| b.contains("\"value\""),
    );
    // Members report heartbeat round trips once one was acked.
    query("cohort_heartbeat_rtt_seconds_count > 0", &|b| {
        b.contains("\"value\"")
    });

    // Every cohort_ name an expression uses is one the master exports.
    let exported = |expr: &str| {
        for name in expr.split(|c: char| !(c.is_alphanumeric() || c == '_')) {
            let Some(base) = name.strip_prefix("cohort_") else {
                continue;
            };
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .fold(base, |b, s| b.strip_suffix(s).unwrap_or(b));
            assert!(
                scrape(&metrics).contains(&format!("cohort_{base}")),
                "{expr}: cohort_{base} is not exported"
            );
        }
    };
    // Every query of the shipped dashboard is one this Prometheus accepts,
    // over series this master exports.
    let dashboard = std::fs::read_to_string(
        cohort_e2e::workspace().join("deploy/monitoring/grafana-dashboard.json"),
    )
    .expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    for expr in exprs {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$member", ".*");
        let body = query(&expr, &|b| b.contains("\"status\":\"success\""));
        assert!(body.contains("\"result\""), "{expr}: {body}");
        exported(&expr);
    }
    // The shipped alerting rules: loaded by this Prometheus, healthy (they
    // evaluate), over series this master exports; and their unit tests
    // (synthetic series: each alert fires on what it is about, not before
    // its time) pass.
    let rules = eventually_within("11 healthy rules", Duration::from_secs(60), || {
        let (_, body) = http(&web_addr, "GET", "/api/v1/rules").expect("rules");
        let v: serde_json::Value = serde_json::from_str(&body).expect("rules JSON");
        let rules: Vec<serde_json::Value> = v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        (rules.len() >= 11 && rules.iter().all(|r| r["health"] == "ok")).then_some(rules)
    });
    // The failover alerts read series only masters of several export:
    // e2e/tests/failover.rs checks those.
    let ha_only = ["CohortLeaderCount", "CohortLeaseRenewalFailing"];
    for rule in rules
        .iter()
        .filter(|r| !ha_only.iter().any(|n| r["name"] == *n))
    {
        exported(rule["query"].as_str().unwrap_or_default());
    }
    // The shipped scrape config loads (with its rules), and the rules'
    // unit tests pass.
    let promtool = which("promtool").expect("promtool comes with prometheus");
    for args in [
        ["check", "config", "prometheus.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(cohort_e2e::workspace().join("deploy/monitoring"))
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    master.proc.signal("TERM");
    let _ = master.proc.wait_exit(Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_cluster_can_keep_its_metrics_to_the_totals() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = dir.path().join("cohort.toml");
    std::fs::write(
        &cfg,
        "[agent]\ncount = 0\n[worker]\ncount = 1\n[metrics]\nlisten = \"127.0.0.1:0\"\nper_member = false\n",
    )
    .expect("config");
    let mut master = Master::start(&["--config", cfg.to_str().expect("path")]);
    let metrics = cohort_e2e::metrics::address(&mut master);
    wait_ready(&master.addr, &["worker-1"]).await;
    let text = scrape(&metrics);
    assert_eq!(
        value(&text, r#"cohort_members{role="worker",state="ready"}"#),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains("cohort_member_"),
        "no series per member: {text}"
    );
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_to_the_metrics_port_are_bounded_and_closed() {
    use std::io::{Read, Write};
    let mut master = Master::start(&[
        "--agent-count",
        "0",
        "--worker-count",
        "1",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let metrics = cohort_e2e::metrics::address(&mut master);
    let addr = master.addr.clone();
    wait_ready(&addr, &["worker-1"]).await;
    // The port has no token: anyone who reaches it may open connections
    // and say nothing, or ask once and keep the connection.
    let mut silent: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(&metrics).expect("connect"))
        .collect();
    let mut kept = std::net::TcpStream::connect(&metrics).expect("connect");
    write!(kept, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").expect("request");
    silent.push(kept);
    // The members are served meanwhile.
    wait_ready(&addr, &["worker-1"]).await;
    // Each is closed by the master (at once beyond the first 64, the rest
    // 10 s after their last word), not held open.
    let started = Instant::now();
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut buf = Vec::new();
        let read = s.read_to_end(&mut buf);
        assert!(
            read.is_ok()
                || read
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "closed by the master: {read:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(25));
    // And a scrape is answered again.
    let text = scrape(&metrics);
    assert_eq!(value(&text, "cohort_cluster_ready"), Some(1.0), "{text}");
    master.stop();
}
