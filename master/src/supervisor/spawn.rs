//! Starting a supervised child: its own process group (so the whole group
//! can be signalled, grandchildren included), a parent-death signal (SIGTERM,
//! so `kill -9` of the master leaves no orphan: `cohort-worker` and
//! `cohort-agent` pass it on to their whole group), the shared listeners at fds
//! 3.. (`LISTEN_FDS` / `LISTEN_FDNAMES`), and stdout/stderr captured line by
//! line into the master's log under the member's name.

// `pre_exec` and the fd/prctl calls in the forked child need `unsafe`; every
// call made there is async-signal-safe (prctl, getppid, fcntl, dup2, _exit).
#![allow(unsafe_code)]

use std::os::fd::RawFd;
use std::path::PathBuf;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// What to start and with which environment.
pub struct SpawnSpec<'a> {
    /// Program and arguments.
    pub command: &'a [String],
    /// Extra environment (`COHORT_*`).
    pub env: Vec<(String, String)>,
    /// Shared listeners, in `LISTEN_FDNAMES` order.
    pub listeners: &'a [(String, RawFd)],
    /// Member name, for log lines.
    pub name: &'a str,
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
        .process_group(0);
    if !spec.listeners.is_empty() {
        let names: Vec<&str> = spec.listeners.iter().map(|(n, _)| n.as_str()).collect();
        cmd.env("LISTEN_FDS", spec.listeners.len().to_string())
            .env("LISTEN_FDNAMES", names.join(":"));
    } else {
        cmd.env_remove("LISTEN_FDS").env_remove("LISTEN_FDNAMES");
    }
    let fds: Vec<RawFd> = spec.listeners.iter().map(|(_, fd)| *fd).collect();
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe system calls; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGTERM as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The master may have died between fork and prctl.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            place_fds(&fds)
        });
    }
    cmd.spawn()
}

/// Moves each listener to fd 3, 4, ... without close-on-exec. Runs in the
/// forked child. Listener fds are first copied above the target range so a
/// dup2 never overwrites one not yet placed.
fn place_fds(fds: &[RawFd]) -> std::io::Result<()> {
    const FIRST: RawFd = 3;
    let high = FIRST + fds.len() as RawFd + 64;
    let mut moved = [0 as RawFd; 64];
    if fds.len() > moved.len() {
        return Err(std::io::Error::other("too many listeners"));
    }
    for (i, fd) in fds.iter().enumerate() {
        // SAFETY: plain fd syscalls in the child.
        let copy = unsafe { libc::fcntl(*fd, libc::F_DUPFD, high) };
        if copy < 0 {
            return Err(std::io::Error::last_os_error());
        }
        moved[i] = copy;
    }
    for (i, copy) in moved.iter().take(fds.len()).enumerate() {
        let target = FIRST + i as RawFd;
        // SAFETY: as above; dup2 leaves the new fd without FD_CLOEXEC.
        if unsafe { libc::dup2(*copy, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        unsafe { libc::close(*copy) };
    }
    Ok(())
}

/// Sends `signal` to the child's whole process group.
pub fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid signals that process group; a
    // group that is already gone only yields ESRCH.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// Kills one process (SIGKILL).
pub fn kill_process(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) on one pid; a process already gone only yields ESRCH.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Logs every line the child writes, under its member name.
pub fn capture_output(child: &mut Child, name: &str) {
    if let Some(out) = child.stdout.take() {
        let name = name.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "cohort::child", { member.name = %name, stream = "stdout" }, "{line}");
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        let name = name.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(target: "cohort::child", { member.name = %name, stream = "stderr" }, "{line}");
            }
        });
    }
}
