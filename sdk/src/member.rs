//! The member handle and the messenger.

use crate::Error;
use crate::connection;
use crate::event::Event;
use bytes::Bytes;
use cohort_proto::pb::{self, member_frame::Kind as Out};
use cohort_proto::{MAX_MESSAGE_BYTES, MemberName, Role, Target};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// The handler key of [`Member::incoming`]; no real action is empty.
const ANY_ACTION: &str = "";

/// How long a send waits for the master's verdict.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages a subscription buffers before it drops (and counts) more.
const SUBSCRIPTION_BUFFER: usize = 1024;

/// How to join: where the master is, who this member is.
#[derive(Clone, Debug)]
pub struct MemberBuilder {
    pub(crate) master: String,
    pub(crate) role: Role,
    pub(crate) name: Option<String>,
    pub(crate) secret: String,
    pub(crate) token: Option<String>,
    pub(crate) labels: HashMap<String, String>,
    pub(crate) version: String,
    pub(crate) join_timeout: Duration,
    pub(crate) tls: crate::TlsFiles,
}

impl MemberBuilder {
    /// A member of `role` joining the master at `master`
    /// (`http://host:port`, or a bare `host:port`).
    pub fn new(master: impl Into<String>, role: Role) -> Self {
        let master = master.into();
        let master = if master.contains("://") {
            master
        } else {
            format!("http://{master}")
        };
        MemberBuilder {
            master,
            role,
            name: None,
            secret: String::new(),
            token: None,
            labels: HashMap::new(),
            version: String::new(),
            join_timeout: Duration::from_secs(30),
            tls: crate::TlsFiles::default(),
        }
    }

    /// Settings from the process environment (see [`crate::env`]).
    pub fn from_env() -> Result<Self, Error> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Settings from any key lookup (a map in tests).
    pub fn from_lookup(env: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        use crate::env::*;
        let master = env(MASTER).unwrap_or_else(|| "http://127.0.0.1:7420".into());
        let role = match env(ROLE) {
            Some(r) => r
                .parse()
                .map_err(|e: String| Error::Config(format!("{ROLE}: {e}")))?,
            None => Role::Worker,
        };
        let mut b = MemberBuilder::new(master, role);
        b.name = env(NAME).filter(|n| !n.is_empty());
        b.secret = env(SECRET).unwrap_or_default();
        b.token = match (env(TOKEN), env(TOKEN_FILE)) {
            (Some(t), _) => Some(t),
            (None, Some(path)) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| Error::Config(format!("{TOKEN_FILE} {path}: {e}")))?
                    .trim()
                    .to_string(),
            ),
            (None, None) => None,
        };
        let read = |var: &str| -> Result<Option<Vec<u8>>, Error> {
            env(var)
                .filter(|p| !p.is_empty())
                .map(|p| std::fs::read(&p).map_err(|e| Error::Config(format!("{var} {p}: {e}"))))
                .transpose()
        };
        b.tls.ca = read(TLS_CA)?;
        b.tls.identity = match (read(TLS_CERT)?, read(TLS_KEY)?) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(Error::Config(format!(
                    "set both {TLS_CERT} and {TLS_KEY}, or neither"
                )));
            }
        };
        Ok(b)
    }

    /// Joins as this role instead of the one from the environment.
    pub fn role(mut self, role: Role) -> Self {
        self.role = role;
        self
    }

    /// Asks for this name instead of one the master assigns.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Adds a label shown in `ListMembers`.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// The member's software version, shown in `ListMembers`.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The bearer token sent to the master.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// TLS material for an `https://` master.
    pub fn tls(mut self, tls: crate::TlsFiles) -> Self {
        self.tls = tls;
        self
    }

    /// How long [`join`](Self::join) keeps retrying an unreachable master.
    pub fn join_timeout(mut self, t: Duration) -> Self {
        self.join_timeout = t;
        self
    }

    /// Connects, says hello, and returns once the master has welcomed this
    /// member. A refusal (bad name, name taken) returns at once; an
    /// unreachable master is retried with backoff until the join timeout.
    pub async fn join(self) -> Result<Member, Error> {
        let inner = Arc::new(Inner::new(self.role));
        let (first_tx, first_rx) = oneshot::channel();
        let task = tokio::spawn(connection::run(inner.clone(), self, first_tx));
        *lock(&inner.task) = Some(task);
        match first_rx.await {
            Ok(Ok(())) => Ok(Member { inner }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Disconnected("the connection task ended".into())),
        }
    }
}

/// A received message. Requests are answered with [`Message::reply`].
#[derive(Clone, Debug)]
pub struct Message {
    /// The envelope id.
    pub id: String,
    /// The sender's name (`control` for `Control/Send`).
    pub from: String,
    /// What the message is about.
    pub action: String,
    /// The payload (JSON by convention).
    pub data: Bytes,
    expects_reply: bool,
    member: Member,
}

impl Message {
    /// The payload as UTF-8 text, if it is.
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.data).ok()
    }

    /// True when the sender waits for a reply.
    pub fn expects_reply(&self) -> bool {
        self.expects_reply
    }

    /// Answers a request; the reply goes back to the requester only.
    pub async fn reply(&self, data: impl Into<Bytes>) -> Result<(), Error> {
        let data = data.into();
        check_size(&data)?;
        let env = pb::Envelope {
            id: self.member.inner.next_id(),
            action: self.action.clone(),
            data,
            reply_to: self.id.clone(),
            ..Default::default()
        };
        self.member.inner.send_frame(Out::Reply(env)).await
    }
}

/// Messages for one action, from [`Member::on`].
pub struct Subscription {
    rx: mpsc::Receiver<Message>,
}

impl Subscription {
    /// The next message; `None` once the member is closed.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

enum Handler {
    Stream(mpsc::Sender<Message>),
    Once(oneshot::Sender<Message>),
}

pub(crate) enum Waiter {
    Ack(oneshot::Sender<Result<u32, Error>>),
    /// A request's reply, and the member name it must come from (when the
    /// request named one).
    Reply(oneshot::Sender<Result<Message, Error>>, Option<String>),
}

pub(crate) struct Inner {
    pub(crate) role: Role,
    pub(crate) identity: watch::Sender<(String, String)>,
    pub(crate) out: Mutex<Option<mpsc::Sender<pb::MemberFrame>>>,
    pub(crate) waiters: Mutex<HashMap<String, Waiter>>,
    handlers: Mutex<HashMap<String, Vec<Handler>>>,
    pub(crate) cluster_ready: watch::Sender<bool>,
    pub(crate) drain: watch::Sender<Option<String>>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) ready: AtomicBool,
    /// Set by `leave`: a lost stream is not re-established.
    pub(crate) leaving: AtomicBool,
    next_id: AtomicU64,
    id_prefix: String,
    pub(crate) stop: CancellationToken,
    dropped: AtomicU64,
    pub(crate) failed: AtomicU64,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn check_size(data: &Bytes) -> Result<(), Error> {
    // Leave room for the envelope's other fields within the frame limit.
    let max = MAX_MESSAGE_BYTES - 64 * 1024;
    if data.len() > max {
        return Err(Error::TooLarge {
            size: data.len(),
            max,
        });
    }
    Ok(())
}

impl Inner {
    fn new(role: Role) -> Self {
        Inner {
            role,
            identity: watch::channel((String::new(), String::new())).0,
            out: Mutex::new(None),
            waiters: Mutex::new(HashMap::new()),
            handlers: Mutex::new(HashMap::new()),
            cluster_ready: watch::channel(false).0,
            drain: watch::channel(None).0,
            events: broadcast::channel(256).0,
            ready: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            id_prefix: format!("{:016x}", uuid::Uuid::new_v4().as_u128() as u64),
            stop: CancellationToken::new(),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            task: Mutex::new(None),
        }
    }

    pub(crate) fn next_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.id_prefix)
    }

    pub(crate) async fn send_frame(&self, kind: Out) -> Result<(), Error> {
        let tx = lock(&self.out).clone();
        let tx = tx.ok_or_else(|| Error::Disconnected("reconnecting to the master".into()))?;
        tx.send(pb::MemberFrame { kind: Some(kind) })
            .await
            .map_err(|_| Error::Disconnected("the stream to the master closed".into()))
    }

    /// Fails every waiting send and request (the stream is gone).
    pub(crate) fn fail_waiters(&self, reason: &str) {
        for (_, w) in lock(&self.waiters).drain() {
            let e = Error::Disconnected(reason.to_string());
            match w {
                Waiter::Ack(tx) => drop(tx.send(Err(e))),
                Waiter::Reply(tx, _) => drop(tx.send(Err(e))),
            }
        }
    }

    /// Hands a delivered envelope to its waiter or its action's handlers.
    /// Returns the subscriptions that are full, with the message each must
    /// still get: the caller waits for them before it reads on.
    pub(crate) fn deliver(
        self: &Arc<Self>,
        env: pb::Envelope,
    ) -> Vec<(mpsc::Sender<Message>, Message)> {
        let mut waiting = Vec::new();
        if !env.reply_to.is_empty() {
            let mut waiters = lock(&self.waiters);
            match waiters.remove(&env.reply_to) {
                Some(Waiter::Reply(tx, from)) if from.as_ref().is_none_or(|f| *f == env.from) => {
                    drop(waiters);
                    let _ = tx.send(Ok(self.message(env)));
                }
                // Not from the member the request went to: not the answer.
                Some(w) => {
                    waiters.insert(env.reply_to.clone(), w);
                    drop(waiters);
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(from = %env.from, "reply from a member the request did not go to ignored");
                }
                None => {}
            }
            return waiting;
        }
        let msg = self.message(env);
        let mut handlers = lock(&self.handlers);
        // Messages no action handler wants go to the catch-all, if any.
        let key = if handlers.contains_key(&msg.action) {
            msg.action.clone()
        } else {
            ANY_ACTION.to_string()
        };
        let Some(list) = handlers.get_mut(&key) else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(action = %msg.action, from = %msg.from, "no handler for message");
            return waiting;
        };
        let mut kept = Vec::with_capacity(list.len());
        for h in list.drain(..) {
            match h {
                Handler::Stream(tx) => match tx.try_send(msg.clone()) {
                    Ok(()) => kept.push(Handler::Stream(tx)),
                    Err(mpsc::error::TrySendError::Full(msg)) => {
                        waiting.push((tx.clone(), msg));
                        kept.push(Handler::Stream(tx));
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                },
                Handler::Once(tx) => {
                    let _ = tx.send(msg.clone());
                }
            }
        }
        if kept.is_empty() {
            handlers.remove(&key);
        } else {
            *list = kept;
        }
        waiting
    }

    fn message(self: &Arc<Self>, env: pb::Envelope) -> Message {
        Message {
            id: env.id,
            from: env.from,
            action: env.action,
            data: env.data,
            expects_reply: env.expects_reply,
            member: Member {
                inner: self.clone(),
            },
        }
    }
}

/// A joined member: a cheap, cloneable handle.
#[derive(Clone)]
pub struct Member {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("name", &self.name())
            .finish()
    }
}

impl Member {
    /// This member's name (assigned by the master when none was asked for).
    pub fn name(&self) -> String {
        self.inner.identity.borrow().0.clone()
    }

    /// The instance id of the current registration (new after a reconnect).
    pub fn instance_id(&self) -> String {
        self.inner.identity.borrow().1.clone()
    }

    /// This member's role.
    pub fn role(&self) -> Role {
        self.inner.role
    }

    /// Tells the master this member takes work (repeated after reconnects).
    pub async fn ready(&self) -> Result<(), Error> {
        self.inner.ready.store(true, Ordering::SeqCst);
        self.inner.send_frame(Out::Ready(pb::Ready {})).await
    }

    /// Waits until the master announces ClusterReady.
    pub async fn cluster_ready(&self) {
        let mut rx = self.inner.cluster_ready.subscribe();
        // The sender lives in `inner`, which we hold: this cannot fail.
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Whether ClusterReady has been announced.
    pub fn is_cluster_ready(&self) -> bool {
        *self.inner.cluster_ready.borrow()
    }

    /// Waits until the master asks this member to drain; returns the reason.
    pub async fn drained(&self) -> String {
        let mut rx = self.inner.drain.subscribe();
        match rx.wait_for(|d| d.is_some()).await {
            Ok(d) => d.clone().unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Cluster and connection events.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Messages dropped because no handler wanted them.
    pub fn dropped_messages(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Posts the master reported as failed, e.g. UNAVAILABLE when the
    /// receiver was disconnected before it took the message (each is also
    /// logged and sent as [`Event::SendFailed`]; [`send`](Self::send)
    /// returns its error instead).
    pub fn failed_sends(&self) -> u64 {
        self.inner.failed.load(Ordering::Relaxed)
    }

    /// Every future message with this action (Egg's `messenger.on`). Up to
    /// 1,024 messages wait for [`Subscription::recv`]; when it is full the
    /// member stops reading from the master until there is room, which
    /// slows the senders (backpressure) instead of losing messages. Read
    /// every subscription you hold, or drop it: one left unread for the
    /// master's `slow_consumer_timeout` gets the member disconnected.
    pub fn on(&self, action: impl Into<String>) -> Subscription {
        self.on_with_capacity(action, SUBSCRIPTION_BUFFER)
    }

    /// Every message for which no [`on`](Self::on) / [`once`](Self::once)
    /// handler of its action exists (a catch-all, for bridges and proxies).
    pub fn incoming(&self, capacity: usize) -> Subscription {
        self.on_with_capacity(ANY_ACTION, capacity)
    }

    /// Like [`on`](Self::on) with room for `capacity` waiting messages.
    pub fn on_with_capacity(&self, action: impl Into<String>, capacity: usize) -> Subscription {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        lock(&self.inner.handlers)
            .entry(action.into())
            .or_default()
            .push(Handler::Stream(tx));
        Subscription { rx }
    }

    /// The next message with this action (Egg's `messenger.once`). Subscribes
    /// now, so a message that arrives before the future is polled is kept.
    pub fn once(
        &self,
        action: impl Into<String>,
    ) -> impl std::future::Future<Output = Result<Message, Error>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.handlers)
            .entry(action.into())
            .or_default()
            .push(Handler::Once(tx));
        async move {
            rx.await
                .map_err(|_| Error::Disconnected("the member closed".into()))
        }
    }

    /// Sends to `target` and waits for the master's verdict: how many members
    /// it reached, or why it reached none (`NOT_FOUND`, `UNAVAILABLE`, ...).
    pub async fn send(
        &self,
        target: Target,
        action: impl Into<String>,
        data: impl Into<Bytes>,
    ) -> Result<u32, Error> {
        let data = data.into();
        check_size(&data)?;
        let id = self.inner.next_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.waiters).insert(id.clone(), Waiter::Ack(tx));
        let env = pb::Envelope {
            id: id.clone(),
            action: action.into(),
            data,
            target: Some(target.into()),
            ack: true,
            ..Default::default()
        };
        if let Err(e) = self.inner.send_frame(Out::Send(env)).await {
            lock(&self.inner.waiters).remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(ACK_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Disconnected("the member closed".into())),
            Err(_) => {
                lock(&self.inner.waiters).remove(&id);
                Err(Error::Timeout(ACK_TIMEOUT))
            }
        }
    }

    /// Sends without waiting for the master's verdict (the fast path).
    /// Failures arrive later as [`Event::SendFailed`].
    pub async fn post(
        &self,
        target: Target,
        action: impl Into<String>,
        data: impl Into<Bytes>,
    ) -> Result<(), Error> {
        let data = data.into();
        check_size(&data)?;
        let env = pb::Envelope {
            id: self.inner.next_id(),
            action: action.into(),
            data,
            target: Some(target.into()),
            ..Default::default()
        };
        self.inner.send_frame(Out::Send(env)).await
    }

    /// Every member, this one included. Returns how many it reached.
    pub async fn broadcast(
        &self,
        action: impl Into<String>,
        data: impl Into<Bytes>,
    ) -> Result<u32, Error> {
        self.send(Target::All, action, data).await
    }

    /// Every worker, this one included if it is a worker (Egg's `sendToApp`).
    pub async fn send_to_app(
        &self,
        action: impl Into<String>,
        data: impl Into<Bytes>,
    ) -> Result<u32, Error> {
        self.send(Target::Role(Role::Worker), action, data).await
    }

    /// The agent (Egg's `sendToAgent`).
    pub async fn send_to_agent(
        &self,
        action: impl Into<String>,
        data: impl Into<Bytes>,
    ) -> Result<u32, Error> {
        self.send(Target::Role(Role::Agent), action, data).await
    }

    /// One ready worker, round-robin (Egg's `sendRandom`).
    pub async fn send_random(
        &self,
        action: impl Into<String>,
        data: impl Into<Bytes>,
    ) -> Result<u32, Error> {
        self.send(Target::Random(Role::Worker), action, data).await
    }

    /// One member by name, instance id or `pid@host` (Egg's `sendTo`).
    pub async fn send_to(
        &self,
        member: impl Into<String>,
        action: impl Into<String>,
        data: impl Into<Bytes>,
    ) -> Result<u32, Error> {
        self.send(Target::Member(member.into()), action, data).await
    }

    /// Sends a request to one member (`Target::Member`) or one of a role
    /// (`Target::Random`) and waits up to `timeout` for its reply.
    pub async fn request(
        &self,
        target: Target,
        action: impl Into<String>,
        data: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let data = data.into();
        check_size(&data)?;
        let id = self.inner.next_id();
        let (tx, rx) = oneshot::channel();
        // A request to a member by name must be answered by that name.
        let from = match &target {
            Target::Member(key) if MemberName::parse(key.as_str()).is_ok() => Some(key.clone()),
            _ => None,
        };
        lock(&self.inner.waiters).insert(id.clone(), Waiter::Reply(tx, from));
        let env = pb::Envelope {
            id: id.clone(),
            action: action.into(),
            data,
            target: Some(target.into()),
            expects_reply: true,
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        if let Err(e) = self.inner.send_frame(Out::Request(env)).await {
            lock(&self.inner.waiters).remove(&id);
            return Err(e);
        }
        // The master answers DEADLINE_EXCEEDED itself; the local timer
        // (slightly later) covers a master that went away.
        match tokio::time::timeout(timeout + Duration::from_millis(500), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Disconnected("the member closed".into())),
            Err(_) => {
                lock(&self.inner.waiters).remove(&id);
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// Tells the master this member is leaving; with `replace`, the master
    /// starts a replacement first (the fatal-error path). Keep finishing
    /// work, then call [`close`](Self::close). Once leaving, a lost stream is
    /// not re-established (the replacement has the name).
    pub async fn leave(&self, replace: bool, reason: impl Into<String>) -> Result<(), Error> {
        self.inner.leaving.store(true, Ordering::SeqCst);
        self.inner
            .send_frame(Out::Leaving(pb::Leaving {
                replace,
                reason: reason.into(),
            }))
            .await
    }

    /// The usual life of a member once its handlers are set up: report
    /// ready, run until `shutdown` completes or the master asks this member
    /// to drain, then close.
    pub async fn serve(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), Error> {
        self.ready().await?;
        tracing::info!(member.name = %self.name(), "ready");
        tokio::select! {
            _ = shutdown => tracing::info!("shutting down"),
            reason = self.drained() => tracing::info!(reason, "drained by the master"),
        }
        self.close().await;
        Ok(())
    }

    /// Answers every `ping` request with `{"name": NAME, "pid": PID}`, so
    /// operators can check a member end to end (`Control/Send` with
    /// `expect_reply`).
    pub fn answer_pings(&self) {
        let mut pings = self.on("ping");
        let me = self.clone();
        tokio::spawn(async move {
            while let Some(msg) = pings.recv().await {
                if msg.expects_reply() {
                    // Names are plain ASCII without quotes: no escaping needed.
                    let body =
                        format!(r#"{{"name":"{}","pid":{}}}"#, me.name(), std::process::id());
                    if let Err(e) = msg.reply(body).await {
                        tracing::warn!(error = %e, "could not answer ping");
                    }
                }
            }
        });
    }

    /// Closes the stream (the master sees the member leave) and waits for
    /// the connection task to end.
    pub async fn close(&self) {
        self.inner.stop.cancel();
        let task = lock(&self.inner.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}
