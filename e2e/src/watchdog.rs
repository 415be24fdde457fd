//! A stuck test fails; it does not hang the suite. Every process a test
//! starts through [`crate::Proc`] is registered here. If a test binary is
//! still running [`limit`] after its first process started, the watchdog
//! prints what each process still running wrote on stderr (the clue to
//! where it stuck), kills them, and ends the binary with status 101.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Running processes: pid → (name, stderr file).
type Running = Mutex<BTreeMap<u32, (String, PathBuf)>>;

fn running() -> &'static Running {
    static RUNNING: OnceLock<Running> = OnceLock::new();
    RUNNING.get_or_init(|| {
        std::thread::spawn(|| {
            std::thread::sleep(limit());
            trip();
        });
        Mutex::new(BTreeMap::new())
    })
}

/// How long one test binary may run: `COHORT_TEST_BINARY_LIMIT` seconds,
/// 600 unless set (the slowest binary takes about half a minute here).
fn limit() -> Duration {
    let secs = std::env::var("COHORT_TEST_BINARY_LIMIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    Duration::from_secs(secs)
}

/// Registers a started process.
pub(crate) fn watch(pid: u32, name: &str, stderr: PathBuf) {
    if let Ok(mut r) = running().lock() {
        r.insert(pid, (name.to_string(), stderr));
    }
}

/// Forgets a process that was reaped.
pub(crate) fn forget(pid: u32) {
    if let Ok(mut r) = running().lock() {
        r.remove(&pid);
    }
}

fn trip() {
    use std::io::Write;
    let running = running().lock().map(|r| r.clone()).unwrap_or_default();
    // Straight to the file descriptor: the test harness captures eprintln!
    // in threads a test started, and would drop it at the exit below.
    let mut out = std::io::stderr().lock();
    let _ = writeln!(
        out,
        "\nwatchdog: this test binary ran past {} s: a test is stuck (cargo's \"running for over 60 seconds\" names it). Ending it.",
        limit().as_secs()
    );
    for (pid, (name, stderr)) in &running {
        let text = std::fs::read_to_string(stderr).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let _ = writeln!(out, "--- {name} (pid {pid}), last lines of its stderr:");
        for line in tail.iter().rev() {
            let _ = writeln!(out, "{line}");
        }
        // Gone already, perhaps: nothing to do then.
        if let Ok(pid) = i32::try_from(*pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    std::process::exit(101);
}
