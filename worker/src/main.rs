//! `cohort-worker [--http ADDR] [--demo-faults] [--exec -- CMD ARGS]`: reads
//! `COHORT_*` and `LISTEN_FDS`, runs the demo worker (or CMD). Exit codes:
//! 0 after a clean leave, the payload's status with `--exec`, 70 after the
//! fatal-error path, 64 for bad settings, 1 on failure.

use cohort_worker::{Settings, listeners::Inherited};
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: cohort-worker [--http ADDR] [--demo-faults] [--exec -- CMD ARGS]
  --http ADDR     serve HTTP here when no 'http' listener is inherited (env COHORT_HTTP_ADDR; port 0 ok)
  --demo-faults   enable POST /crash (the fatal-error path), for demos and tests only
  --exec -- CMD   run CMD as the payload; messenger over JSON lines on fd $COHORT_CHANNEL_FD";

fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Settings, String> {
    let mut s = Settings {
        inherited: Inherited::parse(
            env("LISTEN_FDS").as_deref(),
            env("LISTEN_FDNAMES").as_deref(),
        ),
        drain: Duration::from_secs(30),
        ..Settings::default()
    };
    let http = env("COHORT_HTTP_ADDR");
    let mut http_flag = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--http" => http_flag = Some(it.next().ok_or("--http needs an address")?.clone()),
            "--demo-faults" => s.demo_faults = true,
            "--exec" => {
                s.exec = it.by_ref().skip_while(|a| *a == "--").cloned().collect();
                if s.exec.is_empty() {
                    return Err("--exec needs a command: --exec -- CMD ARGS".into());
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if let Some(addr) = http_flag.or(http) {
        s.http = Some(
            addr.parse()
                .map_err(|_| format!("{addr:?} is not an address like 127.0.0.1:8080"))?,
        );
    }
    Ok(s)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    cohort_process::init_from_env();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let settings = match parse(&args, |k| std::env::var(k).ok()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cohort-worker: {e}");
            return ExitCode::from(64);
        }
    };
    let builder = match cohort::MemberBuilder::from_env() {
        Ok(b) => b.role(cohort::Role::Worker),
        Err(e) => {
            eprintln!("cohort-worker: {e}");
            return ExitCode::from(64);
        }
    };
    let shutdown = cohort_process::shutdown_signal();
    match cohort_worker::run(builder, settings, shutdown).await {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "cohort-worker failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_env() {
        let none = |_: &str| None;
        let s = parse(
            &[
                "--http".into(),
                "127.0.0.1:0".into(),
                "--demo-faults".into(),
            ],
            none,
        )
        .expect("ok");
        assert!(s.demo_faults && s.http.is_some());
        let s = parse(
            &[
                "--exec".into(),
                "--".into(),
                "sh".into(),
                "-c".into(),
                "x".into(),
            ],
            none,
        )
        .expect("ok");
        assert_eq!(s.exec, ["sh", "-c", "x"]);
        assert!(parse(&["--exec".into()], none).is_err());
        assert!(
            parse(&["--nope".into()], none)
                .expect_err("bad")
                .contains("--nope")
        );
        let s = parse(&[], |k| (k == "LISTEN_FDS").then(|| "1".to_string())).expect("ok");
        assert_eq!(s.inherited.names, ["unknown"]);
    }
}
