//! The member handle and the messenger.

use crate::Error;
use crate::builder::MemberBuilder;
use crate::connection;
use crate::event::Event;
use crate::shared::{ANY_ACTION, Handler, Inner, Message, Subscription, Waiter, check_size, lock};
use bytes::Bytes;
use cohort_proto::pb::{self, member_frame::Kind as Out};
use cohort_proto::{MemberName, Role, Target};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

/// How long a send waits for the master's verdict.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages a subscription buffers before it drops (and counts) more.
const SUBSCRIPTION_BUFFER: usize = 1024;

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
        self.ready_with_labels(HashMap::new()).await
    }

    /// [`Member::ready`], adding labels learned while starting: its own
    /// address as `http` (`HOST:PORT`), where an app's HTTP health probe
    /// goes. At most 32 labels in all, keys of 63 bytes, values of 255.
    pub async fn ready_with_labels(&self, labels: HashMap<String, String>) -> Result<(), Error> {
        let refused = |message| Error::Status {
            code: tonic::Code::InvalidArgument,
            message,
        };
        cohort_proto::check_labels("ready", &labels).map_err(refused)?;
        let labels = {
            let mut all = lock(&self.inner.ready_labels);
            all.extend(labels);
            all.clone()
        };
        self.inner.ready.store(true, Ordering::SeqCst);
        self.inner
            .send_frame(Out::Ready(pb::Ready { labels }))
            .await
    }

    /// Whether this member has reported ready ([`Member::ready`]).
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    /// Waits until the master announces ClusterReady.
    pub async fn cluster_ready(&self) {
        let mut rx = self.inner.cluster_ready.subscribe();
        // The sender lives in `inner`, which we hold: this cannot fail.
        let _ = rx.wait_for(|r| *r).await;
    }

    /// The highest leader term this member has been welcomed with (several
    /// masters, SPEC §9b; 0 with one master). It only grows: a master
    /// whose term is lower has lost its lease and is not joined.
    pub fn term(&self) -> u64 {
        self.inner.term.load(std::sync::atomic::Ordering::SeqCst)
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
        // Unguessable, unlike send ids (which receivers see): nobody can aim
        // a forged answer at it.
        let id = uuid::Uuid::new_v4().simple().to_string();
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
            timeout: Some(cohort_proto::time::duration(timeout)),
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

impl MemberBuilder {
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
