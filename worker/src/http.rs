//! The demo app: a small HTTP/1.1 server. `GET /` tells which process
//! answered, `GET /cache` shows the cache the agent refreshes (and counts of
//! other messages by action), and with
//! `--demo-faults`, `POST /crash` takes the fatal-error path. Every
//! response closes its connection, so a retiring worker holds nothing.

use cohort::Member;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// Shared by the request handlers.
pub struct App {
    /// This worker's membership.
    pub member: Member,
    /// The latest `refresh` payload and how many were received.
    pub cache: Mutex<(u64, serde_json::Value)>,
    /// Other messages received, counted by action.
    pub received: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Whether `POST /crash` is enabled.
    pub demo_faults: bool,
    /// Cancelled to stop taking connections (fatal path, shutdown).
    pub stop_accepting: CancellationToken,
}

/// Accepts until `app.stop_accepting`, then waits (up to `drain`) for the
/// requests in flight.
pub async fn serve(listener: TcpListener, app: Arc<App>, drain: Duration) {
    let tasks = TaskTracker::new();
    loop {
        tokio::select! {
            _ = app.stop_accepting.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let app = app.clone();
                    tasks.spawn(async move {
                        if let Err(e) = handle(stream, &app).await {
                            tracing::debug!(error = %e, "request failed");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    // Our copy of the shared socket closes; the master and the other
    // workers keep theirs, so the port never refuses a connection.
    drop(listener);
    tasks.close();
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        tracing::warn!("requests still running after the drain time");
    }
}

async fn handle(mut stream: TcpStream, app: &App) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        let mut chunk = [0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "slow client"))??;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return respond(&mut stream, 431, r#"{"error":"request head too large"}"#).await;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (method, path) {
        ("GET", "/") => {
            let body = serde_json::json!({
                "pid": std::process::id(),
                "ppid": std::os::unix::process::parent_id(),
                "name": app.member.name(),
                "instance_id": app.member.instance_id(),
            });
            respond(&mut stream, 200, &body.to_string()).await
        }
        ("GET", "/cache") => {
            let body = {
                let cache = app.cache.lock().unwrap_or_else(|p| p.into_inner());
                let received = app.received.lock().unwrap_or_else(|p| p.into_inner());
                serde_json::json!({ "refreshes": cache.0, "data": cache.1, "messages": *received })
            };
            respond(&mut stream, 200, &body.to_string()).await
        }
        ("POST", "/crash") if app.demo_faults => {
            tracing::error!("POST /crash: simulating a fatal error");
            let body = serde_json::json!({ "crashing": true, "pid": std::process::id(), "name": app.member.name() });
            respond(&mut stream, 202, &body.to_string()).await?;
            if let Err(e) = app
                .member
                .leave(true, "fatal error (POST /crash demo fault)")
                .await
            {
                tracing::warn!(error = %e, "could not tell the master");
            }
            app.stop_accepting.cancel();
            Ok(())
        }
        ("GET" | "POST", _) => respond(&mut stream, 404, r#"{"error":"not found"}"#).await,
        _ => respond(&mut stream, 405, r#"{"error":"method not allowed"}"#).await,
    }
}

async fn respond(stream: &mut TcpStream, code: u16, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        202 => "Accepted",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Request Header Fields Too Large",
    };
    let msg = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(msg.as_bytes()).await?;
    stream.shutdown().await
}
