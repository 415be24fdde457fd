//! The demo app: a small HTTP/1.1 server on hyper (what users copy). `GET /` tells which process
//! answered, `GET /cache` shows the cache the agent refreshes (and counts of
//! other messages by action), `GET /healthz` answers 200 while healthy
//! (503 after `POST /sick`), and with
//! `--demo-faults`, `POST /crash` takes the fatal-error path. Every
//! response closes its connection, so a retiring worker holds nothing.

use bytes::Bytes;
use cohort::Member;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
    /// Whether `POST /crash` and `POST /grow` are enabled.
    pub demo_faults: bool,
    /// Memory `POST /grow` holds on to (a leak, for max_rss).
    pub grown: Mutex<Vec<Vec<u8>>>,
    /// Cancelled to stop taking connections (fatal path, shutdown).
    pub stop_accepting: CancellationToken,
    /// `POST /sick` was called: `GET /healthz` answers 503.
    pub sick: std::sync::atomic::AtomicBool,
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
                        if let Err(e) = handle(stream, app).await {
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

/// Serves one connection: HTTP/1.1 without keep-alive, a bounded request
/// head, and 10 s to send it.
async fn handle(stream: TcpStream, app: Arc<App>) -> Result<(), hyper::Error> {
    let service = service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, std::convert::Infallible>(route(&req, &app).await) }
    });
    http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(MAX_HEAD)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), service)
        .await
}

async fn route(req: &Request<Incoming>, app: &Arc<App>) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/") => json(
            StatusCode::OK,
            serde_json::json!({
                "pid": std::process::id(),
                "ppid": std::os::unix::process::parent_id(),
                "name": app.member.name(),
                "instance_id": app.member.instance_id(),
            }),
        ),
        (&Method::GET, "/cache") => {
            let body = {
                let cache = app.cache.lock().unwrap_or_else(|p| p.into_inner());
                let received = app.received.lock().unwrap_or_else(|p| p.into_inner());
                serde_json::json!({ "refreshes": cache.0, "data": cache.1, "messages": *received })
            };
            json(StatusCode::OK, body)
        }
        (&Method::GET, "/healthz") => match app.sick.load(std::sync::atomic::Ordering::Relaxed) {
            true => json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"healthy": false}),
            ),
            false => json(StatusCode::OK, serde_json::json!({"healthy": true})),
        },
        (&Method::POST, "/sick") if app.demo_faults => {
            tracing::warn!("POST /sick: GET /healthz fails from now on");
            app.sick.store(true, std::sync::atomic::Ordering::Relaxed);
            json(StatusCode::OK, serde_json::json!({"healthy": false}))
        }
        (&Method::POST, "/crash") if app.demo_faults => {
            tracing::error!("POST /crash: simulating a fatal error");
            // The fatal path runs beside this response, not before it.
            let app = app.clone();
            let name = app.member.name();
            tokio::spawn(async move {
                if let Err(e) = app
                    .member
                    .leave(true, "fatal error (POST /crash demo fault)")
                    .await
                {
                    tracing::warn!(error = %e, "could not tell the master");
                }
                app.stop_accepting.cancel();
            });
            json(
                StatusCode::ACCEPTED,
                serde_json::json!({ "crashing": true, "pid": std::process::id(), "name": name }),
            )
        }
        (&Method::POST, "/grow") if app.demo_faults => {
            // `?mib=N` (default 64): allocate and touch N MiB and keep it.
            let mib: usize = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("mib="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(64)
                .min(1024);
            let mut grown = app.grown.lock().unwrap_or_else(|p| p.into_inner());
            grown.push(vec![1u8; mib << 20]);
            let held: usize = grown.iter().map(Vec::len).sum();
            tracing::warn!(
                mib,
                held_mib = held >> 20,
                "POST /grow: holding more memory"
            );
            json(
                StatusCode::OK,
                serde_json::json!({ "held_mib": held >> 20 }),
            )
        }
        (&Method::GET | &Method::POST, _) => json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": "not found"}),
        ),
        _ => json(
            StatusCode::METHOD_NOT_ALLOWED,
            serde_json::json!({"error": "method not allowed"}),
        ),
    }
}

fn json(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
