//! The wait and the waker on Linux, straight on `polling`'s epoll descriptor.
//!
//! `polling::Poller::wait` makes five system calls on Linux whatever happens: it sets a timerfd
//! and re-arms it, waits, then reads its notification eventfd and re-arms that. A zero-timeout
//! poll costs about 1.5 µs that way on the machine this was measured on, against 0.13 µs for one
//! `epoll_wait`; a pump under load polls after every run of tasks, and an idle pump spins on
//! such polls before it sleeps. So on Linux [`Poll`](crate::Poll) waits with one `epoll_wait` on
//! the poller's descriptor (`polling` exposes it through `AsFd`), with the timeout rounded up to
//! whole milliseconds, and its [`Waker`](crate::Waker)s share an eventfd of our own, registered
//! edge-triggered like every other source, instead of `polling`'s notifier. Registration stays
//! with `polling`.
//!
//! `polling`'s own descriptors (its notifier and its timer, both under the key `usize::MAX`) are
//! one-shot and re-armed only by its `wait`: we never notify through it, but should one of them
//! report, `Poll` lets `polling` wait once with a zero timeout, which clears and re-arms them.

use std::cell::RefCell;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use rustix::event::epoll::{self, EventFlags};
use rustix::event::{EventfdFlags, eventfd};

use crate::poll::{Event, Interest, Token};
use crate::sys::Registration;

/// The key of `polling`'s notifier and timer.
pub(crate) const POLLING_KEY: usize = usize::MAX;

/// The key of the wakers' eventfd.
pub(crate) const WAKE_KEY: usize = usize::MAX - 1;

/// The longest single wait: the plain `epoll_pwait` takes an `int` of milliseconds. A longer
/// timeout is waited in several.
const LONGEST_WAIT: Duration = Duration::from_millis(i32::MAX as u64);

/// What one raw event is.
pub(crate) enum Raw {
    /// A registered source's readiness.
    Source(Event),
    /// The wakers' eventfd was written.
    Wake,
    /// One of `polling`'s own descriptors.
    Polling,
}

thread_local! {
    /// Where `epoll_wait` writes: per thread, because its events hold a raw pointer field and
    /// so cannot travel in a `Send` type (a `Poll` is used by one thread at a time anyway).
    static RAW: RefCell<Vec<epoll::Event>> = const { RefCell::new(Vec::new()) };
}

/// Waits on the epoll descriptor of `poller` for at most `timeout` (`None`: until an event)
/// and hands each of at most `cap` reported events to `each`.
pub(crate) fn wait(
    poller: &polling::Poller,
    cap: usize,
    timeout: Option<Duration>,
    mut each: impl FnMut(Raw),
) -> io::Result<()> {
    let timeout = timeout.map(|t| {
        let t = t.min(LONGEST_WAIT);
        rustix::time::Timespec {
            tv_sec: t.as_secs() as _,
            tv_nsec: t.subsec_nanos() as _,
        }
    });
    RAW.with_borrow_mut(|buf| {
        buf.clear();
        buf.reserve(cap);
        let spare = &mut buf.spare_capacity_mut()[..cap];
        let (got, _) = epoll::wait(poller, spare, timeout.as_ref())?;
        for ev in got.iter() {
            each(classify(ev));
        }
        Ok(())
    })
}

/// Classifies one raw event, with readiness read the way `polling` reads it.
fn classify(ev: &epoll::Event) -> Raw {
    let flags = ev.flags;
    match ev.data.u64() as usize {
        WAKE_KEY => Raw::Wake,
        POLLING_KEY => Raw::Polling,
        key => Raw::Source(Event::new(
            Token(key),
            flags.intersects(EventFlags::IN | EventFlags::HUP | EventFlags::ERR | EventFlags::PRI),
            flags.intersects(EventFlags::OUT | EventFlags::HUP | EventFlags::ERR),
            flags.contains(EventFlags::HUP),
            flags.contains(EventFlags::ERR),
        )),
    }
}

/// The eventfd that the wakers of one `Poll` write to.
pub(crate) struct WakeFd {
    fd: Registration<OwnedFd>,
}

impl WakeFd {
    pub(crate) fn new(poller: Arc<polling::Poller>) -> io::Result<WakeFd> {
        let fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let fd =
            Registration::new(poller, fd, Token(WAKE_KEY), Interest::READABLE).map_err(|err| {
                match err {
                    crate::Error::Register { source, .. } => source,
                    other => io::Error::other(other),
                }
            })?;
        Ok(WakeFd { fd })
    }

    /// Makes the poll report the eventfd (at once, or when it next waits).
    pub(crate) fn wake(&self) -> io::Result<()> {
        match rustix::io::write(&*self.fd, &1u64.to_ne_bytes()) {
            // The counter is full: it is readable, so the poll wakes anyway.
            Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Resets the counter after the poll saw it (the edge-triggered registration reports the
    /// next write whether or not this runs; reading keeps the counter far from its limit).
    pub(crate) fn drain(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&*self.fd, &mut buf);
    }
}
