//! Bearer-token authentication on Join and Control, with the real master,
//! its own local children (which must authenticate too), the SDK, tonic
//! and grpcurl.

use cohort::{Code, MemberBuilder, Role};
use cohort_e2e::{Master, bin, grpcurl, grpcurl_raw, venv_tool, wait_ready_with};
use cohort_proto::pb;

const TOKEN: &str = "test-token-0123456789abcdef";
const NEXT: &str = "next-token-0123456789abcdef";

fn with_token(token: Option<&str>) -> tonic::Request<pb::ListMembersRequest> {
    let mut r = tonic::Request::new(pb::ListMembersRequest::default());
    if let Some(t) = token {
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {t}").parse().expect("header"),
        );
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_control_need_one_of_the_tokens() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("tokens");
    std::fs::write(&file, format!("{TOKEN}\n{NEXT}\n")).expect("write");
    let mut master = Master::start(&[
        "--worker-count",
        "1",
        "--token-file",
        file.to_str().expect("path"),
    ]);
    let addr = master.addr.clone();
    // The master's own children got the token and joined.
    let listed = wait_ready_with(&addr, &["agent", "worker-1"], Some(TOKEN)).await;

    let mut control = cohort_e2e::control(&addr).await;
    for bad in [
        None,
        Some("wrong-token-0123456789abcdef"),
        Some("test-token"),
        Some(""),
    ] {
        let err = control
            .list_members(with_token(bad))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
        assert!(!err.message().contains(TOKEN));
    }
    for good in [TOKEN, NEXT] {
        let m = control
            .list_members(with_token(Some(good)))
            .await
            .expect("accepted")
            .into_inner();
        assert_eq!(m.members.len(), 2);
    }

    for bad in [None, Some("wrong-token-0123456789abcdef"), Some("x")] {
        let mut b = MemberBuilder::new(master.url(), Role::Worker).name("remote");
        if let Some(t) = bad {
            b = b.token(t);
        }
        let err = b.join().await.expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated, "{bad:?}: {err}");
    }
    let remote = MemberBuilder::new(master.url(), Role::Worker)
        .name("remote")
        .token(NEXT)
        .join()
        .await
        .expect("the rotation token works");
    remote.close().await;

    if let Some(tool) = venv_tool("grpcurl") {
        let (ok, text) = grpcurl_raw(
            &tool,
            &["-plaintext", &addr, "cohort.v1.Control/ListMembers"],
        );
        assert!(!ok && text.contains("Unauthenticated"), "{text}");
        let header = format!("authorization: Bearer {TOKEN}");
        let out = grpcurl(
            &tool,
            &[
                "-plaintext",
                "-H",
                &header,
                &addr,
                "cohort.v1.Control/ListMembers",
            ],
        );
        assert!(out.contains("\"name\": \"worker-1\""), "{out}");
        // Discovery and health stay open (probes carry no token).
        let services = grpcurl(&tool, &["-plaintext", &addr, "list"]);
        assert!(services.contains("cohort.v1.Control"));
        let health = grpcurl(&tool, &["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
        assert!(health.contains("SERVING"), "{health}");
    }

    master.proc.signal("TERM");
    let status = master
        .proc
        .wait_exit(std::time::Duration::from_secs(15))
        .expect("exit");
    assert_eq!(status.code(), Some(0));
    cohort_e2e::eventually("children gone", || {
        listed
            .iter()
            .all(|m| !cohort_e2e::alive(m.pid))
            .then_some(())
    });
}

#[test]
fn a_non_loopback_listen_without_auth_is_refused_with_the_fix() {
    let out = std::process::Command::new(bin("cohort-master"))
        .args([
            "--listen",
            "0.0.0.0:0",
            "--agent-count",
            "0",
            "--worker-count",
            "0",
        ])
        .env_remove("COHORT_TOKEN")
        .env_remove("COHORT_TOKEN_FILE")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--token-file") && err.contains("--insecure"),
        "{err}"
    );
}

/// Rotation with one token file shared by the master and its members (one
/// Kubernetes Secret key, one file copied to every host): the master
/// accepts every line, members send the first and read the file again
/// before every reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_rotates_through_one_shared_file_without_losing_a_member() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("token");
    let path = file.to_str().expect("path").to_string();
    let start = |listen: &str| {
        let mut cmd = std::process::Command::new(bin("cohort-master"));
        cmd.args([
            "--listen",
            listen,
            "--agent-count",
            "0",
            "--worker-count",
            "0",
        ])
        .args(["--expect-workers", "1", "--token-file", &path]);
        let mut proc = cohort_e2e::Proc::spawn("cohort-master", cmd);
        let line = proc.wait_line("READY master", |l| l.starts_with("READY master "));
        let addr = line.trim_start_matches("READY master ").to_string();
        Master { proc, addr }
    };
    let restart = |master: &mut Master| {
        master.proc.signal("TERM");
        master
            .proc
            .wait_exit(std::time::Duration::from_secs(15))
            .expect("master exits");
        start(&master.addr.clone())
    };
    // Step 1: the next token is added below the current one.
    std::fs::write(&file, format!("{TOKEN}\n{NEXT}\n")).expect("write");
    let mut master = start("127.0.0.1:0");
    let mut worker = {
        let mut cmd = std::process::Command::new(bin("cohort-worker"));
        cmd.env("COHORT_MASTER", master.url())
            .env("COHORT_NAME", "remote-1")
            .env("COHORT_TOKEN_FILE", &path)
            .env("COHORT_HTTP_ADDR", "127.0.0.1:0");
        cohort_e2e::Proc::spawn("remote-1", cmd)
    };
    let first = wait_ready_with(&master.addr, &["remote-1"], Some(TOKEN)).await;
    // Step 2: the next token goes first; the member sends it from its next
    // reconnect on (here: the master restarts).
    std::fs::write(&file, format!("{NEXT}\n{TOKEN}\n")).expect("write");
    master = restart(&mut master);
    wait_ready_with(&master.addr, &["remote-1"], Some(NEXT)).await;
    // Step 3: the old token is gone; the member still holds on.
    std::fs::write(&file, format!("{NEXT}\n")).expect("write");
    master = restart(&mut master);
    let last = wait_ready_with(&master.addr, &["remote-1"], Some(NEXT)).await;
    assert_eq!(first[0].pid, last[0].pid, "the same process throughout");
    worker.signal("TERM");
    worker
        .wait_exit(std::time::Duration::from_secs(15))
        .expect("worker exits");
    master.proc.signal("TERM");
    let _ = master.proc.wait_exit(std::time::Duration::from_secs(15));
}
