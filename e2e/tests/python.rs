//! The Python example worker (`examples/python-worker`, plain grpcio, stubs
//! generated from the project's .proto) joins the real master with a
//! bearer token, receives a broadcast sent by a Rust SDK member, and
//! answers its request; it notices a master that stops answering (SIGSTOP)
//! and joins again once it answers.

use cohort::{Code, MemberBuilder, Role, Target};
use cohort_e2e::{Master, Proc, venv_tool, workspace};
use std::process::Command;
use std::time::Duration;

const TOKEN: &str = "python-token-0123456789abcdef";

#[test]
fn python_example_worker_joins_with_a_token_receives_and_replies() {
    let Some(python) = venv_tool("python") else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, TOKEN).expect("token");
    let master = Master::start(&[
        "--agent-count",
        "0",
        "--worker-count",
        "0",
        "--token-file",
        token_file.to_str().expect("path"),
        "--heartbeat-interval",
        "500ms",
        "--suspect-after",
        "1s",
        "--dead-after",
        "2s",
    ]);
    let mut cmd = Command::new(&python);
    cmd.arg(workspace().join("examples/python-worker/worker.py"))
        .env("COHORT_MASTER", &master.addr)
        .env("COHORT_NAME", "py-1")
        .env("COHORT_TOKEN_FILE", &token_file)
        .env("PYTHONUNBUFFERED", "1");
    let mut py = Proc::spawn("python worker", cmd);
    py.wait_line("WELCOME", |l| l == "WELCOME py-1");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let url = master.url();
    runtime.block_on(async move {
        let rust = MemberBuilder::new(url, Role::Agent)
            .name("rust-agent")
            .token(TOKEN)
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

    // A stopped master keeps its connections open and says nothing: the
    // worker gives up on it after dead_after (2 s), and is welcomed again
    // once the master answers.
    master.proc.signal("STOP");
    py.wait_line("it noticing the silence", |l| {
        l == "SILENT nothing from the master for 2 s"
    });
    master.proc.signal("CONT");
    py.wait_line("a new welcome", |l| l == "WELCOME py-1");
}
