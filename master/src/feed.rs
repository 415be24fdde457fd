//! Server streams that replay what is kept and then follow a broadcast
//! (`Control/WatchEvents`, `Control/Logs`): they end when the caller goes,
//! when the master has ended every member stream at shutdown (so a drain
//! can be watched), or with `RESOURCE_EXHAUSTED` when the
//! caller reads too slowly to keep up (it calls again; nothing is queued
//! for it without bound).

use std::pin::Pin;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Status;

/// A boxed server stream.
pub type Feed<U> = Pin<Box<dyn Stream<Item = Result<U, Status>> + Send>>;

/// `kept`, then (with `follow`) what `live` brings, until `end`; `convert`
/// turns an item into what is sent, or `None` to skip it. `what` names the
/// items in the lag message.
pub fn replay_then_follow<T, U>(
    tasks: &TaskTracker,
    end: CancellationToken,
    kept: Vec<T>,
    mut live: broadcast::Receiver<T>,
    follow: bool,
    convert: impl Fn(&T) -> Option<U> + Send + 'static,
    what: &'static str,
) -> Feed<U>
where
    T: Clone + Send + 'static,
    U: Send + 'static,
{
    let (tx, rx) = mpsc::channel(256);
    let kept: Vec<U> = kept.iter().filter_map(&convert).collect();
    tasks.spawn(async move {
        // Sends one item unless `end` comes first: nothing waits for a
        // reader once the master is closing.
        let send = |item| async {
            tokio::select! {
                biased;
                sent = tx.send(item) => sent.is_ok(),
                _ = end.cancelled() => false,
            }
        };
        for item in kept {
            if !send(Ok(item)).await {
                return;
            }
        }
        if !follow {
            return;
        }
        loop {
            let next = tokio::select! {
                biased;
                next = live.recv() => next,
                _ = tx.closed() => return,
                _ = end.cancelled() => break,
            };
            let item = match next {
                Ok(item) => match convert(&item) {
                    Some(u) => Ok(u),
                    None => continue,
                },
                Err(broadcast::error::RecvError::Lagged(n)) => Err(Status::resource_exhausted(
                    format!("this reader fell {n} {what} behind; call again"),
                )),
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let last = item.is_err();
            // Not sent: the reader went (the drain below stops at once) or
            // its queue was full at the end.
            if !send(item).await {
                break;
            }
            if last {
                return;
            }
        }
        // At the end, what came before it still goes out (the last members
        // leaving at shutdown), as far as the reader has room.
        while let Ok(item) = live.try_recv() {
            if let Some(u) = convert(&item)
                && tx.try_send(Ok(u)).is_err()
            {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio_stream::StreamExt;

    fn feed(
        kept: Vec<i32>,
        capacity: usize,
    ) -> (
        TaskTracker,
        CancellationToken,
        broadcast::Sender<i32>,
        Feed<i32>,
    ) {
        let (tasks, end) = (TaskTracker::new(), CancellationToken::new());
        let (live_tx, live) = broadcast::channel(capacity);
        let feed = replay_then_follow(&tasks, end.clone(), kept, live, true, |n| Some(*n), "items");
        (tasks, end, live_tx, feed)
    }

    #[tokio::test]
    async fn what_came_before_the_end_still_goes_out_then_the_feed_ends() {
        let (_tasks, end, live, feed) = feed(vec![1], 16);
        for n in [2, 3] {
            live.send(n).expect("a receiver");
        }
        end.cancel();
        let got: Vec<i32> = feed.map(|r| r.expect("an item")).collect().await;
        assert_eq!(got, [1, 2, 3]);
    }

    #[tokio::test]
    async fn a_reader_that_never_reads_does_not_hold_up_the_end() {
        // More kept than the reader's queue holds: the replay waits on it.
        let (tasks, end, live, _feed) = feed((0..300).collect(), 16);
        tokio::task::yield_now().await;
        let _ = live.send(1);
        end.cancel();
        tasks.close();
        tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .expect("the feed's task ended");
    }

    #[tokio::test]
    async fn a_reader_that_falls_behind_is_told_and_the_feed_ends() {
        let (_tasks, _end, live, feed) = feed(Vec::new(), 2);
        for n in 0..5 {
            live.send(n).expect("a receiver");
        }
        let got: Vec<Result<i32, Status>> = feed.collect().await;
        match got.as_slice() {
            [Err(status)] => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted);
                assert!(
                    status.message().contains("fell 3 items behind"),
                    "{status:?}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
