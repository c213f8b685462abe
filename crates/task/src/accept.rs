//! [`AcceptTask`]: accepts every pending connection on a listener, then waits again.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use crate::pump::eventq::net::{TcpListener, TcpStream};
use crate::pump::{Context, IoSource, Next, PumpHandle, Task};

/// The shortest pause after the system runs out of descriptors or memory.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// The longest such pause.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Accepts connections on a listener for as long as it lives, handing each to a callback.
///
/// Each run accepts every pending connection up to the time budget, then waits for the listener
/// to be readable again. When the system is out of resources (`EMFILE`, `ENFILE`, `ENOBUFS`,
/// `ENOMEM`) it backs off (10 ms doubling up to 1 s) instead of spinning, and goes on. Stop it by
/// killing the owner it was posted for (or dropping the pump): the listener closes with it.
///
/// The callback runs on the pump thread and must return promptly.
pub struct AcceptTask<F> {
    listener: IoSource<TcpListener>,
    local: Option<SocketAddr>,
    on_accept: F,
    backoff: Duration,
    accepted: u64,
}

impl<F> AcceptTask<F>
where
    F: FnMut(TcpStream, SocketAddr, &mut Context<'_>) + Send + 'static,
{
    /// Registers `listener` with `pump`; post the task (usually with an owner) to start accepting.
    ///
    /// # Errors
    /// [`crate::pump::Error`] if the registration fails.
    pub fn new(
        pump: &PumpHandle,
        listener: TcpListener,
        on_accept: F,
    ) -> crate::pump::Result<Self> {
        let local = listener.local_addr().ok();
        Ok(AcceptTask {
            listener: pump.register(listener)?,
            local,
            on_accept,
            backoff: MIN_BACKOFF,
            accepted: 0,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local
    }
}

fn out_of_resources(err: &io::Error) -> bool {
    // EMFILE 24, ENFILE 23, ENOBUFS 105, ENOMEM 12 on Linux.
    matches!(err.raw_os_error(), Some(23 | 24 | 105 | 12))
        || err.kind() == io::ErrorKind::OutOfMemory
}

impl<F> Task for AcceptTask<F>
where
    F: FnMut(TcpStream, SocketAddr, &mut Context<'_>) + Send + 'static,
{
    fn name(&self) -> &str {
        "accept"
    }

    fn run(&mut self, cx: &mut Context<'_>) -> Next {
        loop {
            match self.listener.accept() {
                Ok((stream, peer)) => {
                    self.backoff = MIN_BACKOFF;
                    self.accepted += 1;
                    tracing::debug!(peer = %peer, local = ?self.local, "accepted");
                    (self.on_accept)(stream, peer, cx);
                    if cx.should_yield() {
                        return Next::Repost;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    return self.listener.wait_readable();
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if out_of_resources(&err) => {
                    let pause = self.backoff;
                    self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    tracing::warn!(error = %err, pause_ms = pause.as_millis() as u64, "accept backing off");
                    return Next::RepostAfter(pause);
                }
                Err(err) => {
                    // Per-connection failures (aborted before accept, protocol errors): skip it.
                    tracing::debug!(error = %err, "accept failed for one connection");
                }
            }
        }
    }
}

impl<F> fmt::Debug for AcceptTask<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AcceptTask")
            .field("local", &self.local)
            .field("accepted", &self.accepted)
            .finish()
    }
}
