//! Harness for end-to-end tests: finds (or builds) the three binaries,
//! starts them on ephemeral ports with captured output, waits for their
//! readiness lines with deadlines, and kills every process on drop, so a
//! failing test leaves nothing behind.
//!
//! Tools from `scripts/venv` (grpcurl, Python with grpcio) are found through
//! `COHORT_TEST_VENV` or the workspace's `.venv`.

pub mod light;
pub mod metrics;
mod watchdog;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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
        cmd.env("COHORT_MASTER", self.url())
            .env("COHORT_NAME", name);
        Proc::spawn(name, cmd)
    }
}

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

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what`
/// after [`WAIT`].
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 request on a fresh connection; returns the status and body.
pub fn http(addr: &str, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    Ok((status, if chunked { unchunk(body) } else { body.into() }))
}

/// A chunked HTTP/1.1 body, joined (what Prometheus sends past 4 KiB).
fn unchunk(mut rest: &str) -> String {
    let mut body = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16);
        let Some((chunk, next)) = size
            .ok()
            .filter(|n| *n > 0)
            .and_then(|n| Some((after.get(..n)?, after.get(n..)?)))
        else {
            break;
        };
        body.push_str(chunk);
        rest = next.trim_start_matches("\r\n");
    }
    body
}

/// Whether `pid` is a live (not zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next()),
            Some(Some('Z')) | Some(Some('X'))
        ),
        Err(_) => false,
    }
}

/// A client loop of HTTP GETs on its own thread, bounded in time.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<(u32, Vec<String>)>>,
}

impl Load {
    /// Starts GETting `http://addr/` in a loop (at most 60 s).
    pub fn start(addr: &str) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, addr) = (stop.clone(), addr.to_string());
        let thread = std::thread::spawn(move || {
            let (mut ok, mut failures) = (0u32, Vec::new());
            let end = Instant::now() + Duration::from_secs(60);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < end {
                match http(&addr, "GET", "/") {
                    Ok((200, _)) => ok += 1,
                    Ok((code, body)) => failures.push(format!("{code} {body}")),
                    Err(e) => failures.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (ok, failures)
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the loop; returns (successful requests, failures).
    pub fn stop(mut self) -> (u32, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A Control client for the master at `addr`.
pub async fn control(
    addr: &str,
) -> cohort_proto::pb::control_client::ControlClient<tonic::transport::Channel> {
    cohort_proto::pb::control_client::ControlClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to Control")
}

/// Every member the master lists.
pub async fn members(addr: &str) -> Vec<cohort_proto::pb::MemberInfo> {
    members_with(addr, None).await
}

/// Every member the master lists, asking with a bearer token.
pub async fn members_with(addr: &str, token: Option<&str>) -> Vec<cohort_proto::pb::MemberInfo> {
    let mut request = tonic::Request::new(cohort_proto::pb::ListMembersRequest::default());
    cohort_proto::auth::Bearer::new(token)
        .expect("token fits a header")
        .apply(&mut request);
    control(addr)
        .await
        .list_members(request)
        .await
        .expect("ListMembers")
        .into_inner()
        .members
}

/// Polls `check` every 50 ms (async) until it returns `Some`, or panics
/// with `what` after [`WAIT`].
pub async fn eventually_async<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        // A check that never returns (a call nobody answers) counts as a
        // miss at the deadline.
        if let Ok(Some(v)) = tokio::time::timeout_at(deadline, check()).await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the master lists exactly `names`, each READY, and returns them.
pub async fn wait_ready(addr: &str, names: &[&str]) -> Vec<cohort_proto::pb::MemberInfo> {
    wait_ready_with(addr, names, None).await
}

/// [`wait_ready`] against a master that wants a bearer token.
pub async fn wait_ready_with(
    addr: &str,
    names: &[&str],
    token: Option<&str>,
) -> Vec<cohort_proto::pb::MemberInfo> {
    let ready = cohort_proto::pb::MemberState::Ready as i32;
    eventually_async(&format!("{names:?} READY"), || async {
        let m = members_with(addr, token).await;
        let listed: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        (listed == names && m.iter().all(|m| m.state == ready)).then_some(m)
    })
    .await
}

/// Sends `signal` (e.g. `KILL`, `TERM`) to `pid`.
pub fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// [`wait_ready`] against a TLS master (`ca` signed its certificate;
/// `identity` is a client certificate and key for mTLS).
pub async fn wait_ready_tls(
    addr: &str,
    names: &[&str],
    ca: &Path,
    identity: Option<&(PathBuf, PathBuf)>,
) -> Vec<cohort_proto::pb::MemberInfo> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("ca")));
    if let Some((c, k)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(c).expect("cert"),
            std::fs::read(k).expect("key"),
        ));
    }
    // Each try is bounded, so one that stalls is tried again.
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .expect("url")
        .tls_config(tls.timeout(Duration::from_secs(5)))
        .expect("tls")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    let ready = cohort_proto::pb::MemberState::Ready as i32;
    eventually_async(&format!("{names:?} READY over TLS"), || {
        let endpoint = endpoint.clone();
        async move {
            let channel = endpoint.connect().await.ok()?;
            let mut client = cohort_proto::pb::control_client::ControlClient::new(channel);
            let m = client
                .list_members(cohort_proto::pb::ListMembersRequest::default())
                .await
                .ok()?
                .into_inner()
                .members;
            let listed: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
            (listed == names && m.iter().all(|m| m.state == ready)).then_some(m)
        }
    })
    .await
}

/// Subscribes to the master's `WatchEvents` (current state first).
pub async fn watch(addr: &str) -> tonic::Streaming<cohort_proto::pb::ClusterEvent> {
    control(addr)
        .await
        .watch_events(cohort_proto::pb::WatchEventsRequest {})
        .await
        .expect("WatchEvents")
        .into_inner()
}

/// The next event, or a panic after [`WAIT`].
pub async fn next_event(
    events: &mut tonic::Streaming<cohort_proto::pb::ClusterEvent>,
) -> cohort_proto::pb::ClusterEvent {
    tokio::time::timeout(WAIT, events.message())
        .await
        .expect("an event in time")
        .expect("the event stream is healthy")
        .expect("the event stream is open")
}

/// Resident memory of `pid` in MiB (0 if it is gone).
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The live processes whose parent is `parent`.
pub fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            ppid == Some(parent) && alive(*pid)
        })
        .collect()
}

/// The line a [`chatty_config`] worker's payload prints without pause.
pub const CHATTY_LINE: &str = "a chatty child line";

/// A master config with one local worker, `worker` (a `cohort-worker`
/// binary), whose `--exec` payload reports ready, waits for any message,
/// and then prints [`CHATTY_LINE`] as fast as it can; no agent.
pub fn chatty_config(worker: &Path) -> String {
    let payload = format!(
        r#"fd=$COHORT_CHANNEL_FD; echo '{{"type":"ready"}}' >&"$fd"; read -r _ <&"$fd"; exec yes '{CHATTY_LINE}'"#
    );
    format!(
        "[agent]\ncount = 0\n[worker]\ncount = 1\ncommand = [{:?}, \"--exec\", \"--\", \"sh\", \"-c\", {payload:?}]\n",
        worker.display().to_string()
    )
}
