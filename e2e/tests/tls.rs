//! TLS and mTLS with certificates made at test time (rcgen): real grpcurl
//! and SDK members over https, client certificates bound to member names
//! (a client without one is told so), and the master's own children
//! unaffected (they use its Unix socket).

use cohort::{Code, MemberBuilder, Role, TlsFiles};
use cohort_e2e::pki::Pki;
use cohort_e2e::{Master, grpcurl, grpcurl_raw, venv_tool, wait_ready_tls};
use std::path::{Path, PathBuf};

/// A master serving TLS with a certificate from `pki`, with `args`.
fn tls_master(pki: &Pki, args: &[&str]) -> Master {
    let (cert, key) = pki.leaf("server", &["localhost", "127.0.0.1"]);
    let mut all = args.to_vec();
    all.extend(["--tls-cert", s(&cert), "--tls-key", s(&key)]);
    Master::start(&all)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn files(ca: &Path, identity: Option<&(PathBuf, PathBuf)>) -> TlsFiles {
    TlsFiles {
        ca: Some(std::fs::read(ca).expect("ca")),
        identity: identity.map(|(c, k)| {
            (
                std::fs::read(c).expect("cert"),
                std::fs::read(k).expect("key"),
            )
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_grpcurl_and_sdk_members_and_local_children() {
    let pki = Pki::new();
    let mut master = tls_master(&pki, &["--agent-count", "0", "--worker-count", "1"]);
    let addr = master.addr.clone();
    wait_ready_tls(&addr, &["worker-1"], &pki.ca(), None).await;

    let member = MemberBuilder::new(format!("https://{addr}"), Role::Worker)
        .name("remote-1")
        .tls(files(&pki.ca(), None))
        .join()
        .await
        .expect("join over TLS");
    member.ready().await.expect("ready");
    wait_ready_tls(&addr, &["remote-1", "worker-1"], &pki.ca(), None).await;
    member.close().await;

    if let Some(tool) = venv_tool("grpcurl") {
        let out = grpcurl(
            &tool,
            &[
                "-cacert",
                s(&pki.ca()),
                &addr,
                "cohort.v1.Control/ListMembers",
            ],
        );
        assert!(out.contains("\"name\": \"worker-1\""), "{out}");
        let (ok, text) = grpcurl_raw(&tool, &["-max-time", "3", "-plaintext", &addr, "list"]);
        assert!(!ok, "plaintext is refused: {text}");
    }
    master.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate_naming_the_member() {
    let pki = Pki::new();
    let a = pki.leaf("remote-a", &["remote-a"]);
    let ca = pki.ca();
    let mut master = tls_master(
        &pki,
        &[
            "--agent-count",
            "0",
            "--worker-count",
            "1",
            "--tls-client-ca",
            s(&ca),
        ],
    );
    let addr = master.addr.clone();
    // The local worker joined over the master's Unix socket, no certificate needed.
    wait_ready_tls(&addr, &["worker-1"], &pki.ca(), Some(&a)).await;

    let url = format!("https://{addr}");
    // Without a certificate: told so, at once, not a closed connection.
    let err = MemberBuilder::new(url.clone(), Role::Worker)
        .name("remote-a")
        .tls(files(&pki.ca(), None))
        .join()
        .await
        .expect_err("no client certificate");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(err.to_string().contains("client certificate"), "{err}");

    let err = MemberBuilder::new(url.clone(), Role::Worker)
        .name("remote-b")
        .tls(files(&pki.ca(), Some(&a)))
        .join()
        .await
        .expect_err("certificate for another name");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.to_string().contains("remote-b"), "{err}");

    let ok = MemberBuilder::new(url, Role::Worker)
        .name("remote-a")
        .tls(files(&pki.ca(), Some(&a)))
        .join()
        .await
        .expect("its own name");
    assert_eq!(ok.name(), "remote-a");
    ok.close().await;

    if let Some(tool) = venv_tool("grpcurl") {
        // Health and reflection need no certificate, as they need no token.
        let list = grpcurl(&tool, &["-cacert", s(&pki.ca()), &addr, "list"]);
        assert!(list.contains("cohort.v1.Control"), "{list}");
        let (okay, text) = grpcurl_raw(
            &tool,
            &[
                "-cacert",
                s(&pki.ca()),
                &addr,
                "cohort.v1.Control/ListMembers",
            ],
        );
        assert!(!okay, "no client certificate is refused: {text}");
        assert!(text.contains("requires a client certificate"), "{text}");
        let out = grpcurl(
            &tool,
            &[
                "-cacert",
                s(&pki.ca()),
                "-cert",
                s(&a.0),
                "-key",
                s(&a.1),
                &addr,
                "cohort.v1.Control/ListMembers",
            ],
        );
        assert!(out.contains("worker-1"), "{out}");
    }
    master.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_stalls_is_closed_after_the_handshake_timeout() {
    use std::io::{Read, Write};
    let pki = Pki::new();
    let mut master = tls_master(
        &pki,
        &[
            "--agent-count",
            "0",
            "--worker-count",
            "0",
            "--handshake-timeout",
            "500ms",
        ],
    );
    // The start of a ClientHello record announcing 512 bytes, then nothing:
    // enough to count as a handshake begun, never enough to finish it.
    let mut stalled = std::net::TcpStream::connect(&master.addr).expect("connect");
    let mut start = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    start.resize(40, 0);
    stalled.write_all(&start).expect("write");
    stalled
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let read = stalled.read(&mut buf);
    assert!(
        matches!(read, Ok(0))
            || matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the master closes a stalled TLS handshake: {read:?}"
    );
    // Everyone else is served as before.
    wait_ready_tls(&master.addr, &[], &pki.ca(), None).await;
    master.stop();
}
