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
    tasks.spawn(end.run_until_cancelled_owned(async move {
        for item in kept {
            if tx.send(Ok(item)).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        loop {
            let next = tokio::select! {
                _ = tx.closed() => return,
                next = live.recv() => next,
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
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
    }));
    Box::pin(ReceiverStream::new(rx))
}
