//! Accepting connections on the gRPC address, with bounds: at most
//! `max_connections` at once, and a connection that has not sent the first
//! bytes of its HTTP/2 (or TLS) handshake within `handshake_timeout` is
//! closed, so silent sockets cannot pile up. Established connections are
//! watched by HTTP/2 keepalive.
//!
//! A connection past the limit is counted, logged (once a second), and,
//! on a plaintext address, answered: every call it makes gets
//! RESOURCE_EXHAUSTED saying why, as a gRPC status (at most
//! [`ANSWERING`] such connections at once, each for at most
//! `handshake_timeout`; past that, and over TLS, it is closed).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Bytes a client sends first: the HTTP/2 connection preface is 24; a TLS
/// ClientHello is longer.
const HANDSHAKE_BYTES: usize = 24;

/// Refused connections answered with a status at once; more are closed.
pub const ANSWERING: usize = 32;

/// The bounds on connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long a new connection may take to start its handshake.
    pub handshake_timeout: Duration,
}

/// An accepted connection; its place under `max_connections` is given back
/// when it closes.
pub struct Connection {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Accepts on `listener`, handing over connections that started their
/// handshake in time, as a stream for tonic; stops when tonic drops the
/// stream (ending it ourselves would end tonic's serve loop before its
/// graceful-shutdown signal runs).
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    refusals: Refusals,
) -> ReceiverStream<io::Result<Connection>> {
    let (tx, rx) = mpsc::channel(64);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let answering = Arc::new(Semaphore::new(ANSWERING));
    tokio::spawn(async move {
        let mut last_refusal_log: Option<Instant> = None;
        let mut refused = 0u64;
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    // Out of file descriptors and the like: let it pass.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                refused += 1;
                refusals.count.inc();
                if last_refusal_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        refused,
                        peer.addr = ?stream.peer_addr().ok(),
                        "connection limit reached: refusing new connections (raise [limits] max_connections if this is expected)"
                    );
                    last_refusal_log = Some(Instant::now());
                }
                if refusals.answer
                    && let Ok(slot) = answering.clone().try_acquire_owned()
                {
                    tokio::spawn(answer_refused(stream, limits, slot));
                }
                continue;
            };
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(limits.handshake_timeout, started(&stream)).await {
                    Ok(true) => {
                        let conn = Connection {
                            stream,
                            _permit: permit,
                        };
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(false) => {} // closed before a word
                    Err(_) => tracing::debug!(
                        peer.addr = ?stream.peer_addr().ok(),
                        timeout_ms = limits.handshake_timeout.as_millis() as u64,
                        "closing a connection that sent no handshake in time"
                    ),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Waits until the peer has sent the first bytes of a handshake (false if
/// it closed first).
async fn started(stream: &TcpStream) -> bool {
    let mut buf = [0u8; HANDSHAKE_BYTES];
    loop {
        match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) if n >= HANDSHAKE_BYTES => return true,
            // Part of it: peek returns at once while bytes wait unread.
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// What happens to connections past `max_connections`.
#[derive(Clone, Debug, Default)]
pub struct Refusals {
    /// Counts them (`cohort_connections_refused_total`).
    pub count: prometheus_client::metrics::counter::Counter,
    /// Answer their calls with a status (plaintext only: over TLS the
    /// handshake is tonic's, after this).
    pub answer: bool,
}

/// Serves a refused connection for a little while: each call gets
/// RESOURCE_EXHAUSTED and the reason, then the connection closes.
async fn answer_refused(stream: TcpStream, limits: ConnectionLimits, _slot: OwnedSemaphorePermit) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let message = format!(
        "the master has {} connections open, the most [limits] max_connections allows: \
         retry later, or raise max_connections",
        limits.max_connections
    );
    let service = hyper::service::service_fn(move |_| {
        let response = hyper::Response::builder()
            .header("content-type", "application/grpc")
            .header(
                "grpc-status",
                (tonic::Code::ResourceExhausted as i32).to_string(),
            )
            .header("grpc-message", message.as_str())
            .body(http_body_util::Empty::<hyper::body::Bytes>::new());
        async move { response }
    });
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(limits.handshake_timeout, connection).await;
}
