//! Prometheus metrics from the real master: the text a scrape gets, and
//! (where the Debian package is installed, as scripts/test does) a real
//! Prometheus server scraping it on 127.0.0.1 and answering a query.

use cohort_e2e::{Master, control, http, wait_ready};
use cohort_proto::pb;
use std::time::{Duration, Instant};

/// The value of the series `name{labels…}` in an exposition, if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn scrape(addr: &str) -> String {
    let (code, body) = http(addr, "GET", "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_serves_prometheus_metrics_a_real_prometheus_can_query() {
    let mut master = Master::start(&["--worker-count", "2", "--metrics-listen", "127.0.0.1:0"]);
    let line = master
        .proc
        .wait_line("READY metrics", |l| l.starts_with("READY metrics "));
    let metrics = line.trim_start_matches("READY metrics ").to_string();
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
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: cohort\n    static_configs:\n      - targets: ['{metrics}']\n"
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
    let query = "/api/v1/query?query=cohort_members%7Brole%3D%22worker%22%2Cstate%3D%22ready%22%7D";
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, body)) = http(&web_addr, "GET", query)
            && body.contains("\"value\"")
        {
            assert!(body.contains("\"2\""), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus never had the metric");
        std::thread::sleep(Duration::from_millis(500));
    }
    master.proc.signal("TERM");
    let _ = master.proc.wait_exit(Duration::from_secs(15));
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.exists())
}
