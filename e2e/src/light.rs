//! Light members for scale tests and benchmarks: raw Join streams that say
//! hello and ready, heartbeat at the interval the master gives them (the
//! welcome, then `settings` frames), count the deliveries of one action,
//! and join again with the SDK's jittered backoff (shortened) when their
//! stream ends. Each has its own connection, as members in separate
//! processes do; [`Light::multiplexed`] puts many on one.

use cohort_proto::pb::{self, master_frame::Kind as In, member_frame::Kind as Out};
use cohort_proto::time::span;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// `n` light members; dropping this ends them.
pub struct Light {
    received: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Light {
    /// Starts `n` members named `{prefix}-{i}` against the master at
    /// `addr`, each on its own connection, counting deliveries of `action`.
    /// Must run in a tokio runtime.
    pub fn start(addr: &str, n: usize, prefix: &str, action: &'static str) -> Light {
        Light::multiplexed(addr, n, prefix, action, 1)
    }

    /// [`Light::start`] with `per_connection` members sharing each
    /// connection (HTTP/2 streams), as members behind one proxy would.
    pub fn multiplexed(
        addr: &str,
        n: usize,
        prefix: &str,
        action: &'static str,
        per_connection: usize,
    ) -> Light {
        // A descriptor per connection: past the usual soft limit of 1,024.
        if let Err(e) = cohort_process::raise_open_files() {
            eprintln!("cannot raise the open-files limit: {e}");
        }
        let received = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::with_capacity(n);
        let mut channel = None;
        for i in 0..n {
            if i % per_connection.max(1) == 0 {
                channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .ok()
                    .map(|e| e.connect_lazy());
            }
            let Some(ch) = channel.clone() else {
                continue;
            };
            let name = format!("{prefix}-{i}");
            tasks.push(tokio::spawn(member(ch, name, action, received.clone())));
        }
        Light { received, tasks }
    }

    /// Deliveries of the action so far, over all members.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::Relaxed)
    }
}

impl Drop for Light {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn frame(kind: Out) -> pb::MemberFrame {
    pb::MemberFrame { kind: Some(kind) }
}

async fn member(
    channel: tonic::transport::Channel,
    name: String,
    action: &'static str,
    got: Arc<AtomicUsize>,
) {
    let mut attempt = 0u32;
    loop {
        let (tx, rx) = mpsc::channel(8);
        let hello = pb::Hello {
            role: pb::Role::Worker as i32,
            name: name.clone(),
            accepts_batches: true,
            ..Default::default()
        };
        let _ = tx.send(frame(Out::Hello(hello))).await;
        let _ = tx.send(frame(Out::Ready(pb::Ready::default()))).await;
        let mut client = pb::membership_client::MembershipClient::new(channel.clone());
        if let Ok(response) = client
            .join(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            attempt = 0;
            // The interval the master gives, in ms (the welcome's, then
            // each settings frame's).
            let interval = AtomicU64::new(1000);
            // In this task, not one of their own: dropping the member
            // (aborting this task) ends its stream.
            let beat = async {
                let mut seq = 0;
                loop {
                    let ms = interval.load(Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    seq += 1;
                    let hb = pb::Heartbeat {
                        seq,
                        ..Default::default()
                    };
                    if tx.send(frame(Out::Heartbeat(hb))).await.is_err() {
                        return;
                    }
                }
            };
            let mut inbound = response.into_inner();
            let read = async {
                let follow = |s: Option<&pb::Settings>| {
                    if let Some(d) = s.and_then(|s| span(s.heartbeat_interval.as_ref())) {
                        interval.store(d.as_millis().max(10) as u64, Ordering::Relaxed);
                    }
                };
                while let Ok(Some(f)) = inbound.message().await {
                    let n = match f.kind {
                        Some(In::Welcome(w)) => {
                            follow(w.settings.as_ref());
                            0
                        }
                        Some(In::Settings(s)) => {
                            follow(Some(&s));
                            0
                        }
                        Some(In::Deliver(e)) => usize::from(e.action == action),
                        Some(In::DeliverBatch(b)) => {
                            b.envelopes.iter().filter(|e| e.action == action).count()
                        }
                        _ => 0,
                    };
                    got.fetch_add(n, Ordering::Relaxed);
                }
            };
            tokio::select! {
                _ = beat => {}
                _ = read => {}
            }
        }
        // The SDK's backoff, from 200 ms instead of 1 s: ×1.6, ±20 %.
        attempt += 1;
        let base = 200.0 * 1.6f64.powi(attempt.min(6) as i32);
        let jitter = 0.8 + 0.4 * spread(&name, attempt);
        tokio::time::sleep(Duration::from_millis((base * jitter) as u64)).await;
    }
}

/// A deterministic spread in [0, 1) per member and attempt.
fn spread(name: &str, attempt: u32) -> f64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (name, attempt).hash(&mut h);
    (h.finish() % 10_000) as f64 / 10_000.0
}

/// How many members the master counts READY (0 if it does not answer).
pub async fn ready_count(addr: &str) -> usize {
    state_count(addr, pb::MemberState::Ready).await
}

/// How many members the master counts in `state` (0 if it does not answer).
pub async fn state_count(addr: &str, state: pb::MemberState) -> usize {
    let Ok(mut c) = pb::control_client::ControlClient::connect(format!("http://{addr}")).await
    else {
        return 0;
    };
    let Ok(info) = c.cluster_info(pb::ClusterInfoRequest {}).await else {
        return 0;
    };
    info.into_inner()
        .counts
        .iter()
        .filter(|c| c.state == state as i32)
        .map(|c| c.count as usize)
        .sum()
}
