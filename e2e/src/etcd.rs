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
    /// Its client URL, `http://127.0.0.1:PORT`.
    pub url: String,
    _data: tempfile::TempDir,
}

/// A port free on 127.0.0.1 (taken and let go; etcd needs a number).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl Etcd {
    /// Starts etcd and waits until it answers. Under CI a missing etcd is a
    /// failure, not a skip: `scripts/test` installs `etcd-server`.
    pub fn start() -> Etcd {
        let etcd = which("etcd").unwrap_or_else(|| {
            panic!("etcd is not installed: scripts/test installs Debian's etcd-server")
        });
        let data = tempfile::tempdir().expect("etcd data dir");
        let (client, peer) = (free_port(), free_port());
        let url = format!("http://127.0.0.1:{client}");
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
        let proc = Proc::spawn("etcd", cmd);
        let etcd = Etcd {
            proc,
            url,
            _data: data,
        };
        let deadline = Instant::now() + WAIT;
        while !etcd.healthy() {
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy: {}",
                etcd.proc.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        etcd
    }

    /// Whether etcd answers its health endpoint.
    pub fn healthy(&self) -> bool {
        minreq::get(format!("{}/health", self.url))
            .with_timeout(2)
            .send()
            .is_ok_and(|r| r.status_code == 200 && r.as_str().is_ok_and(|b| b.contains("true")))
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
