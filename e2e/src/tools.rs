//! The tools `scripts/venv` installs: grpcurl, and Python with grpcio.

use crate::{WAIT, workspace};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tool from the test venv, or `None` (with a note) when it is missing
/// outside CI. In CI a missing tool is a failure: `scripts/test` installs it.
pub fn venv_tool(name: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("COHORT_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join(".venv"));
    let path = venv.join("bin").join(name);
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} is missing: scripts/test installs it (scripts/venv)",
            path.display()
        );
    }
    eprintln!(
        "SKIPPED: {} is missing; run scripts/test (it installs grpcurl and grpcio)",
        path.display()
    );
    None
}

/// Runs grpcurl with `args` against `addr`; returns stdout, or panics with
/// stderr when grpcurl fails.
pub fn grpcurl(tool: &Path, args: &[&str]) -> String {
    let out = grpcurl_command(tool, args).output().expect("run grpcurl");
    assert!(
        out.status.success(),
        "grpcurl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// grpcurl with `args`, given at most [`WAIT`] unless they say otherwise.
fn grpcurl_command(tool: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(tool);
    if !args.contains(&"-max-time") {
        cmd.args(["-max-time", &WAIT.as_secs().to_string()]);
    }
    cmd.args(args);
    cmd
}

/// Runs grpcurl and returns (success, stdout + stderr) without asserting.
pub fn grpcurl_raw(tool: &Path, args: &[&str]) -> (bool, String) {
    let out = grpcurl_command(tool, args).output().expect("run grpcurl");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// A program on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// `cohortctl ARGS` against `master` (`COHORT_MASTER`: one address or
/// several); its stdout, after checking it succeeded.
pub fn cohortctl(master: &str, args: &[&str]) -> String {
    let (code, out, err) = cohortctl_raw(master, args);
    assert_eq!(code, Some(0), "cohortctl {args:?}: {err}");
    out
}

/// `cohortctl ARGS` that may fail: its exit code, stdout and stderr.
pub fn cohortctl_raw(master: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(crate::bin("cohortctl"))
        .env(cohort::env::MASTER, master)
        .args(args)
        .output()
        .expect("run cohortctl");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}
