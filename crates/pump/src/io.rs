//! I/O sources registered with a pump: a task waits on one by returning [`IoSource::wait`].

use std::fmt;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use crate::eventq::{Interest, Registration, Source};
use crate::task::{IoWait, Next};

/// A source registered with a pump, made by [`crate::PumpHandle::register`].
///
/// It dereferences to the source, so reads and writes go through `&S`. When a read or write
/// returns `WouldBlock`, return [`IoSource::wait_readable`] (or writable) from the task's `run`:
/// the pump runs the task again once the source is ready. Dropping it deregisters the source.
pub struct IoSource<S: Source> {
    reg: Registration<S>,
}

impl<S: Source> IoSource<S> {
    pub(crate) fn new(reg: Registration<S>) -> Self {
        IoSource { reg }
    }

    /// Waits until the source is ready for `interest`, or until `timeout` passes (then the task
    /// runs with [`crate::Wake::TimedOut`]).
    ///
    /// Readiness that is already there is reported at once, so waiting right after a
    /// `WouldBlock` never misses data that arrived in between.
    pub fn wait(&self, interest: Interest, timeout: Option<Duration>) -> Next {
        match self.reg.rearm(interest) {
            Ok(()) => Next::Wait(IoWait {
                token: self.reg.token().0,
                timeout,
            }),
            Err(err) => {
                // The descriptor is broken; run again so that the task's next I/O call reports it.
                tracing::warn!(token = self.reg.token().0, error = %err, "re-arming a source failed");
                Next::Repost
            }
        }
    }

    /// Waits until the source is ready again, right after a read or write showed it drained: a
    /// `WouldBlock`, or a read that returned less than it asked for. Skips the re-arm system
    /// call of [`wait`](Self::wait): sources are registered edge-triggered, and new data (or new
    /// room) after that call raises a new event, which the pump takes only once this task is
    /// parked, since both happen on the pump thread.
    ///
    /// Use [`wait`](Self::wait) in any other case (for example before the first read).
    pub fn wait_drained(&self, timeout: Option<Duration>) -> Next {
        Next::Wait(IoWait {
            token: self.reg.token().0,
            timeout,
        })
    }

    /// Waits until the source is readable.
    pub fn wait_readable(&self) -> Next {
        self.wait(Interest::READABLE, None)
    }

    /// Waits until the source is writable.
    pub fn wait_writable(&self) -> Next {
        self.wait(Interest::WRITABLE, None)
    }

    /// The token of this source's events.
    pub fn token(&self) -> crate::eventq::Token {
        self.reg.token()
    }

    /// Deregisters the source and gives it back.
    ///
    /// # Errors
    /// As [`Registration::into_inner`].
    pub fn into_inner(self) -> crate::eventq::Result<S> {
        self.reg.into_inner()
    }
}

impl<S: Source> Deref for IoSource<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.reg
    }
}

impl<S: Source> AsFd for IoSource<S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.reg.as_fd()
    }
}

impl<S: Source + fmt::Debug> fmt::Debug for IoSource<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoSource").field("reg", &self.reg).finish()
    }
}
