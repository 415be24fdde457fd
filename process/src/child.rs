//! Child processes as every Cohort binary starts and stops them: a
//! parent-death signal (so `kill -9` of the parent leaves no orphan), fds
//! placed at fixed numbers for the child (`LISTEN_FDS`, a channel), and
//! signals to a child's whole process group.

// `pre_exec` runs in the forked child and cannot be had without `unsafe`;
// what it calls there is async-signal-safe (prctl, getppid, fcntl, dup2,
// close, _exit) and allocates nothing.
#![allow(unsafe_code)]

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::os::fd::RawFd;

pub use nix::sys::signal::Signal::{SIGKILL, SIGTERM};

/// Most fds [`prepare`] places.
pub const MAX_PLACED_FDS: usize = 64;

/// Sets `cmd` up so its child gets SIGTERM when this process dies (and
/// exits at once if this process already died before it could ask), and
/// finds `fds[i]` at fd `first + i`, inherited across exec.
pub fn prepare(cmd: &mut tokio::process::Command, fds: Vec<RawFd>, first: RawFd) {
    let parent = std::process::id();
    // SAFETY: the closure only makes async-signal-safe calls (see above).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
            // The parent may have died between fork and prctl.
            if u32::try_from(nix::unistd::getppid().as_raw()).ok() != Some(parent) {
                libc::_exit(1);
            }
            place_fds(&fds, first)
        });
    }
}

/// Moves each fd to `first`, `first + 1`, ... without close-on-exec. Runs
/// in the forked child. The fds are first copied above the target range,
/// so a dup2 never overwrites one not yet placed.
fn place_fds(fds: &[RawFd], first: RawFd) -> std::io::Result<()> {
    if fds.len() > MAX_PLACED_FDS {
        return Err(std::io::Error::other("too many fds to place"));
    }
    let high = first + fds.len() as RawFd + MAX_PLACED_FDS as RawFd;
    let mut moved = [0 as RawFd; MAX_PLACED_FDS];
    for (i, fd) in fds.iter().enumerate() {
        // SAFETY: an fd syscall in the child on an fd it inherited.
        let copy = unsafe { libc::fcntl(*fd, libc::F_DUPFD, high) };
        if copy < 0 {
            return Err(std::io::Error::last_os_error());
        }
        moved[i] = copy;
    }
    for (i, copy) in moved.iter().take(fds.len()).enumerate() {
        // SAFETY: as above; dup2 leaves the new fd without FD_CLOEXEC.
        if unsafe { libc::dup2(*copy, first + i as RawFd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: closes the copy made above.
        unsafe { libc::close(*copy) };
    }
    Ok(())
}

fn pid(p: u32) -> Option<Pid> {
    i32::try_from(p).ok().filter(|p| *p > 0).map(Pid::from_raw)
}

/// Sends `signal` to the process group led by `leader`; a group already
/// gone is no error.
pub fn signal_group(leader: u32, signal: Signal) {
    if let Some(p) = pid(leader) {
        let _ = killpg(p, signal);
    }
}

/// Sends `signal` to one process; one already gone is no error.
pub fn signal(process: u32, signal: Signal) {
    if let Some(p) = pid(process) {
        let _ = kill(p, signal);
    }
}

/// Whether this process leads its own process group.
pub fn leads_group() -> bool {
    nix::unistd::getpgrp() == nix::unistd::getpid()
}

/// Sends `signal` to this process's own group (itself included).
pub fn signal_own_group(signal: Signal) {
    let _ = killpg(nix::unistd::getpgrp(), signal);
}
