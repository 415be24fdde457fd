//! The processes a test starts, and what the system says of any process:
//! kill on drop, stdout lines with deadlines, signals (nix), liveness,
//! children, memory and CPU time (sysinfo, which reads /proc for us).

use crate::{WAIT, bin, watchdog};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use sysinfo::{ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System};

/// A child process that is killed (and reaped) when dropped. Its stderr
/// goes to a file so failures can show it.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Name for messages.
    pub name: String,
    stderr: tempfile::NamedTempFile,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `cmd` with stdout piped and stderr captured.
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        let stderr = tempfile::NamedTempFile::new().expect("stderr file");
        let err = stderr.reopen().expect("reopen stderr file");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        watchdog::watch(child.id(), name, stderr.path().to_path_buf());
        // One reader thread per child turns stdout into lines; it ends at EOF.
        let (tx, lines) = std::sync::mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        Proc {
            child,
            name: name.to_string(),
            stderr,
            lines,
        }
    }

    /// What the process wrote on stderr so far.
    pub fn stderr(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(self.stderr.path()).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    /// Reads stdout lines until one satisfies `pred` (or the deadline passes,
    /// which panics with the process's stderr). Blocking.
    pub fn wait_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if pred(&line) => return line,
                Ok(_) => continue,
                Err(_) => panic!(
                    "{} never printed {what}; stderr:\n{}",
                    self.name,
                    self.stderr()
                ),
            }
        }
    }

    /// Its pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: &str) {
        kill(self.child.id(), sig);
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        watchdog::forget(self.child.id());
    }
}

/// A running `cohort-master` on an ephemeral port.
pub struct Master {
    /// The process.
    pub proc: Proc,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Master {
    /// Starts `cohort-master --listen 127.0.0.1:0 --listener
    /// http=127.0.0.1:0 ARGS` and waits for its `READY master ADDR` line.
    pub fn start(args: &[&str]) -> Master {
        Master::start_env(args, &[])
    }

    /// [`Master::start`] with environment variables set (a `TMPDIR` of its
    /// own keeps a test's leftovers from other tests' masters, which reap
    /// what dead masters left in the temp directory).
    pub fn start_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Master {
        let mut cmd = Command::new(bin("cohort-master"));
        cmd.envs(env.iter().copied());
        // An ephemeral shared listener, so parallel tests never fight over 8080.
        cmd.args(["--listen", "127.0.0.1:0", "--listener", "http=127.0.0.1:0"])
            .args(args);
        let mut proc = Proc::spawn("cohort-master", cmd);
        let line = proc.wait_line("READY master", |l| l.starts_with("READY master "));
        let addr = line.trim_start_matches("READY master ").to_string();
        Master { proc, addr }
    }

    /// Sends SIGTERM and checks the master exits 0 within 15 s.
    pub fn stop(&mut self) {
        self.proc.signal("TERM");
        let status = self
            .proc
            .wait_exit(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("the master did not exit: {}", self.proc.stderr()));
        assert_eq!(status.code(), Some(0), "{}", self.proc.stderr());
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts a demo member binary (`cohort-worker` / `cohort-agent`)
    /// pointed at this master.
    pub fn member(&self, binary: &str, name: &str) -> Proc {
        let mut cmd = Command::new(bin(binary));
        cmd.env(cohort::env::MASTER, self.url())
            .env(cohort::env::NAME, name);
        Proc::spawn(name, cmd)
    }
}

/// Sends `signal` (`KILL`, `TERM`, `STOP`, `CONT`, …) to `pid`.
pub fn kill(pid: u32, signal: &str) {
    let sig: Signal = format!("SIG{signal}")
        .parse()
        .unwrap_or_else(|_| panic!("no signal named {signal}"));
    let target = Pid::from_raw(i32::try_from(pid).expect("a pid fits an i32"));
    nix::sys::signal::kill(target, sig).unwrap_or_else(|e| panic!("kill -{signal} {pid}: {e}"));
}

/// Whether this test runs as root.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// The system's view of the processes `pids` (all with `None`), with what
/// `kind` asks for.
fn processes(pids: Option<&[u32]>, kind: ProcessRefreshKind) -> System {
    let mut sys = System::new().expect("sysinfo reads the process table");
    let pids: Vec<sysinfo::Pid> = pids
        .unwrap_or_default()
        .iter()
        .map(|p| sysinfo::Pid::from_u32(*p))
        .collect();
    let which = if pids.is_empty() {
        ProcessesToUpdate::All
    } else {
        ProcessesToUpdate::Some(&pids)
    };
    sys.refresh_processes_specifics(which, true, kind);
    sys
}

fn running(p: &sysinfo::Process) -> bool {
    !matches!(p.status(), ProcessStatus::Zombie | ProcessStatus::Dead)
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    processes(Some(&[pid]), ProcessRefreshKind::nothing())
        .process(sysinfo::Pid::from_u32(pid))
        .is_some_and(running)
}

/// The live processes whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let parent = sysinfo::Pid::from_u32(parent);
    processes(None, ProcessRefreshKind::nothing())
        .processes()
        .values()
        .filter(|p| p.parent() == Some(parent) && running(p))
        .map(|p| p.pid().as_u32())
        .collect()
}

/// Resident memory of `pid` in bytes (0 if it is gone).
pub fn rss_bytes(pid: u32) -> u64 {
    processes(Some(&[pid]), ProcessRefreshKind::nothing().with_memory())
        .process(sysinfo::Pid::from_u32(pid))
        .map_or(0, sysinfo::Process::memory)
}

/// Resident memory of `pid` in MiB (0 if it is gone).
pub fn rss_mib(pid: u32) -> f64 {
    rss_bytes(pid) as f64 / (1024.0 * 1024.0)
}

/// CPU time `pid` has used so far, user and system, in seconds (0 if it
/// is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    processes(Some(&[pid]), ProcessRefreshKind::nothing().with_cpu())
        .process(sysinfo::Pid::from_u32(pid))
        .map_or(0.0, |p| p.accumulated_cpu_time() as f64 / 1000.0)
}
