//! The receiving half of a member's queue: what tonic polls as the Join
//! response, packing deliveries already queued into batch frames.

use super::*;

/// The receiving half, polled by tonic as the Join response stream.
pub struct OutboundStream {
    pub(super) shared: Arc<Shared>,
    pub(super) batches: bool,
    pub(super) done: bool,
}

impl OutboundStream {
    /// Takes the next entry, or says why there is none.
    fn take(&mut self, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let mut st = self.shared.lock();
        // An end without drain emptied the queue already.
        let Some(entry) = st.items.pop_front() else {
            // The reason goes in-band first (the contract's `error` frame),
            // then as the stream's status.
            if let Some((status, _)) = &st.end
                && !st.told
            {
                let error = pb::StreamError {
                    code: status.code() as i32,
                    message: status.message().to_string(),
                };
                st.told = true;
                return Poll::Ready(Some(Ok(pb::MasterFrame {
                    kind: Some(Kind::Error(error)),
                })));
            }
            if let Some((status, _)) = st.end.take() {
                st.closed = true;
                return Poll::Ready(Some(Err(status)));
            }
            st.waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let first = entry.frame;
        let mut lanes = vec![entry.lane];
        let batchable = self.batches && matches!(first.kind, Some(Kind::Deliver(_)));
        let frame = if batchable {
            let Some(Kind::Deliver(env)) = first.kind else {
                unreachable!("checked above")
            };
            let mut bytes = envelope_cost(&env);
            let mut envelopes = vec![env];
            while envelopes.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                let next_is_delivery = st
                    .items
                    .front()
                    .is_some_and(|e| matches!(e.frame.kind, Some(Kind::Deliver(_))));
                if !next_is_delivery {
                    break;
                }
                let Some(Entry {
                    frame:
                        pb::MasterFrame {
                            kind: Some(Kind::Deliver(e)),
                        },
                    lane,
                }) = st.items.pop_front()
                else {
                    break;
                };
                bytes += envelope_cost(&e);
                envelopes.push(e);
                lanes.push(lane);
            }
            let kind = if envelopes.len() == 1 {
                Kind::Deliver(envelopes.remove(0))
            } else {
                Kind::DeliverBatch(pb::Envelopes { envelopes })
            };
            pb::MasterFrame { kind: Some(kind) }
        } else {
            first
        };
        drop(st);
        let s = &self.shared;
        s.taken.fetch_add(lanes.len() as u64, Ordering::Relaxed);
        s.refused.store(false, Ordering::Relaxed);
        for lane in lanes {
            s.give_back(lane);
        }
        Poll::Ready(Some(Ok(frame)))
    }
}

impl Stream for OutboundStream {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let next = self.take(cx);
        if let Poll::Ready(Some(Err(_))) = next {
            self.done = true;
        }
        next
    }
}

impl Drop for OutboundStream {
    fn drop(&mut self) {
        // The member is gone: free what it never took and wake the senders
        // that wait for it.
        let s = &self.shared;
        let items = {
            let mut st = s.lock();
            st.closed = true;
            st.waker = None;
            std::mem::take(&mut st.items)
        };
        s.slots.close();
        s.bytes.close();
        s.control_freed.notify_waiters();
        for e in items {
            s.give_back(e.lane);
        }
    }
}
