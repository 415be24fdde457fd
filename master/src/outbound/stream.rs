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
                let frame = pb::MasterFrame {
                    kind: Some(Kind::Error(error)),
                };
                return Poll::Ready(Some(Ok(frame.into())));
            }
            if let Some((status, _)) = st.end.take() {
                st.closed = true;
                return Poll::Ready(Some(Err(status)));
            }
            st.waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        let mut freed = Freed::of([entry.lane]);
        let frame = match entry.frame {
            OutFrame::Deliver(first) if self.batches => {
                // No batch (and no allocation) unless more are queued.
                let mut bytes = envelope_cost(&first);
                let mut more = Vec::new();
                while more.len() + 1 < MAX_BATCH
                    && bytes < MAX_BATCH_BYTES
                    && let Some((e, lane)) = next_delivery(&mut st.items)
                {
                    bytes += envelope_cost(&e);
                    more.push(e);
                    freed.add(lane);
                }
                if more.is_empty() {
                    OutFrame::Deliver(first)
                } else {
                    more.insert(0, first);
                    OutFrame::DeliverBatch(more)
                }
            }
            frame => frame,
        };
        drop(st);
        let s = &self.shared;
        s.taken.fetch_add(freed.frames() as u64, Ordering::Relaxed);
        s.refused.store(false, Ordering::Relaxed);
        s.give_back(freed);
        Poll::Ready(Some(Ok(frame)))
    }
}

/// Takes the front entry if it is a delivery.
fn next_delivery(items: &mut VecDeque<Entry>) -> Option<(Encoded, Lane)> {
    match items.front() {
        Some(Entry {
            frame: OutFrame::Deliver(_),
            ..
        }) => match items.pop_front() {
            Some(Entry {
                frame: OutFrame::Deliver(e),
                lane,
            }) => Some((e, lane)),
            _ => None,
        },
        _ => None,
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
        s.give_back(Freed::of(items.iter().map(|e| e.lane)));
    }
}
