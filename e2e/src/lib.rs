//! Harness for end-to-end tests: finds (or builds) the three binaries,
//! starts them on ephemeral ports with captured output, waits for their
//! readiness lines with deadlines, and kills every process on drop, so a
//! failing test leaves nothing behind.
//!
//! Tools from `scripts/venv` (grpcurl, Python with grpcio) are found through
//! `COHORT_TEST_VENV` or the workspace's `.venv`.

mod chatty;
pub mod etcd;
mod grpc;
mod http;
pub mod light;
pub mod metrics;
pub mod netns;
pub mod pki;
mod process;
mod tools;
mod wait;
mod watchdog;

pub use chatty::{CHATTY_LINE, chatty_config};
pub use grpc::{
    control, http_addr, members, members_with, next_event, wait_ready, wait_ready_tls,
    wait_ready_with, watch,
};
pub use http::{Load, http};
pub use process::{
    Master, Proc, alive, children_of, cpu_seconds, is_root, kill, rss_bytes, rss_mib,
};
pub use tools::{cohortctl, cohortctl_raw, grpcurl, grpcurl_raw, venv_tool, which};
pub use wait::{eventually, eventually_async, eventually_async_within, eventually_within};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Generous deadline for anything a test waits for.
pub const WAIT: Duration = Duration::from_secs(20);

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Path of one of the workspace's binaries, built on first use when missing
/// (`cargo test --workspace` on a fresh clone just works). Binaries that
/// exist are used as they are: `scripts/test` rebuilds them first, so run
/// that (or `cargo build --workspace --bins`) after changing their code.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> → target/<profile>
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .expect("target dir");
        let missing = ["cohort-master", "cohort-agent", "cohort-worker"]
            .iter()
            .any(|b| !dir.join(b).exists());
        if missing {
            let status = Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--bins",
                    "-p",
                    "cohort-master",
                    "-p",
                    "cohort-agent",
                    "-p",
                    "cohort-worker",
                ])
                .current_dir(workspace())
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building the binaries failed");
        }
        dir
    });
    dir.join(name)
}
