//! `cohort-worker`: the demo worker. It joins the master as a worker,
//! serves HTTP on the inherited `http` listener (or `--http ADDR`), keeps an
//! in-memory cache that `refresh` messages update (the seed's cache-refresh
//! example), answers `ping`, and leaves cleanly on SIGTERM or drain. With
//! `--exec -- CMD` it runs CMD instead and bridges the messenger to it.
//!
//! Modules: [`http`] (the demo app), [`exec`] (the payload bridge),
//! [`listeners`] (`LISTEN_FDS`).

pub mod exec;
pub mod http;
pub mod listeners;

use cohort::MemberBuilder;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Exit status after the fatal-error path (`EX_SOFTWARE`).
pub const EXIT_FATAL: i32 = 70;

/// How the worker runs.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Its own HTTP address, beside an inherited `http` listener or alone;
    /// reported to the master in the label `http` (health probes go there).
    pub http: Option<SocketAddr>,
    /// Enable `POST /crash`.
    pub demo_faults: bool,
    /// Run this program instead of the demo app.
    pub exec: Vec<String>,
    /// With `exec`: report ready once the program ran this long, unless it
    /// said so first.
    pub ready_after: Option<Duration>,
    /// Inherited listeners.
    pub inherited: listeners::Inherited,
    /// How long in-flight requests may take after the worker stops accepting.
    pub drain: Duration,
}

/// Joins and runs until `shutdown`, a drain request, or (with `--exec`) the
/// payload's exit. Returns the process exit code.
pub async fn run(
    builder: MemberBuilder,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<i32> {
    // SIGTERM while still joining (an unreachable master, a name still
    // held) ends the worker at once: as PID 1 in a container nothing else
    // would.
    let mut shutdown = std::pin::pin!(shutdown);
    // Its own address (--http), bound before joining so that the master
    // learns it (label `http`: where health probes go), beside an
    // inherited shared listener or alone.
    let own = match (&settings.http, settings.exec.is_empty()) {
        (Some(addr), true) => {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Some(l)
        }
        _ => None,
    };
    let builder = match &own {
        Some(l) => builder.label("http", l.local_addr()?.to_string()),
        None => builder,
    };
    let member = tokio::select! {
        m = builder.join() => m?,
        _ = &mut shutdown => {
            tracing::info!("stopped before joining the master");
            return Ok(0);
        }
    };
    member.answer_pings();
    if !settings.exec.is_empty() {
        let code = exec::run(
            member.clone(),
            &settings.exec,
            settings.inherited.names.len(),
            settings.ready_after,
            shutdown,
        )
        .await;
        member.close().await;
        return code;
    }

    let shared = match settings.inherited.take("http") {
        Some(l) => Some(tokio::net::TcpListener::from_std(l)?),
        None => None,
    };
    let own = own.map(tokio::net::TcpListener::from_std).transpose()?;
    let app = Arc::new(http::App {
        member: member.clone(),
        cache: Mutex::new((0, serde_json::Value::Null)),
        received: Mutex::default(),
        demo_faults: settings.demo_faults,
        grown: Mutex::default(),
        stop_accepting: CancellationToken::new(),
        sick: Default::default(),
    });
    let mut refresh = member.on("refresh");
    let cache_app = app.clone();
    tokio::spawn(async move {
        while let Some(msg) = refresh.recv().await {
            let data = serde_json::from_slice(&msg.data).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&msg.data).into())
            });
            let mut cache = cache_app.cache.lock().unwrap_or_else(|p| p.into_inner());
            *cache = (cache.0 + 1, data);
            tracing::info!(from = %msg.from, refreshes = cache.0, "cache refreshed");
        }
    });
    let mut other = member.incoming(1024);
    let count_app = app.clone();
    tokio::spawn(async move {
        while let Some(msg) = other.recv().await {
            let mut received = count_app.received.lock().unwrap_or_else(|p| p.into_inner());
            // Bounded: a sender inventing actions cannot grow this forever.
            if received.len() < 256 || received.contains_key(&msg.action) {
                *received.entry(msg.action).or_default() += 1;
            }
        }
    });
    let mut servers = Vec::new();
    for (l, own) in [(shared, false), (own, true)] {
        let Some(l) = l else { continue };
        let addr = l.local_addr()?;
        tracing::info!(http.addr = %addr, own, "serving HTTP");
        if own {
            // Its own address, said as the master says its own.
            println!("READY worker http {addr}");
        }
        servers.push(tokio::spawn(http::serve(l, app.clone(), settings.drain)));
    }
    member.ready().await?;
    tracing::info!(member.name = %member.name(), "ready");
    let mut code = 0;
    tokio::pin!(shutdown);
    tokio::select! {
        _ = &mut shutdown => tracing::info!("shutting down"),
        reason = member.drained() => tracing::info!(reason, "drained by the master"),
        _ = app.stop_accepting.cancelled() => {
            // Fatal path: the master starts a replacement and sends SIGTERM
            // once it is ready; without a master, give up after the drain time.
            code = EXIT_FATAL;
            tokio::select! {
                _ = &mut shutdown => tracing::info!("replacement ready; exiting"),
                _ = tokio::time::sleep(settings.drain) => {}
            }
        }
    }
    app.stop_accepting.cancel();
    for server in servers {
        let _ = server.await;
    }
    member.close().await;
    Ok(code)
}
