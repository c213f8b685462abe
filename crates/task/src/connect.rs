//! [`ConnectTask`]: a non-blocking connect that retries with back-off while nothing listens.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::pump::eventq::net::TcpStream;
use crate::pump::{Context, IoSource, Next, Task, Wake};

/// How a [`ConnectTask`] retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Give up (refused) after this long in all (default 5 s).
    pub connect_timeout: Duration,
    /// First pause after a refusal (default 10 ms); doubles after each attempt.
    pub backoff_initial: Duration,
    /// Longest pause between attempts (default 500 ms).
    pub backoff_max: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(5),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(500),
        }
    }
}

impl ConnectOptions {
    /// Sets the overall connect timeout.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the back-off range.
    #[must_use]
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff_initial = initial;
        self.backoff_max = max.max(initial);
        self
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
#[error("connect to {addr} refused after {attempts} attempts in {elapsed:?}")]
pub struct ConnectError {
    /// Where we tried to connect.
    pub addr: SocketAddr,
    /// How many connects were tried.
    pub attempts: u32,
    /// How long we tried.
    pub elapsed: Duration,
    /// The last error (for a timeout, `TimedOut`).
    #[source]
    pub source: io::Error,
}

enum State {
    Idle,
    Connecting(IoSource<TcpStream>),
    Finished,
}

/// Connects to an address without blocking the pump: retries with back-off while the port is not
/// listening yet (a rendez-vous), up to the connect timeout, then calls back exactly once with the
/// connected stream or the reason it was refused.
///
/// The callback runs on the pump thread and must return promptly.
pub struct ConnectTask<F> {
    addr: SocketAddr,
    options: ConnectOptions,
    start: Option<Instant>,
    attempts: u32,
    backoff: Duration,
    state: State,
    on_done: Option<F>,
    last_error: Option<io::Error>,
}

impl<F> ConnectTask<F>
where
    F: FnOnce(Result<TcpStream, ConnectError>, &mut Context<'_>) + Send + 'static,
{
    /// A connect to `addr`; post it to start. The clock starts at its first run.
    pub fn new(addr: SocketAddr, options: ConnectOptions, on_done: F) -> Self {
        ConnectTask {
            addr,
            options,
            start: None,
            attempts: 0,
            backoff: options.backoff_initial,
            state: State::Idle,
            on_done: Some(on_done),
            last_error: None,
        }
    }

    fn finish(&mut self, result: Result<TcpStream, ConnectError>, cx: &mut Context<'_>) -> Next {
        self.state = State::Finished;
        if let Some(on_done) = self.on_done.take() {
            on_done(result, cx);
        }
        Next::Done
    }

    fn refuse(&mut self, source: io::Error, cx: &mut Context<'_>) -> Next {
        let elapsed = self.start.map(|s| s.elapsed()).unwrap_or_default();
        tracing::debug!(peer = %self.addr, attempts = self.attempts, error = %source, "connect refused");
        let err = ConnectError {
            addr: self.addr,
            attempts: self.attempts,
            elapsed,
            source,
        };
        self.finish(Err(err), cx)
    }

    fn deadline(&self) -> Instant {
        self.start.unwrap_or_else(Instant::now) + self.options.connect_timeout
    }

    /// After a failed attempt: pause and try again, or give up when the pause would pass the deadline.
    fn retry(&mut self, err: io::Error, cx: &mut Context<'_>) -> Next {
        self.state = State::Idle;
        let now = Instant::now();
        let deadline = self.deadline();
        if now >= deadline {
            return self.refuse(err, cx);
        }
        let pause = self.backoff.min(deadline - now);
        self.backoff = (self.backoff * 2).min(self.options.backoff_max);
        tracing::trace!(peer = %self.addr, attempt = self.attempts, error = %err, "connect retry");
        self.last_error = Some(err);
        Next::RepostAfter(pause)
    }

    fn attempt(&mut self, cx: &mut Context<'_>) -> Next {
        if Instant::now() >= self.deadline() {
            let err = self
                .last_error
                .take()
                .unwrap_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
            return self.refuse(err, cx);
        }
        self.attempts += 1;
        let stream = match TcpStream::connect(self.addr) {
            Ok(stream) => stream,
            Err(crate::pump::eventq::Error::Connect { source, .. }) if retryable(&source) => {
                return self.retry(source, cx);
            }
            Err(err) => return self.refuse(io::Error::other(err), cx),
        };
        match cx.handle().register(stream) {
            Ok(source) => {
                let left = self.deadline().saturating_duration_since(Instant::now());
                let next = source.wait(crate::pump::eventq::Interest::WRITABLE, Some(left));
                self.state = State::Connecting(source);
                next
            }
            Err(err) => self.refuse(io::Error::other(err), cx),
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> Next {
        let State::Connecting(source) = std::mem::replace(&mut self.state, State::Idle) else {
            return self.attempt(cx);
        };
        match source.take_error() {
            Ok(Some(err)) | Err(err) => {
                if retryable(&err) {
                    self.retry(err, cx)
                } else {
                    self.refuse(err, cx)
                }
            }
            Ok(None) => match source.peer_addr() {
                Ok(_) => match source.into_inner() {
                    Ok(stream) => {
                        tracing::debug!(peer = %self.addr, attempts = self.attempts, "connected");
                        self.finish(Ok(stream), cx)
                    }
                    Err(err) => self.refuse(io::Error::other(err), cx),
                },
                // Not connected yet: a spurious wake-up; wait again.
                Err(err) if err.kind() == io::ErrorKind::NotConnected => {
                    let left = self.deadline().saturating_duration_since(Instant::now());
                    let next = source.wait(crate::pump::eventq::Interest::WRITABLE, Some(left));
                    self.state = State::Connecting(source);
                    next
                }
                Err(err) => self.retry(err, cx),
            },
        }
    }
}

/// Errors that mean "nothing listens there yet": worth another try until the deadline.
fn retryable(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::TimedOut
    )
}

impl<F> Task for ConnectTask<F>
where
    F: FnOnce(Result<TcpStream, ConnectError>, &mut Context<'_>) + Send + 'static,
{
    fn name(&self) -> &str {
        "connect"
    }

    fn run(&mut self, cx: &mut Context<'_>) -> Next {
        if self.start.is_none() {
            self.start = Some(Instant::now());
        }
        match (&self.state, cx.wake()) {
            (State::Finished, _) => Next::Done,
            (State::Connecting(_), Wake::TimedOut) => {
                self.state = State::Idle;
                let err = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
                self.refuse(err, cx)
            }
            (State::Connecting(_), _) => self.check(cx),
            (State::Idle, _) => self.attempt(cx),
        }
    }
}

impl<F> fmt::Debug for ConnectTask<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectTask")
            .field("addr", &self.addr)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}
