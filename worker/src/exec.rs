//! `--exec -- CMD ARGS`: runs any program as the worker's payload. The
//! payload inherits the shared listeners (fds 3..) and gets the messenger
//! over a JSON-lines socket at fd `COHORT_CHANNEL_FD`:
//!
//! ```text
//! payload → worker  {"type":"ready"}   (or with "labels":{"http":"127.0.0.1:3001"}: its own address, for health probes)
//!                   {"type":"send","target":"all"|"workers"|"agent"|"random"|"random:ROLE"|"member:NAME","action":"a","data":ANY}
//!                   {"type":"reply","to":"ID","data":ANY}
//! worker → payload  {"type":"message","id":"ID","from":"worker-2","action":"a","data":ANY,"expects_reply":true}
//!                   {"type":"error","message":"..."}
//! ```
//!
//! `data` is any JSON value, carried as its JSON text. A `send` takes no
//! other fields: only a `reply`, to the id of a message that had
//! `"expects_reply":true` (a request the master delivered), answers
//! anything. The worker exits with the payload's status.

use bytes::BytesMut;
use cohort::{Member, Message, Target};
use cohort_process::child;
use cohort_process::lines::Lines;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;

/// Requests awaiting the payload's reply, at most.
const MAX_PENDING: usize = 4096;
/// Longest payload output line forwarded whole (the master keeps 1 KiB).
const MAX_OUTPUT_LINE: usize = 16 << 10;

/// The shared target grammar (`Target`'s `FromStr`), but a member only as
/// `member:NAME`: a program's typo must not become a member's name. `agent`
/// stays the role here, as the payload protocol has always said.
fn parse_target(t: &str) -> Result<Target, String> {
    let t = if t == "agent" { "agents" } else { t };
    match t.parse()? {
        Target::Member(_) if !t.starts_with("member:") => Err(format!(
            "unknown target {t:?}: use all, agents, workers, random, random:ROLE or member:NAME"
        )),
        target => Ok(target),
    }
}

fn data_of(v: Option<&Value>) -> Vec<u8> {
    v.map(|d| d.to_string().into_bytes()).unwrap_or_default()
}

/// Runs the payload until it exits; returns its exit code (128 + signal when
/// killed). `shutdown` asks the payload (and its process group) to stop.
/// With `ready_after`, the member reports ready once the payload has run
/// that long, unless the payload said so first.
pub async fn run(
    member: Member,
    command: &[String],
    listen_fds: usize,
    ready_after: Option<Duration>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<i32> {
    let Some((program, args)) = command.split_first() else {
        anyhow::bail!("--exec needs a command: cohort-worker --exec -- CMD ARGS");
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    let target: RawFd = 3 + RawFd::try_from(listen_fds)?;
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env(cohort::env::CHANNEL_FD, target.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cohort_process::child::prepare(&mut cmd, vec![theirs_fd], target);
    let mut child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {program}: {e}"))?;
    drop(theirs);
    let child_pid = child.id().unwrap_or(0);
    tracing::info!(program, pid = child_pid, "payload started");
    let output = [
        child
            .stdout
            .take()
            .map(|o| tokio::spawn(relay(o, tokio::io::stdout()))),
        child
            .stderr
            .take()
            .map(|e| tokio::spawn(relay(e, tokio::io::stderr()))),
    ];

    ours.set_nonblocking(true)?;
    let (reader, mut writer) = tokio::net::UnixStream::from_std(ours)?.into_split();
    let (out_tx, mut out_rx) = mpsc::channel::<Value>(1024);
    let writer_task = tokio::spawn(async move {
        while let Some(v) = out_rx.recv().await {
            let mut line = v.to_string();
            line.push('\n');
            if writer.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });

    let pending: Arc<Mutex<HashMap<String, Message>>> = Arc::default();
    let mut incoming = member.incoming(4096);
    let (tx, pend) = (out_tx.clone(), pending.clone());
    let to_payload = tokio::spawn(async move {
        while let Some(msg) = incoming.recv().await {
            let data = serde_json::from_slice::<Value>(&msg.data)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&msg.data).into_owned()));
            let line = json!({
                "type": "message", "id": msg.id, "from": msg.from, "action": msg.action,
                "data": data, "expects_reply": msg.expects_reply(),
            });
            if msg.expects_reply() {
                let mut p = pend.lock().unwrap_or_else(|e| e.into_inner());
                if p.len() < MAX_PENDING {
                    p.insert(msg.id.clone(), msg);
                }
            }
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });

    let from_member = member.clone();
    let from_payload = tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Err(message) = handle_line(&from_member, &pending, &line).await {
                let _ = out_tx
                    .send(json!({"type": "error", "message": message}))
                    .await;
            }
        }
    });

    let on_time = ready_after.map(|after| {
        let member = member.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if !member.is_ready() {
                tracing::info!(
                    after_ms = after.as_millis() as u64,
                    "payload still running: ready"
                );
                if let Err(e) = member.ready().await {
                    tracing::warn!(error = %e, "cannot report ready");
                }
            }
        })
    });
    let status = tokio::select! {
        s = child.wait() => s?,
        _ = shutdown => {
            // Our process group holds the payload and its children; when
            // only we were signalled (parent death), pass it on to them.
            let signal = |sig| {
                if child::leads_group() {
                    child::signal_own_group(sig);
                } else {
                    child::signal(child_pid, sig);
                }
            };
            signal(child::SIGTERM);
            match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(s) => s?,
                Err(_) => {
                    signal(child::SIGKILL);
                    child.wait().await?
                }
            }
        }
    };
    from_payload.abort();
    to_payload.abort();
    writer_task.abort();
    if let Some(t) = on_time {
        t.abort();
    }
    // What the payload printed last, unless something it started still
    // holds its output open.
    for task in output.into_iter().flatten() {
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    tracing::info!(code, "payload exited");
    Ok(code)
}

/// Copies the payload's output to ours as it is (where the master, systemd
/// or Kubernetes read it) and, on a remote member, forwards each line to
/// the master for `cohortctl logs` (`cohort::logs`).
async fn relay(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    let mut lines = Lines::new(MAX_OUTPUT_LINE);
    let mut buf = BytesMut::with_capacity(8 << 10);
    loop {
        let start = buf.len();
        match from.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let _ = to.write_all(&buf[start..]).await;
                let _ = to.flush().await;
            }
        }
        while let Ok(Some(line)) = lines.decode(&mut buf) {
            cohort::logs::forward("info", line);
        }
    }
    if let Ok(Some(line)) = lines.decode_eof(&mut buf) {
        cohort::logs::forward("info", line);
    }
}

async fn handle_line(
    member: &Member,
    pending: &Mutex<HashMap<String, Message>>,
    line: &str,
) -> Result<(), String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON ({e}): {line}"))?;
    match v["type"].as_str() {
        Some("ready") => {
            // `"labels": {"http": "127.0.0.1:3001"}`: strings only.
            let labels = match v.get("labels") {
                None | Some(Value::Null) => HashMap::new(),
                Some(Value::Object(map)) => map
                    .iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => Ok((k.clone(), s.clone())),
                        other => Err(format!("ready: labels[{k}] is {other}: labels are strings")),
                    })
                    .collect::<Result<_, _>>()?,
                Some(other) => {
                    return Err(format!(
                        "ready: labels is {other}: give an object of strings"
                    ));
                }
            };
            member
                .ready_with_labels(labels)
                .await
                .map_err(|e| e.to_string())
        }
        Some("send") => {
            let target = parse_target(v["target"].as_str().unwrap_or("all"))?;
            let action = v["action"]
                .as_str()
                .filter(|a| !a.is_empty())
                .ok_or("send needs an action")?;
            member
                .send(target, action.to_string(), data_of(v.get("data")))
                .await
                .map(|_| ())
                .map_err(|e| format!("send {action}: {e}"))
        }
        Some("reply") => {
            let to = v["to"]
                .as_str()
                .ok_or("reply needs \"to\": the message id")?;
            let msg = pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(to)
                .ok_or_else(|| format!("no request {to} is waiting for a reply"))?;
            msg.reply(data_of(v.get("data")))
                .await
                .map_err(|e| e.to_string())
        }
        _ => Err(format!(
            "unknown message type in {line}: use ready, send or reply"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cohort::Role;

    #[test]
    fn targets_parse_and_explain_mistakes() {
        assert_eq!(parse_target("all"), Ok(Target::All));
        assert_eq!(parse_target("workers"), Ok(Target::Role(Role::Worker)));
        assert_eq!(
            parse_target("member:worker-2"),
            Ok(Target::Member("worker-2".into()))
        );
        assert_eq!(parse_target("agent"), Ok(Target::Role(Role::Agent)));
        assert_eq!(
            parse_target("random:agent"),
            Ok(Target::Random(Role::Agent))
        );
        assert!(parse_target("member:").is_err());
        assert!(
            parse_target("everyone")
                .expect_err("bad")
                .contains("member:NAME")
        );
    }
}
