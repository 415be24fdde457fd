//! A worker written in Python with grpcio (stubs generated from the
//! project's .proto at test time) joins the real master binary, receives a
//! broadcast from a Rust SDK member, and answers its request.

use cohort::{Code, MemberBuilder, Role, Target};
use cohort_e2e::{Master, Proc, venv_tool, workspace};
use std::process::Command;
use std::time::Duration;

#[test]
fn python_grpcio_member_joins_receives_and_replies() {
    let Some(python) = venv_tool("python") else {
        return;
    };
    let stubs = tempfile::tempdir().expect("temp dir");
    let proto_dir = workspace().join("proto").join("proto");
    let out = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto_dir)
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .arg(proto_dir.join("cohort/v1/cohort.proto"))
        .output()
        .expect("run grpc_tools.protoc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let master = Master::start(&["--agent-count", "0", "--worker-count", "0"]);
    let mut cmd = Command::new(&python);
    cmd.arg(workspace().join("e2e/python/member.py"))
        .arg(stubs.path())
        .arg(&master.addr)
        .arg("py-1");
    let mut py = Proc::spawn("python member", cmd);
    py.wait_line("WELCOME", |l| l == "WELCOME py-1");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let url = master.url();
    runtime.block_on(async move {
        let rust = MemberBuilder::new(url, Role::Agent)
            .name("rust-agent")
            .join()
            .await
            .expect("join");
        // Wait until the Python member is READY, then talk to it.
        let reply = loop {
            match rust
                .request(
                    Target::Random(Role::Worker),
                    "add",
                    r#"{"a": 2, "b": 40}"#,
                    Duration::from_secs(5),
                )
                .await
            {
                Ok(reply) => break reply,
                Err(e) if e.code() == Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("request failed: {e}"),
            }
        };
        let v: serde_json::Value = serde_json::from_slice(&reply.data).expect("json reply");
        assert_eq!(v["sum"], 42);
        assert_eq!(reply.from, "py-1");
        assert_eq!(
            rust.broadcast("news", r#"{"headline":"hi"}"#)
                .await
                .expect("broadcast"),
            2
        );
        rust.close().await;
    });
    py.wait_line("the broadcast", |l| {
        l == r#"GOT news {"headline":"hi"} FROM rust-agent"#
    });
}
