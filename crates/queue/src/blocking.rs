//! [`BlockingQueue`]: the blocking face of a [`MessageQueue`] for worker threads.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Result, SendError};
use crate::queue::{CloseInfo, MessageQueue, QueueListener};
use crate::task::Bytes;

/// Why [`BlockingQueue::send_timeout`] gave up; the message is handed back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendTimeoutError {
    /// The outbound queue stayed full for the whole timeout.
    #[error("outbound queue still full after the timeout")]
    Timeout(Bytes),
    /// The queue is closed, or the message is larger than the frame limit.
    #[error(transparent)]
    Refused(SendError),
}

/// Why [`BlockingQueue::recv_timeout`] returned no message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvTimeoutError {
    /// No message arrived within the timeout.
    #[error("no message within the timeout")]
    Timeout,
    /// The queue closed and every message it received has been taken.
    #[error("the queue is closed")]
    Closed,
}

struct Signals {
    received: flume::Sender<Bytes>,
    room: flume::Sender<()>,
    closed: Arc<Mutex<Option<CloseInfo>>>,
    /// Never sent on: it disconnects when the listener is dropped after `closed`.
    _done: flume::Sender<()>,
}

impl QueueListener for Signals {
    fn received(&mut self, _queue: &MessageQueue, msg: Bytes) {
        // Unbounded: the pump thread never blocks here.
        let _ = self.received.send(msg);
    }

    fn writable(&mut self, _queue: &MessageQueue) {
        let _ = self.room.try_send(());
    }

    fn closed(&mut self, _queue: &MessageQueue, info: CloseInfo) {
        *self
            .closed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(info);
        // Dropping the senders (with `self`) ends `recv` once the channel is drained.
    }
}

/// The blocking face of a [`MessageQueue`]: `send_timeout`, `recv_timeout` and `close` for
/// threaded code, over the same queue, so a worker thread blocks without ever blocking the pump.
///
/// Received messages wait in an unbounded channel until taken.
pub struct BlockingQueue {
    queue: MessageQueue,
    received: flume::Receiver<Bytes>,
    room: flume::Receiver<()>,
    closed: Arc<Mutex<Option<CloseInfo>>>,
    done: flume::Receiver<()>,
}

impl BlockingQueue {
    /// Takes over `queue`'s listener and starts receiving.
    ///
    /// # Errors
    /// As [`MessageQueue::set_listener`].
    pub fn new(queue: MessageQueue) -> Result<BlockingQueue> {
        let (received_tx, received) = flume::unbounded();
        let (room_tx, room) = flume::bounded(1);
        let closed = Arc::new(Mutex::new(None));
        let (done_tx, done) = flume::bounded(1);
        queue.set_listener(Signals {
            received: received_tx,
            room: room_tx,
            closed: closed.clone(),
            _done: done_tx,
        })?;
        Ok(BlockingQueue {
            queue,
            received,
            room,
            closed,
            done,
        })
    }

    /// Sends `msg`, waiting up to `timeout` while the outbound queue is full.
    ///
    /// # Errors
    /// [`SendTimeoutError::Timeout`] with the message if there was no room in time;
    /// [`SendTimeoutError::Refused`] if the queue is closed or the message too large.
    pub fn send_timeout(
        &self,
        msg: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError> {
        let deadline = Instant::now() + timeout;
        let mut msg = msg.into();
        loop {
            match self.queue.send(msg) {
                Ok(()) => return Ok(()),
                Err(SendError::Full { msg: back, .. }) => {
                    msg = back;
                    if self.room.recv_deadline(deadline).is_err() {
                        // One last try: room may have come without a notice we waited for.
                        return match self.queue.send(msg) {
                            Ok(()) => Ok(()),
                            Err(SendError::Full { msg, .. }) => Err(SendTimeoutError::Timeout(msg)),
                            Err(other) => Err(SendTimeoutError::Refused(other)),
                        };
                    }
                }
                Err(other) => return Err(SendTimeoutError::Refused(other)),
            }
        }
    }

    /// Waits up to `timeout` for the next message.
    ///
    /// # Errors
    /// [`RecvTimeoutError::Timeout`] if none came; [`RecvTimeoutError::Closed`] once the queue has
    /// closed and every message it received was taken.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Bytes, RecvTimeoutError> {
        self.received
            .recv_timeout(timeout)
            .map_err(|err| match err {
                flume::RecvTimeoutError::Timeout => RecvTimeoutError::Timeout,
                flume::RecvTimeoutError::Disconnected => RecvTimeoutError::Closed,
            })
    }

    /// Takes a message if one is waiting.
    pub fn try_recv(&self) -> Option<Bytes> {
        self.received.try_recv().ok()
    }

    /// Closes the queue (see [`MessageQueue::close`]); messages already received can still be taken.
    pub fn close(&self) -> bool {
        self.queue.close()
    }

    /// Waits up to `timeout` for the queue to be closed on both sides; returns why it closed.
    pub fn wait_closed(&self, timeout: Duration) -> Option<CloseInfo> {
        // Bug fix: this used to wait on the channel of received messages and threw away every
        // message that came while it waited, so messages received before the close were lost
        // (though `close` promises they can still be taken). It now waits on a channel of its
        // own, which disconnects when the listener is dropped after `closed`.
        if let Some(info) = lock(&self.closed).take() {
            return Some(info);
        }
        let _ = self.done.recv_timeout(timeout);
        lock(&self.closed).take()
    }

    /// The queue underneath.
    pub fn queue(&self) -> &MessageQueue {
        &self.queue
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MessageQueue {
    /// Turns this queue into its blocking face (see [`BlockingQueue::new`]).
    ///
    /// # Errors
    /// As [`MessageQueue::set_listener`].
    pub fn into_blocking(self) -> Result<BlockingQueue> {
        BlockingQueue::new(self)
    }
}

impl fmt::Debug for BlockingQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingQueue")
            .field("queue", &self.queue)
            .field("waiting", &self.received.len())
            .finish()
    }
}
