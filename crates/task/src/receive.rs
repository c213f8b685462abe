//! [`ReceiveTask`]: reads large chunks, decodes every whole frame and delivers them in order.

use std::fmt;
use std::io;
use std::time::Duration;

use bytes::Bytes;

use crate::codec::{FrameDecoder, Frames};
use crate::error::FrameError;
use crate::pump::eventq::net::TcpStream;
use crate::pump::{Context, IoSource, Next, PumpHandle, Task};

/// Most frames handed to the events at once; the budget is checked between batches.
const DELIVER_BATCH: usize = 1024;

/// Bytes asked of the socket per read.
pub const READ_CHUNK: usize = 256 * 1024;
/// While [`ReceiveEvents::hold`] says so, how often the receive task asks again.
pub const HOLD_RECHECK: Duration = Duration::from_millis(1);

/// How the receive side ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum ReceiveOutcome {
    /// The peer shut its write half down (end of stream) after its last whole frame.
    Eof,
    /// The stream ended in the middle of a frame.
    Truncated {
        /// Bytes of the incomplete frame that were received.
        buffered: usize,
    },
    /// The peer broke the framing rules (for example: announced a frame above the maximum).
    Protocol(FrameError),
    /// Reading failed (for example: the connection was reset).
    Failed(io::Error),
    /// The events asked to stop ([`Flow::Stop`]).
    Stopped,
}

/// Whether to go on receiving after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Go on.
    Continue,
    /// Stop reading; `finished(Stopped)` follows.
    Stop,
}

/// What the receive side reports, on the pump thread. Implementations must return promptly.
pub trait ReceiveEvents: Send + 'static {
    /// One whole frame's payload, in arrival order.
    fn received(&mut self, frame: Bytes, cx: &mut Context<'_>) -> Flow;

    /// Several whole frames, in arrival order, sharing one buffer; the default calls
    /// [`ReceiveEvents::received`] with each as a zero-copy [`Bytes`] until one says stop.
    /// Override it to pay per-batch costs once, or to read the frames in place with
    /// [`Frames::iter`] (no reference count per frame).
    fn received_frames(&mut self, frames: &Frames, cx: &mut Context<'_>) -> Flow {
        for frame in frames.iter_bytes() {
            if self.received(frame, cx) == Flow::Stop {
                return Flow::Stop;
            }
        }
        Flow::Continue
    }

    /// Whether to stop reading for now (flow control): asked before each batch is delivered and
    /// before each read. While it says so, nothing more is delivered or read, the kernel's
    /// buffers fill and TCP makes the peer wait; it is asked again every [`HOLD_RECHECK`].
    /// The default never holds.
    fn hold(&mut self, _cx: &mut Context<'_>) -> bool {
        false
    }

    /// The receive side ended; called exactly once, after every `received`.
    fn finished(&mut self, outcome: ReceiveOutcome, cx: &mut Context<'_>);
}

/// Reads a socket in large chunks, splits every whole frame out of one buffer (the payloads share
/// it, no copy) and delivers them in order; refuses a frame above the maximum size with a
/// protocol error, before its payload arrives.
pub struct ReceiveTask<E> {
    source: Option<IoSource<TcpStream>>,
    decoder: FrameDecoder,
    events: E,
    /// The last batch of frames delivered (its span list is reused).
    frames: Frames,
}

impl<E: ReceiveEvents> ReceiveTask<E> {
    /// Registers `stream` (the read half of a connection) with `pump`; post the task to start.
    ///
    /// # Errors
    /// [`crate::pump::Error`] if the registration fails.
    pub fn new(
        pump: &PumpHandle,
        stream: TcpStream,
        max_frame_len: usize,
        events: E,
    ) -> crate::pump::Result<Self> {
        Ok(ReceiveTask {
            source: Some(pump.register(stream)?),
            decoder: FrameDecoder::new(max_frame_len),
            events,
            frames: Frames::new(),
        })
    }

    fn finish(&mut self, outcome: ReceiveOutcome, cx: &mut Context<'_>) -> Next {
        if let Some(source) = self.source.take() {
            tracing::debug!(outcome = ?outcome, "receive side ended");
            if !matches!(outcome, ReceiveOutcome::Eof) {
                let _ = source.shutdown(std::net::Shutdown::Read);
            }
            drop(source);
            self.events.finished(outcome, cx);
        }
        Next::Done
    }

    /// Delivers every whole frame buffered; `Some(next)` when the task must end.
    /// Stops with `Some(Next::Repost)` when the budget is used up: the rest stays buffered and is
    /// delivered first on the next run, so one large read never holds the pump for long.
    fn deliver(&mut self, cx: &mut Context<'_>) -> Option<Next> {
        loop {
            if self.decoder.buffered() > 0 && self.events.hold(cx) {
                return Some(Next::RepostAfter(HOLD_RECHECK));
            }
            let count = match self.decoder.decode_frames(&mut self.frames, DELIVER_BATCH) {
                Ok(count) => count,
                Err(err) => {
                    tracing::warn!(error = %err, "protocol error; closing the connection");
                    return Some(self.finish(ReceiveOutcome::Protocol(err), cx));
                }
            };
            if count == 0 {
                return None;
            }
            let flow = self.events.received_frames(&self.frames, cx);
            // Let go of the buffer now, so the decoder can reuse it for the next read.
            self.frames.clear();
            if flow == Flow::Stop {
                return Some(self.finish(ReceiveOutcome::Stopped, cx));
            }
            // Decode again even after a short batch: it may have stopped before a bad header,
            // which must be reported now, not after more data arrives.
            if count == DELIVER_BATCH && cx.should_yield() {
                return Some(Next::Repost);
            }
        }
    }
}

impl<E: ReceiveEvents> Task for ReceiveTask<E> {
    fn name(&self) -> &str {
        "receive"
    }

    fn run(&mut self, cx: &mut Context<'_>) -> Next {
        // Frames left buffered when the last run yielded go first, in order.
        if let Some(next) = self.deliver(cx) {
            return next;
        }
        loop {
            if self.source.is_none() {
                return Next::Done;
            }
            if self.events.hold(cx) {
                return Next::RepostAfter(HOLD_RECHECK);
            }
            let Some(source) = self.source.as_ref() else {
                return Next::Done;
            };
            match self.decoder.read_stream(source, READ_CHUNK) {
                Ok(0) => {
                    if let Some(next) = self.deliver(cx) {
                        return next;
                    }
                    let buffered = self.decoder.buffered();
                    let outcome = if buffered == 0 {
                        ReceiveOutcome::Eof
                    } else {
                        ReceiveOutcome::Truncated { buffered }
                    };
                    return self.finish(outcome, cx);
                }
                Ok(_) => {
                    if let Some(next) = self.deliver(cx) {
                        return next;
                    }
                    if cx.should_yield() {
                        return Next::Repost;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    return source.wait_drained(None);
                }
                Err(err) => return self.finish(ReceiveOutcome::Failed(err), cx),
            }
        }
    }
}

impl<E> fmt::Debug for ReceiveTask<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiveTask")
            .field("buffered", &self.decoder.buffered())
            .finish_non_exhaustive()
    }
}
