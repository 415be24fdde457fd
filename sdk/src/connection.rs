//! The connection task: one Join stream at a time, heartbeats with acks,
//! and reconnects with backoff that re-register under the same name.

use crate::Error;
use crate::backoff::{Backoff, random_unit};
use crate::builder::MemberBuilder;
use crate::event::Event;
use crate::masters::{ELECTION_PAUSE, Masters, Next};
use crate::shared::{Inner, Waiter, lock};
use crate::stats::Sampler;
use cohort_proto::auth::Bearer;
use cohort_proto::pb::{self, master_frame::Kind as In, member_frame::Kind as Out};
use cohort_proto::time::{duration, span};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::Stream;

/// Frames queued towards the master before senders wait.
const OUTBOUND_QUEUE: usize = 1024;
/// How long one join attempt may take to be answered, from connecting to
/// the welcome (or a refusal). A master that accepts connections but never
/// answers (stopped, hung) is tried again, as if unreachable. Longer than
/// the master's longest wait for a join's turn (10 s, `[limits]
/// join_rate`).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// Most sends packed into one `send_batch` frame.
const MAX_BATCH: usize = 256;
/// How often a remote member forwards its queued log lines.
const LOG_FLUSH: Duration = Duration::from_millis(250);
/// Lines per flush: [`crate::logs::LINES_PER_SECOND`] at [`LOG_FLUSH`].
const LOG_LINES_PER_FLUSH: usize = crate::logs::LINES_PER_SECOND / 4;

/// The metadata key in which a standby names the leader (SPEC §9b).
const LEADER_KEY: &str = "cohort-leader";
/// The TCP connect timeout with several masters: one that does not answer
/// (its host is down or cut off) is passed over for the next.
const CONNECT_ONE_OF_SEVERAL: Duration = Duration::from_secs(2);

/// Runs until the member closes. `first` learns how the first join went.
pub(crate) async fn run(
    inner: Arc<Inner>,
    cfg: MemberBuilder,
    first: oneshot::Sender<Result<(), Error>>,
) {
    let mut first = Some(first);
    let mut name = cfg.name.clone();
    let mut backoff = Backoff::default();
    let started = Instant::now();
    let mut sampler = Sampler::new();
    let mut masters = Masters::new(cfg.masters.clone());
    loop {
        let mut redirect = None;
        let addr = masters.current();
        let (established, result) = session(
            &inner,
            &cfg,
            &addr,
            &mut redirect,
            &mut name,
            &mut first,
            &mut sampler,
        )
        .await;
        *lock(&inner.out) = None;
        let reason = match &result {
            Ok(()) => "the stream to the master ended".to_string(),
            Err(e) => e.to_string(),
        };
        inner.fail_waiters(&reason);
        if inner.stop.is_cancelled() || inner.leaving.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        if let Some(leader) = redirect
            && masters.follow(leader.clone())
        {
            tracing::info!(master = %addr, leader, "a standby master named the leader; following");
            continue;
        }
        if established {
            masters.joined();
            backoff.reset();
            tracing::warn!(reason, "disconnected from the master; reconnecting");
            let _ = inner.events.send(Event::Disconnected {
                reason: reason.clone(),
            });
        }
        if let (Some(_), Err(e)) = (&first, &result) {
            // A refusal will not change by retrying; an unreachable master
            // or a name still held may.
            // ALREADY_EXISTS: the name is held by a live instance, usually
            // the one this replaces, still on its way out (a terminating
            // pod); it frees the name when it goes. RESOURCE_EXHAUSTED: the
            // cluster is full ([limits] max_members), as it may be for a
            // moment while a rollout surges.
            let transient = matches!(
                e.code(),
                tonic::Code::Unavailable
                    | tonic::Code::AlreadyExists
                    | tonic::Code::ResourceExhausted
            );
            let retry = transient && started.elapsed() < cfg.join_timeout;
            if !retry {
                if let Some(tx) = first.take() {
                    let _ = tx.send(result);
                }
                return;
            }
        }
        // With several masters: the next one at once, a pause only after
        // a whole pass failed.
        let next = masters.failed(&addr, &reason);
        if next == Next::Now && !established {
            continue;
        }
        let mut delay = match next {
            Next::Now => Duration::ZERO,
            Next::Soon => ELECTION_PAUSE.mul_f64(0.8 + 0.4 * random_unit()),
            Next::BackOff => backoff.next_delay(random_unit()),
        };
        if first.is_some() {
            // The last try of a first join comes at its deadline, not a
            // backoff after it.
            delay = delay.min(cfg.join_timeout.saturating_sub(started.elapsed()));
        }
        tracing::debug!(
            delay_ms = delay.as_millis() as u64,
            "reconnecting after delay"
        );
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// A channel to `addr`, with a short connect timeout when it is one of
/// several masters.
async fn connect(cfg: &MemberBuilder, addr: &str) -> Result<tonic::transport::Channel, Error> {
    match cfg.masters.len() {
        0 | 1 => crate::transport::connect(addr, &cfg.tls).await,
        _ => crate::transport::connect_within(addr, &cfg.tls, CONNECT_ONE_OF_SEVERAL).await,
    }
}

/// One Join stream to `addr`, from connect to its end. Returns whether the
/// master welcomed us, and why the stream ended; `redirect` learns the
/// leader a standby named.
async fn session(
    inner: &Arc<Inner>,
    cfg: &MemberBuilder,
    addr: &str,
    redirect: &mut Option<String>,
    name: &mut Option<String>,
    first: &mut Option<oneshot::Sender<Result<(), Error>>>,
    sampler: &mut Sampler,
) -> (bool, Result<(), Error>) {
    // A remote member forwards its own log lines (crate::logs), from the
    // first; the master captures a local child's output itself.
    let forward_logs = cfg.secret.is_empty();
    if forward_logs {
        crate::logs::enable();
    }
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let no_answer = || Error::Connect {
        addr: addr.to_string(),
        message: format!(
            "the master did not answer the join within {} s",
            ANSWER_TIMEOUT.as_secs()
        ),
    };
    let channel = tokio::select! {
        _ = inner.stop.cancelled() => return (false, Ok(())),
        c = tokio::time::timeout_at(deadline, connect(cfg, addr)) => match c {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return (false, Err(e)),
            Err(_) => return (false, Err(no_answer())),
        },
    };
    let max = cohort_proto::MAX_MESSAGE_BYTES;
    let mut client = pb::membership_client::MembershipClient::new(channel)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);

    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let hello = pb::Hello {
        role: inner.role.into(),
        name: name.clone().unwrap_or_default(),
        pid: std::process::id(),
        host: hostname(),
        labels: cfg.labels.clone(),
        version: cfg.version.clone(),
        secret: cfg.secret.clone(),
        accepts_batches: true,
        watch: cfg.watching(),
        app: cfg.app.clone(),
    };
    // The queue is new and empty: this cannot block.
    let _ = tx.try_send(pb::MemberFrame {
        kind: Some(Out::Hello(hello)),
    });
    let mut request = tonic::Request::new(Outgoing { rx, stash: None });
    match Bearer::new(cfg.current_token().as_deref()) {
        Ok(bearer) => bearer.apply(&mut request),
        Err(e) => return (false, Err(Error::Config(e))),
    }
    let response = tokio::select! {
        _ = inner.stop.cancelled() => return (false, Ok(())),
        r = tokio::time::timeout_at(deadline, client.join(request)) => match r {
            Ok(r) => r,
            Err(_) => return (false, Err(no_answer())),
        },
    };
    let mut inbound = match response {
        Ok(r) => r.into_inner(),
        // A failure below gRPC (TLS handshake, reset) is a connection
        // problem, not the master's answer.
        Err(s)
            if std::error::Error::source(&s).is_some()
                || matches!(s.code(), tonic::Code::Unknown | tonic::Code::Cancelled) =>
        {
            return (
                false,
                Err(Error::Connect {
                    addr: addr.to_string(),
                    message: crate::transport::chain(&s),
                }),
            );
        }
        Err(s) => {
            *redirect = s
                .metadata()
                .get(LEADER_KEY)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            return (false, Err(s.into()));
        }
    };
    let first_frame = tokio::select! {
        _ = inner.stop.cancelled() => return (false, Ok(())),
        f = tokio::time::timeout_at(deadline, inbound.message()) => match f {
            Ok(f) => f,
            Err(_) => return (false, Err(no_answer())),
        },
    };
    let welcome = match first_frame {
        Ok(Some(pb::MasterFrame {
            kind: Some(In::Welcome(w)),
        })) => w,
        Ok(_) => {
            return (
                false,
                Err(Error::Disconnected(
                    "the master did not send a welcome".into(),
                )),
            );
        }
        Err(s) => return (false, Err(s.into())),
    };
    // A master of several that lost its lease may still answer: never go
    // back to a lower term than one seen.
    let seen = inner.term.load(std::sync::atomic::Ordering::SeqCst);
    if welcome.term < seen {
        return (
            false,
            Err(Error::Disconnected(format!(
                "the master at {addr} welcomed with term {}, below term {seen} seen: it no longer leads",
                welcome.term
            ))),
        );
    }
    inner
        .term
        .store(welcome.term, std::sync::atomic::Ordering::SeqCst);
    let several = welcome.term > 0;
    let (heartbeat, dead_after) = timings(&welcome.settings.unwrap_or_default(), several);
    tracing::info!(member.name = %welcome.name, instance = %welcome.instance_id, "joined the master");
    *name = Some(welcome.name.clone());
    let reconnected = first.is_none();
    inner
        .identity
        .send_replace((welcome.name, welcome.instance_id.clone()));
    // Once ready, always ready: a new leader (or a restarted master) that
    // rebuilds its membership does not take it back.
    if welcome.cluster_ready {
        inner.cluster_ready.send_replace(true);
    }
    *lock(&inner.out) = Some(tx.clone());
    if inner.ready.load(std::sync::atomic::Ordering::SeqCst) {
        let labels = lock(&inner.ready_labels).clone();
        let _ = tx.try_send(pb::MemberFrame {
            kind: Some(Out::Ready(pb::Ready { labels })),
        });
    }
    match first.take() {
        Some(f) => {
            let _ = f.send(Ok(()));
        }
        None if reconnected => {
            let _ = inner.events.send(Event::Reconnected {
                instance_id: welcome.instance_id,
            });
        }
        None => {}
    }

    let mut log_ticker = tokio::time::interval(LOG_FLUSH);
    let mut beat = Beat::new(tx, heartbeat, dead_after);
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return (true, Ok(())),
            _ = beat.ticker.tick() => {
                if let Err(e) = beat.beat(sampler, true) {
                    return (true, Err(e));
                }
            }
            _ = log_ticker.tick(), if forward_logs => {
                let lines = crate::logs::take(LOG_LINES_PER_FLUSH);
                if !lines.is_empty() {
                    // A full queue drops the batch: logs never wait.
                    let _ = beat.tx.try_send(pb::MemberFrame {
                        kind: Some(Out::Logs(pb::LogLines { lines })),
                    });
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(pb::MasterFrame { kind: Some(kind) })) => {
                    let envelopes = match kind {
                        In::Deliver(env) => vec![env],
                        In::DeliverBatch(batch) => batch.envelopes,
                        In::HeartbeatAck(ack) => {
                            beat.acked(ack.seq);
                            continue;
                        }
                        In::Settings(s) => {
                            let (interval, dead_after) = timings(&s, several);
                            tracing::debug!(
                                interval_ms = interval.as_millis() as u64,
                                "the master set a new heartbeat interval"
                            );
                            beat.retime(interval, dead_after);
                            continue;
                        }
                        other => match dispatch(inner, other) {
                            Some(end) => return (true, Err(end)),
                            None => continue,
                        },
                    };
                    if !deliver(inner, envelopes, &mut beat, sampler).await {
                        return (true, Ok(()));
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return (true, Ok(())),
                Err(s) => return (true, Err(s.into())),
            },
        }
    }
}

/// The heartbeat interval the master gave, and how long the master may be
/// silent before the member leaves it: its `dead_after`, or with several
/// masters (`several`) its `suspect_after`, so that a leader alive but
/// unreachable is left for another within seconds (3 s by default); all
/// within sane bounds.
fn timings(settings: &pb::Settings, several: bool) -> (Duration, Duration) {
    let heartbeat = span(settings.heartbeat_interval.as_ref())
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_millis(10));
    let silence = match several {
        true => settings.suspect_after.as_ref(),
        false => settings.dead_after.as_ref(),
    };
    let dead_after = span(silence)
        .unwrap_or(Duration::from_secs(10))
        .max(Duration::from_millis(100));
    (heartbeat, dead_after)
}

/// Heartbeats and the ack watchdog of one session.
struct Beat {
    ticker: tokio::time::Interval,
    tx: mpsc::Sender<pb::MemberFrame>,
    seq: u64,
    last_ack: Instant,
    dead_after: Duration,
    /// When the last few heartbeats went out (the master acks some only).
    sent: VecDeque<(u64, Instant)>,
    /// The round trip of the last acked one.
    rtt: Option<Duration>,
}

impl Beat {
    /// Heartbeats every `interval` on `tx`, the ack clock starting now.
    fn new(tx: mpsc::Sender<pb::MemberFrame>, interval: Duration, dead_after: Duration) -> Beat {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Beat {
            ticker,
            tx,
            seq: 0,
            last_ack: Instant::now(),
            dead_after,
            sent: VecDeque::new(),
            rtt: None,
        }
    }

    /// New timings from the master: beats every `interval` from now on,
    /// and waits `dead_after` for an ack.
    fn retime(&mut self, interval: Duration, dead_after: Duration) {
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.ticker = ticker;
        self.dead_after = dead_after;
    }

    /// An ack came: the master is there, and (unless it only vouches,
    /// seq 0) one heartbeat's round trip is known.
    fn acked(&mut self, seq: u64) {
        let now = Instant::now();
        self.last_ack = now;
        if let Some(&(_, at)) = self.sent.iter().find(|(s, _)| *s == seq) {
            self.rtt = Some(now.saturating_duration_since(at));
        }
    }

    /// Sends a heartbeat; with `watch`, first fails if the master has not
    /// acked one for `dead_after` (a one-way partition).
    fn beat(&mut self, sampler: &mut Sampler, watch: bool) -> Result<(), Error> {
        if watch && self.last_ack.elapsed() > self.dead_after {
            return Err(Error::Disconnected(format!(
                "no heartbeat ack from the master for {} ms",
                self.last_ack.elapsed().as_millis()
            )));
        }
        self.seq += 1;
        if self.sent.len() == 8 {
            self.sent.pop_front();
        }
        self.sent.push_back((self.seq, Instant::now()));
        let (cpu_percent, rss_bytes) = sampler.sample();
        // A full queue means the master holds this member back (or is far
        // behind); the master vouches for a member it holds back, and the
        // ack clock decides otherwise.
        let _ = self.tx.try_send(pb::MemberFrame {
            kind: Some(Out::Heartbeat(pb::Heartbeat {
                seq: self.seq,
                cpu_percent,
                rss_bytes,
                rtt: self.rtt.map(duration),
            })),
        });
        Ok(())
    }
}

/// Hands delivered envelopes to their handlers in order. A full
/// subscription is waited for (heartbeats go on meanwhile): not reading
/// from the master is what slows the senders. Returns false if the member
/// closes while waiting.
async fn deliver(
    inner: &Arc<Inner>,
    envelopes: Vec<pb::Envelope>,
    beat: &mut Beat,
    sampler: &mut Sampler,
) -> bool {
    for env in envelopes {
        let waiting = inner.deliver(env);
        if waiting.is_empty() {
            continue;
        }
        for (tx, msg) in waiting {
            let send = tx.send(msg);
            tokio::pin!(send);
            loop {
                tokio::select! {
                    // A subscription dropped meanwhile just misses it.
                    _ = &mut send => break,
                    _ = beat.ticker.tick() => {
                        let _ = beat.beat(sampler, false);
                    }
                    _ = inner.stop.cancelled() => return false,
                }
            }
        }
        // Acks queued behind the deliveries were not read while waiting.
        beat.last_ack = Instant::now();
    }
    true
}

/// Handles one frame from the master other than deliveries and acks;
/// `Some` ends the stream.
fn dispatch(inner: &Arc<Inner>, kind: In) -> Option<Error> {
    match kind {
        // The session loop takes these itself.
        In::Deliver(_) | In::DeliverBatch(_) | In::HeartbeatAck(_) | In::Settings(_) => {}
        In::ClusterReady(_) => {
            // Announced once per member, however many masters it meets.
            if !inner.cluster_ready.send_replace(true) {
                let _ = inner.events.send(Event::ClusterReady);
            }
        }
        In::MemberEvent(ev) => {
            // ClusterReady also comes as its own frame; this one is the event.
            if ev.kind != pb::EventKind::ClusterReady as i32 {
                let _ = inner.events.send(Event::from(ev));
            }
        }
        In::MemberEvents(batch) => {
            for ev in batch.events {
                let _ = inner.events.send(Event::from(ev));
            }
        }
        In::Drain(d) => {
            tracing::info!(reason = %d.reason, "the master asks this member to drain");
            inner.drain.send_replace(Some(d.reason.clone()));
            let _ = inner.events.send(Event::Drain {
                reason: d.reason,
                within: span(d.deadline.as_ref()).unwrap_or_default(),
            });
        }
        In::SendResult(r) => {
            let error = (r.code != 0).then(|| Error::Status {
                code: tonic::Code::from_i32(r.code),
                message: r.message.clone(),
            });
            let waiter = lock(&inner.waiters).remove(&r.id);
            match (waiter, error) {
                (Some(Waiter::Ack(tx)), None) => drop(tx.send(Ok(r.delivered))),
                (Some(Waiter::Ack(tx)), Some(e)) => drop(tx.send(Err(e))),
                (Some(Waiter::Reply(tx, _)), Some(e)) => drop(tx.send(Err(e))),
                (Some(w @ Waiter::Reply(..)), None) => {
                    // A success result for a request: keep waiting for the reply.
                    lock(&inner.waiters).insert(r.id, w);
                }
                (None, Some(error)) => {
                    inner
                        .failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(id = %r.id, error = %error, "send failed");
                    let _ = inner.events.send(Event::SendFailed { id: r.id, error });
                }
                (None, None) => {}
            }
        }
        In::Error(e) => {
            return Some(Error::Status {
                code: tonic::Code::from_i32(e.code),
                message: e.message,
            });
        }
        In::Welcome(_) => tracing::warn!("unexpected second welcome ignored"),
    }
    None
}

fn hostname() -> String {
    sysinfo::System::host_name().unwrap_or_else(|_| "localhost".into())
}

/// The request stream: frames as queued, with sends that are already
/// waiting packed into one `send_batch` frame.
struct Outgoing {
    rx: mpsc::Receiver<pb::MemberFrame>,
    stash: Option<pb::MemberFrame>,
}

impl Stream for Outgoing {
    type Item = pb::MemberFrame;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let first = match self.stash.take() {
            Some(f) => f,
            None => match self.rx.poll_recv(cx) {
                Poll::Ready(Some(f)) => f,
                other => return other,
            },
        };
        let Some(Out::Send(env)) = first.kind else {
            return Poll::Ready(Some(first));
        };
        let mut envelopes = vec![env];
        while envelopes.len() < MAX_BATCH {
            match self.rx.try_recv() {
                Ok(pb::MemberFrame {
                    kind: Some(Out::Send(e)),
                }) => envelopes.push(e),
                Ok(other) => {
                    self.stash = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        let kind = if envelopes.len() == 1 {
            Out::Send(envelopes.remove(0))
        } else {
            Out::SendBatch(pb::Envelopes { envelopes })
        };
        Poll::Ready(Some(pb::MemberFrame { kind: Some(kind) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    fn send(id: &str) -> pb::MemberFrame {
        pb::MemberFrame {
            kind: Some(Out::Send(pb::Envelope {
                id: id.into(),
                ..Default::default()
            })),
        }
    }

    fn heartbeat() -> pb::MemberFrame {
        pb::MemberFrame {
            kind: Some(Out::Heartbeat(pb::Heartbeat::default())),
        }
    }

    /// What the stream yields for what was queued: each frame as the ids
    /// of its sends (a batch) or its kind.
    async fn frames(queued: Vec<pb::MemberFrame>) -> Vec<String> {
        let (tx, rx) = mpsc::channel(1024);
        for f in queued {
            tx.try_send(f).expect("room");
        }
        drop(tx);
        let out: Vec<pb::MemberFrame> = Outgoing { rx, stash: None }.collect().await;
        out.into_iter()
            .map(|f| match f.kind {
                Some(Out::Send(e)) => format!("send {}", e.id),
                Some(Out::SendBatch(b)) => format!("batch of {}", b.envelopes.len()),
                Some(Out::Heartbeat(_)) => "heartbeat".into(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn queued_sends_travel_as_one_batch_and_nothing_passes_another() {
        let queued = vec![send("a"), send("b"), send("c"), heartbeat(), send("d")];
        assert_eq!(
            frames(queued).await,
            ["batch of 3", "heartbeat", "send d"],
            "a lone send stays a plain send (any master reads it)"
        );
        // A batch is bounded; the rest follows in order.
        let many = (0..MAX_BATCH + 10).map(|i| send(&i.to_string())).collect();
        assert_eq!(
            frames(many).await,
            [format!("batch of {MAX_BATCH}"), "batch of 10".to_string()]
        );
    }

    #[tokio::test]
    async fn batches_keep_the_order_of_the_sends() {
        let (tx, rx) = mpsc::channel(16);
        for i in 0..5 {
            tx.try_send(send(&i.to_string())).expect("room");
        }
        let mut out = Outgoing { rx, stash: None };
        let Some(Some(Out::SendBatch(b))) = out.next().await.map(|f| f.kind) else {
            panic!("a batch");
        };
        let ids: Vec<&str> = b.envelopes.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["0", "1", "2", "3", "4"]);
    }

    fn beat(dead_after: Duration) -> (Beat, mpsc::Receiver<pb::MemberFrame>) {
        let (tx, rx) = mpsc::channel(16);
        (Beat::new(tx, Duration::from_secs(1), dead_after), rx)
    }

    fn sent(rx: &mut mpsc::Receiver<pb::MemberFrame>) -> pb::Heartbeat {
        match rx.try_recv().map(|f| f.kind) {
            Ok(Some(Out::Heartbeat(hb))) => hb,
            other => panic!("a heartbeat, not {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_master_that_stops_acking_is_left_after_dead_after() {
        let mut sampler = Sampler::new();
        let (mut beat, mut rx) = beat(Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(9)).await;
        beat.beat(&mut sampler, true).expect("within dead_after");
        assert_eq!(sent(&mut rx).seq, 1);
        // An ack (even a vouch, seq 0) restarts the clock.
        beat.acked(0);
        tokio::time::advance(Duration::from_secs(9)).await;
        beat.beat(&mut sampler, true).expect("acked 9 s ago");
        tokio::time::advance(Duration::from_millis(1001)).await;
        let err = beat.beat(&mut sampler, true).expect_err("silent too long");
        assert!(err.to_string().contains("no heartbeat ack"), "{err}");
        // Without the watch (while the master holds this member back) it
        // beats on.
        beat.beat(&mut sampler, false).expect("not watched");
    }

    #[tokio::test(start_paused = true)]
    async fn new_timings_from_the_master_set_the_beat_and_the_watchdog() {
        let mut sampler = Sampler::new();
        let (mut beat, _rx) = beat(Duration::from_secs(10));
        beat.retime(Duration::from_secs(8), Duration::from_secs(80));
        let t0 = Instant::now();
        beat.ticker.tick().await;
        assert_eq!(
            t0.elapsed(),
            Duration::from_secs(8),
            "the next beat in one new interval"
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        beat.beat(&mut sampler, true)
            .expect("68 s without an ack is within the new dead_after");
    }

    #[tokio::test(start_paused = true)]
    async fn an_ack_measures_its_heartbeat_round_trip_and_the_next_beat_carries_it() {
        let mut sampler = Sampler::new();
        let (mut beat, mut rx) = beat(Duration::from_secs(10));
        beat.beat(&mut sampler, true).expect("beat");
        assert_eq!(sent(&mut rx).rtt, None, "nothing acked yet");
        tokio::time::advance(Duration::from_millis(40)).await;
        beat.acked(1);
        beat.acked(0); // a vouch measures nothing
        beat.beat(&mut sampler, true).expect("beat");
        let hb = sent(&mut rx);
        assert_eq!(hb.seq, 2);
        assert_eq!(span(hb.rtt.as_ref()), Some(Duration::from_millis(40)));
    }
}
