//! What a member's handle and its connection task share: the state behind
//! an `Arc` (identity, waiters, handlers, counters), and the messages the
//! connection hands out, each holding a way to reply.

use crate::Error;
use crate::event::Event;
use bytes::Bytes;
use cohort_proto::MAX_MESSAGE_BYTES;
use cohort_proto::Role;
use cohort_proto::pb::{self, member_frame::Kind as Out};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// The handler key of [`Member::incoming`]; no real action is empty.
pub(crate) const ANY_ACTION: &str = "";

/// A received message. Requests are answered with [`Message::reply`].
#[derive(Clone)]
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
    /// Where a reply goes: the receiving member's connection.
    replier: Arc<Inner>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("from", &self.from)
            .field("action", &self.action)
            .field("data", &self.data)
            .field("expects_reply", &self.expects_reply)
            .finish()
    }
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
            id: self.replier.next_id(),
            action: self.action.clone(),
            data,
            reply_to: self.id.clone(),
            ..Default::default()
        };
        self.replier.send_frame(Out::Reply(env)).await
    }
}

/// Messages for one action, from [`Member::on`].
pub struct Subscription {
    pub(crate) rx: mpsc::Receiver<Message>,
}

impl Subscription {
    /// The next message; `None` once the member is closed.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }
}

pub(crate) enum Handler {
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
    pub(crate) handlers: Mutex<HashMap<String, Vec<Handler>>>,
    pub(crate) cluster_ready: watch::Sender<bool>,
    pub(crate) drain: watch::Sender<Option<String>>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) ready: AtomicBool,
    /// Labels given with `ready` (sent again after reconnects).
    pub(crate) ready_labels: Mutex<HashMap<String, String>>,
    /// Set by `leave`: a lost stream is not re-established.
    pub(crate) leaving: AtomicBool,
    next_id: AtomicU64,
    id_prefix: String,
    pub(crate) stop: CancellationToken,
    pub(crate) dropped: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// The highest leader term seen in a Welcome (several masters).
    pub(crate) term: AtomicU64,
    pub(crate) task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn check_size(data: &Bytes) -> Result<(), Error> {
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
    pub(crate) fn new(role: Role) -> Self {
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
            ready_labels: Mutex::new(HashMap::new()),
            leaving: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            id_prefix: format!("{:016x}", uuid::Uuid::new_v4().as_u128() as u64),
            stop: CancellationToken::new(),
            dropped: AtomicU64::new(0),
            term: AtomicU64::new(0),
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
    /// Only the master's reply path delivers `reply_to` (it refuses sends
    /// that carry it), and it must name one of this member's own requests,
    /// whose ids are random: an envelope with `reply_to` is a reply to that
    /// request or, when none waits (it timed out), dropped; never a message
    /// and never an answer to a send.
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
                // Not from the member the request went to, or aimed at a
                // send's id (which receivers see): not the answer.
                Some(w) => {
                    waiters.insert(env.reply_to.clone(), w);
                    drop(waiters);
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(from = %env.from, "reply that does not answer this request ignored");
                }
                None => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(from = %env.from, "reply to no waiting request (timed out) dropped");
                }
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
            replier: self.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_to(id: &str, from: &str) -> pb::Envelope {
        pb::Envelope {
            id: "r".into(),
            from: from.into(),
            action: "a".into(),
            reply_to: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn only_an_answer_to_a_waiting_request_is_a_reply() {
        let inner = Arc::new(Inner::new(Role::Worker));
        let (ack_tx, mut ack_rx) = oneshot::channel();
        let (reply_tx, mut reply_rx) = oneshot::channel();
        let send_id = inner.next_id();
        lock(&inner.waiters).insert(send_id.clone(), Waiter::Ack(ack_tx));
        lock(&inner.waiters).insert("q".into(), Waiter::Reply(reply_tx, Some("b".into())));
        let mut any = inner.subscribe_for_test();

        // Aimed at a send's id, from the wrong member, or at nothing: none
        // is an answer, and none is handed out as a message either.
        inner.deliver(reply_to(&send_id, "c"));
        inner.deliver(reply_to("q", "c"));
        inner.deliver(reply_to("nothing", "c"));
        assert!(ack_rx.try_recv().is_err(), "the send still waits");
        assert!(reply_rx.try_recv().is_err(), "the request still waits");
        assert!(any.try_recv().is_err(), "no handler got a reply");
        assert_eq!(inner.dropped.load(Ordering::Relaxed), 3);

        inner.deliver(reply_to("q", "b"));
        let answer = reply_rx.try_recv().expect("answered").expect("ok");
        assert_eq!(answer.from, "b");
        assert_eq!(lock(&inner.waiters).len(), 1, "the send's ack still waits");
    }

    impl Inner {
        fn subscribe_for_test(&self) -> mpsc::Receiver<Message> {
            let (tx, rx) = mpsc::channel(8);
            lock(&self.handlers)
                .entry(ANY_ACTION.to_string())
                .or_default()
                .push(Handler::Stream(tx));
            rx
        }
    }
}
