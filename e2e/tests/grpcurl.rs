//! The real `cohort-master` and member binaries, driven by real grpcurl
//! through server reflection (no proto files).

use cohort_e2e::{Master, eventually, grpcurl, grpcurl_raw, venv_tool};
use std::time::Duration;

fn ready_members(tool: &std::path::Path, addr: &str) -> Vec<(String, String)> {
    let out = grpcurl(tool, &["-plaintext", addr, "cohort.v1.Control/ListMembers"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    v["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let name = m["name"].as_str().unwrap_or_default().to_string();
            let state = m["state"].as_str().unwrap_or_default().to_string();
            (name, state)
        })
        .collect()
}

#[test]
fn grpcurl_lists_services_and_drives_control() {
    let Some(tool) = venv_tool("grpcurl") else {
        return;
    };
    let mut master = Master::start(&[
        "--agent-count",
        "0",
        "--worker-count",
        "0",
        "--expect-agents",
        "1",
        "--expect-workers",
        "2",
    ]);
    let addr = master.addr.clone();

    let services = grpcurl(&tool, &["-plaintext", &addr, "list"]);
    for s in [
        "cohort.v1.Membership",
        "cohort.v1.Control",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.lines().any(|l| l == s),
            "{s} missing from:\n{services}"
        );
    }
    let health = |service: &str| {
        let body = format!(r#"{{"service":"{service}"}}"#);
        grpcurl(
            &tool,
            &[
                "-plaintext",
                "-d",
                &body,
                &addr,
                "grpc.health.v1.Health/Check",
            ],
        )
    };
    assert!(
        health("").contains("NOT_SERVING"),
        "not ready before the expected members"
    );
    assert!(health("cohort.v1.Membership").contains("\"SERVING\""));

    let _agent = master.member("cohort-agent", "agent");
    let _w1 = master.member("cohort-worker", "worker-1");
    let w2 = master.member("cohort-worker", "worker-2");
    let members = eventually("three READY members", || {
        let m = ready_members(&tool, &addr);
        (m.len() == 3 && m.iter().all(|(_, s)| s == "MEMBER_STATE_READY")).then_some(m)
    });
    let names: Vec<_> = members.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["agent", "worker-1", "worker-2"]);
    assert!(
        health("").contains("\"SERVING\""),
        "SERVING once the cluster is ready"
    );

    let info = grpcurl(
        &tool,
        &["-plaintext", &addr, "cohort.v1.Control/ClusterInfo"],
    );
    assert!(info.contains("\"clusterReady\": true"), "{info}");
    assert!(info.contains(&addr), "{info}");

    // Send with `json` (no base64) and read the reply back as JSON.
    let body = r#"{"action":"ping","json":{"from":"grpcurl"},"target":{"member":"worker-2"},"expectReply":true}"#;
    let out = grpcurl(
        &tool,
        &["-plaintext", "-d", body, &addr, "cohort.v1.Control/Send"],
    );
    assert!(out.contains("\"delivered\": 1"), "{out}");
    let reply: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(reply["replyJson"]["name"], "worker-2", "{out}");
    assert_eq!(reply["replyJson"]["pid"], w2.child.id(), "{out}");

    let body = r#"{"action":"news","json":{"k":"v"},"target":{"role":"ROLE_WORKER"}}"#;
    let out = grpcurl(
        &tool,
        &["-plaintext", "-d", body, &addr, "cohort.v1.Control/Send"],
    );
    assert!(out.contains("\"delivered\": 2"), "{out}");

    // pid@host addresses a member too.
    let pid = w2.child.id();
    let got = grpcurl(
        &tool,
        &[
            "-plaintext",
            "-d",
            r#"{"member":"worker-2"}"#,
            &addr,
            "cohort.v1.Control/GetMember",
        ],
    );
    let host = serde_json::from_str::<serde_json::Value>(&got).expect("json")["host"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let body = format!(r#"{{"member":"{pid}@{host}"}}"#);
    let got = grpcurl(
        &tool,
        &[
            "-plaintext",
            "-d",
            &body,
            &addr,
            "cohort.v1.Control/GetMember",
        ],
    );
    assert!(got.contains("\"name\": \"worker-2\""), "{got}");

    // Errors are statuses a person can act on.
    let (ok, text) = grpcurl_raw(
        &tool,
        &[
            "-plaintext",
            "-d",
            r#"{"member":"worker-9"}"#,
            &addr,
            "cohort.v1.Control/GetMember",
        ],
    );
    assert!(!ok);
    assert!(
        text.contains("NotFound") && text.contains("no member named worker-9"),
        "{text}"
    );
    let (ok, text) = grpcurl_raw(
        &tool,
        &[
            "-plaintext",
            "-d",
            r#"{"action":"x","target":{"member":"worker-9"}}"#,
            &addr,
            "cohort.v1.Control/Send",
        ],
    );
    assert!(!ok && text.contains("NotFound"), "{text}");

    // Control/Shutdown ends the master with exit 0.
    grpcurl(&tool, &["-plaintext", &addr, "cohort.v1.Control/Shutdown"]);
    let status = master
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("master exits");
    assert!(status.success(), "{status:?}: {}", master.proc.stderr());
}

#[test]
fn sigterm_stops_the_master_with_exit_zero_and_bad_flags_exit_64() {
    let mut master = Master::start(&[]);
    master.proc.signal("TERM");
    let status = master
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("master exits");
    assert_eq!(status.code(), Some(0), "{}", master.proc.stderr());

    let out = std::process::Command::new(cohort_e2e::bin("cohort-master"))
        .args(["--listen", "nowhere"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--listen"), "{err}");
}
