//! Starting a supervised child: its own process group (so the whole group
//! can be signalled, grandchildren included), a parent-death signal (SIGTERM,
//! so `kill -9` of the master leaves no orphan: `cohort-worker` and
//! `cohort-agent` pass it on to their whole group), the shared listeners at fds
//! 3.. (`LISTEN_FDS` / `LISTEN_FDNAMES`), and stdout/stderr captured line by
//! line into the master's log under the member's name.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use tokio::process::{Child, Command};

/// What to start and with which environment.
pub struct SpawnSpec<'a> {
    /// Program and arguments.
    pub command: &'a [String],
    /// Working directory (`None`: the master's).
    pub cwd: Option<&'a Path>,
    /// Environment over the master's: the app's, then `COHORT_*`.
    pub env: Vec<(String, String)>,
    /// Shared listeners, in `LISTEN_FDNAMES` order.
    pub listeners: &'a [(String, RawFd)],
}

/// Resolves a relative program name next to the master's own binary, as
/// SPEC §6 says; anything else is left to `PATH`.
pub fn resolve(program: &str) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(program)));
    match beside {
        Some(p) if p.exists() => p,
        _ => PathBuf::from(program),
    }
}

/// Starts the child. Its pid is also its process group id.
pub fn spawn(spec: &SpawnSpec<'_>) -> std::io::Result<Child> {
    let Some((program, args)) = spec.command.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty command",
        ));
    };
    let mut cmd = Command::new(resolve(program));
    cmd.args(args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        // systemd's notify socket and watchdog are the master's, not theirs.
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID");
    if let Some(dir) = spec.cwd {
        cmd.current_dir(dir);
    }
    if !spec.listeners.is_empty() {
        let names: Vec<&str> = spec.listeners.iter().map(|(n, _)| n.as_str()).collect();
        cmd.env("LISTEN_FDS", spec.listeners.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
    } else {
        cmd.env_remove("LISTEN_FDS").env_remove("LISTEN_FDNAMES");
    }
    let fds: Vec<RawFd> = spec.listeners.iter().map(|(_, fd)| *fd).collect();
    cohort_process::child::prepare(&mut cmd, fds, 3);
    cmd.spawn()
}
