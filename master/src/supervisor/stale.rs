//! What a master that died without cleaning up (`kill -9`, the OOM killer)
//! left behind: its private socket directory (`cohort-PID-ID` in the temp
//! directory) and, under a wrapper such as `sh -c "…; sleep"`, children's
//! children that no parent-death signal reached and that may still hold the
//! shared listeners. A new master removes both before it binds anything.
//!
//! A process is taken for a leftover only if its environment still points
//! at the dead master's socket (`COHORT_MASTER=unix://DIR/master.sock`,
//! inherited through any wrapper) and that master's pid is gone, so a
//! running master's children, or anyone else's, are never touched.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What [`reap`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Socket directories of dead masters.
    pub runs: Vec<PathBuf>,
    /// Leftover processes killed.
    pub killed: Vec<u32>,
}

/// Removes the leftovers of dead masters found in `temp_dir`; waits (up to
/// 2 s) until the killed processes are gone, so their ports are free.
pub fn reap(temp_dir: &Path) -> Reaped {
    let mut reaped = Reaped::default();
    let Ok(me) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return reaped;
    };
    let Ok(entries) = std::fs::read_dir(temp_dir) else {
        return reaped;
    };
    for entry in entries.flatten() {
        let Some(pid) = run_pid(&entry.file_name().to_string_lossy()) else {
            continue;
        };
        let ours = entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == me);
        if !ours || alive(pid) {
            continue;
        }
        let dir = entry.path();
        let marker = format!("COHORT_MASTER=unix://{}", dir.join("master.sock").display());
        for p in carrying(&marker) {
            cohort_process::child::signal(p, cohort_process::child::SIGKILL);
            reaped.killed.push(p);
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a dead master's socket directory");
        }
        reaped.runs.push(dir);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while reaped.killed.iter().any(|p| alive(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    reaped
}

/// The master pid in a socket directory name `cohort-PID-HEX32`.
fn run_pid(name: &str) -> Option<u32> {
    let (pid, id) = name.strip_prefix("cohort-")?.split_once('-')?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(())?;
    pid.parse().ok()
}

/// Whether `pid` runs (a zombie does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next()),
            Some('Z' | 'X')
        )
    })
}

/// Processes whose environment holds `marker` (only this user's can be read).
fn carrying(marker: &str) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_socket_directories_name_a_run() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(run_pid(&format!("cohort-42-{id}")), Some(42));
        for other in [
            "cohort-42".to_string(),
            format!("cohort-x-{id}"),
            "cohort-42-short".into(),
            format!("cohort-bench-{id}"),
        ] {
            assert_eq!(run_pid(&other), None, "{other}");
        }
    }

    #[test]
    fn a_dead_masters_leftovers_go_and_a_live_ones_stay() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let id = "0123456789abcdef0123456789abcdef";
        // This process is alive: its directory is a running master's.
        let live = tmp
            .path()
            .join(format!("cohort-{}-{id}", std::process::id()));
        std::fs::create_dir(&live).expect("dir");
        // A pid above the kernel's limit never runs.
        let dead = tmp.path().join(format!("cohort-4294967295-{id}"));
        std::fs::create_dir(&dead).expect("dir");
        let socket = format!("unix://{}", dead.join("master.sock").display());
        let mut orphan = std::process::Command::new("sleep")
            .arg("30")
            .env("COHORT_MASTER", &socket)
            .spawn()
            .expect("sleep");
        // spawn returns once the child is in execve, before the kernel has
        // set up the new environment that /proc shows: wait for it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while carrying(&format!("COHORT_MASTER={socket}")).is_empty() {
            assert!(Instant::now() < deadline, "no environment");
            std::thread::sleep(Duration::from_millis(1));
        }
        let reaped = reap(tmp.path());
        assert_eq!(reaped.runs, std::slice::from_ref(&dead));
        assert_eq!(reaped.killed, [orphan.id()]);
        assert!(!dead.exists() && live.exists());
        let status = orphan.wait().expect("wait");
        assert!(!status.success(), "killed: {status:?}");
    }
}
