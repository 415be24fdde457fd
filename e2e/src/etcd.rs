//! A real etcd (Debian's `etcd-server`) for the failover tests, on
//! 127.0.0.1 ports of its own and a data directory that goes with it, and
//! masters of several that campaign through it. One etcd is a single point
//! of failure: fine for a test, not for production (deploy/README).

use crate::{Master, Proc, WAIT, bin, which};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running etcd; killed and its data removed on drop.
pub struct Etcd {
    /// The process.
    pub proc: Proc,
    /// Its client URL, `http://127.0.0.1:PORT` (`https://` with TLS).
    pub url: String,
    client: u16,
    peer: u16,
    data: tempfile::TempDir,
}

/// A port free on 127.0.0.1 (taken and let go; etcd needs a number).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// TLS for etcd's clients: its certificate and key, and the CA whose
/// client certificates it requires (`--client-cert-auth`).
pub struct ServerTls {
    /// Certificate (PEM).
    pub cert: std::path::PathBuf,
    /// Key (PEM).
    pub key: std::path::PathBuf,
    /// CA of the client certificates (PEM).
    pub client_ca: std::path::PathBuf,
}

impl Etcd {
    /// Starts etcd and waits until it answers. Under CI a missing etcd is a
    /// failure, not a skip: `scripts/test` installs `etcd-server`.
    pub fn start() -> Etcd {
        let data = tempfile::tempdir().expect("etcd data dir");
        Etcd::launch(data, free_port(), free_port(), None)
    }

    fn launch(data: tempfile::TempDir, client: u16, peer: u16, tls: Option<&ServerTls>) -> Etcd {
        let etcd = which("etcd").unwrap_or_else(|| {
            panic!("etcd is not installed: scripts/test installs Debian's etcd-server")
        });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut cmd = Command::new(etcd);
        cmd.args(["--name", "test", "--data-dir"])
            .arg(data.path())
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .args(["--log-level", "warn"]);
        if let Some(t) = tls {
            cmd.arg("--cert-file")
                .arg(&t.cert)
                .arg("--key-file")
                .arg(&t.key)
                .arg("--trusted-ca-file")
                .arg(&t.client_ca)
                .arg("--client-cert-auth");
        }
        let proc = Proc::spawn("etcd", cmd);
        let etcd = Etcd {
            proc,
            url,
            client,
            peer,
            data,
        };
        let deadline = Instant::now() + WAIT;
        while !etcd.answers(tls.is_some()) {
            assert!(
                Instant::now() < deadline,
                "etcd did not come up: {}",
                etcd.proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }

    /// Whether etcd answers: its health endpoint, or over TLS (which this
    /// harness does not speak) its port.
    fn answers(&self, tls: bool) -> bool {
        if tls {
            return std::net::TcpStream::connect(("127.0.0.1", self.client)).is_ok();
        }
        minreq::get(format!("{}/health", self.url))
            .with_timeout(2)
            .send()
            .is_ok_and(|r| r.status_code == 200 && r.as_str().is_ok_and(|b| b.contains("true")))
    }

    /// Turns on authentication with the user `root` (role `root`) and
    /// `password`, through etcd's JSON gateway.
    pub fn enable_auth(&self, password: &str) {
        let calls = [
            ("role/add", r#"{"name":"root"}"#.to_string()),
            (
                "user/add",
                format!(r#"{{"name":"root","password":"{password}"}}"#),
            ),
            ("user/grant", r#"{"user":"root","role":"root"}"#.to_string()),
            ("enable", "{}".to_string()),
        ];
        for (path, body) in calls {
            let r = minreq::post(format!("{}/v3/auth/{path}", self.url))
                .with_body(body)
                .with_timeout(5)
                .send()
                .expect("etcd's gateway");
            assert_eq!(r.status_code, 200, "{path}: {}", r.as_str().unwrap_or(""));
        }
    }

    /// The same etcd (data, ports) again, serving its clients over TLS.
    pub fn restart_with_tls(self, tls: &ServerTls) -> Etcd {
        let Etcd {
            mut proc,
            client,
            peer,
            data,
            ..
        } = self;
        proc.signal("TERM");
        proc.wait_exit(WAIT);
        drop(proc);
        Etcd::launch(data, client, peer, Some(tls))
    }
}

/// Starts `cohort-master` as one of several, on `listen`, campaigning
/// through `etcd` with a 2 s lease (the default).
pub fn ha_master(listen: &str, etcd: &str, extra: &[&str]) -> Master {
    let mut cmd = Command::new(bin("cohort-master"));
    cmd.args(["--listen", listen, "--ha-etcd", etcd])
        .args(extra);
    let mut proc = Proc::spawn("cohort-master", cmd);
    let line = proc.wait_line("READY master", |l| l.starts_with("READY master "));
    let addr = line.trim_start_matches("READY master ").to_string();
    Master { proc, addr }
}
