//! [`CloseTask`]: flushes what is queued up to a linger time, shuts the socket down, notifies once.

use std::fmt;
use std::time::Duration;

use crate::pump::{Context, Next, Task};
use crate::send::{Outbox, SendOutcome};

/// Closes the send side of a connection: no more pushes, what is queued is flushed for up to
/// `linger`, then the socket is shut down (the write half after a full flush, both halves when the
/// linger time passed) and the callback runs exactly once with the outcome.
///
/// Closing twice is harmless: the second close finds the outbox closing and does nothing (its
/// callback is dropped without running).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use mixbus_task::{Bytes, CloseTask, SendEvents, SendOptions, SendOutcome, SendTask, TaskEvent};
/// use mixbus_task::pump::{Context, EventPump};
/// use mixbus_task::pump::eventq::net::TcpStream;
/// use std::io::Read;
///
/// struct Quiet;
/// impl SendEvents for Quiet {
///     fn sent(&mut self, _msg: Bytes, _cx: &mut Context<'_>) {}
///     fn finished(&mut self, _outcome: &SendOutcome, _cx: &mut Context<'_>) {}
/// }
///
/// let pump = EventPump::new()?;
/// let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
/// let stream = TcpStream::from_std(std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap()).unwrap();
/// let (mut peer, _) = listener.accept().unwrap();
/// let outbox = SendTask::start(&pump, stream, SendOptions::default(), None, Quiet)?;
/// outbox.push(Bytes::from_static(b"bye")).unwrap();
/// let (tx, rx) = flume::bounded(1);
/// CloseTask::new(outbox, Duration::from_secs(1), move |outcome, _cx| {
///     tx.send(matches!(outcome, SendOutcome::Flushed)).unwrap();
/// }).post(&pump).unwrap();
/// assert!(rx.recv().unwrap());
/// let mut all = Vec::new();
/// peer.read_to_end(&mut all).unwrap(); // the frame, then end of stream
/// assert_eq!(all, b"\0\0\0\x03bye");
/// # Ok::<(), mixbus_task::pump::Error>(())
/// ```
pub struct CloseTask<F> {
    outbox: Outbox,
    linger: Duration,
    on_closed: Option<F>,
}

impl<F> CloseTask<F>
where
    F: FnOnce(&SendOutcome, &mut Context<'_>) + Send + 'static,
{
    /// A close of `outbox`'s connection with `linger` to flush; post it to start.
    pub fn new(outbox: Outbox, linger: Duration, on_closed: F) -> Self {
        CloseTask {
            outbox,
            linger,
            on_closed: Some(on_closed),
        }
    }
}

impl<F> Task for CloseTask<F>
where
    F: FnOnce(&SendOutcome, &mut Context<'_>) + Send + 'static,
{
    fn name(&self) -> &str {
        "close"
    }

    fn run(&mut self, _cx: &mut Context<'_>) -> Next {
        if let Some(on_closed) = self.on_closed.take()
            && !self
                .outbox
                .close_with(self.linger, Some(Box::new(on_closed)))
        {
            tracing::debug!("close: already closing");
        }
        Next::Done
    }
}

impl<F> fmt::Debug for CloseTask<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloseTask")
            .field("outbox", &self.outbox)
            .field("linger", &self.linger)
            .finish()
    }
}
