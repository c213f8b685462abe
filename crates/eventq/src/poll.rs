//! `Poll`, its cloneable `Registry`, and the small types that travel with them.

use std::fmt;
use std::io;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::sys::{Registration, Source};
use crate::{Error, Result};

/// Identifies a registered source (or a [`Waker`]) in the events it produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(pub usize);

/// What a registration waits for: readable, writable, or both.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Interest(u8);

impl Interest {
    /// Wait until reading would not block.
    pub const READABLE: Interest = Interest(1);
    /// Wait until writing would not block.
    pub const WRITABLE: Interest = Interest(2);
    /// Wait for either.
    pub const BOTH: Interest = Interest(3);

    /// Whether this interest includes readability.
    pub const fn is_readable(self) -> bool {
        self.0 & 1 != 0
    }

    /// Whether this interest includes writability.
    pub const fn is_writable(self) -> bool {
        self.0 & 2 != 0
    }

    /// Both interests together.
    #[must_use]
    pub const fn add(self, other: Interest) -> Interest {
        Interest(self.0 | other.0)
    }
}

impl std::ops::BitOr for Interest {
    type Output = Interest;
    fn bitor(self, rhs: Interest) -> Interest {
        self.add(rhs)
    }
}

impl fmt::Debug for Interest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.is_readable(), self.is_writable()) {
            (true, true) => f.write_str("READABLE | WRITABLE"),
            (true, false) => f.write_str("READABLE"),
            (false, true) => f.write_str("WRITABLE"),
            (false, false) => f.write_str("NONE"),
        }
    }
}

/// One readiness event: which source, and what it is ready for.
///
/// Readiness is a hint: a read or write may still return `WouldBlock`, which means "wait again".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    token: Token,
    readable: bool,
    writable: bool,
    hup: bool,
    error: bool,
}

impl Event {
    /// The token of the source that is ready.
    pub fn token(&self) -> Token {
        self.token
    }

    /// Reading would not block (data, end of stream, or an error to read).
    pub fn is_readable(&self) -> bool {
        self.readable
    }

    /// Writing would not block.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The peer hung up (or the connection was closed), as far as the platform reports it.
    pub fn is_hup(&self) -> bool {
        self.hup
    }

    /// The source has a pending error (read it with `take_error`), as far as the platform reports it.
    pub fn is_error(&self) -> bool {
        self.error
    }

    #[cfg(target_os = "linux")]
    pub(crate) fn new(
        token: Token,
        readable: bool,
        writable: bool,
        hup: bool,
        error: bool,
    ) -> Event {
        Event {
            token,
            readable,
            writable,
            hup,
            error,
        }
    }

    fn from_polling(ev: &polling::Event) -> Event {
        Event {
            token: Token(ev.key),
            readable: ev.readable,
            writable: ev.writable,
            hup: ev.is_interrupt(),
            error: ev.is_err().unwrap_or(false),
        }
    }
}

/// A reusable buffer of events filled by [`Poll::poll`].
pub struct Events {
    raw: polling::Events,
    list: Vec<Event>,
}

impl Events {
    /// A buffer that holds up to `capacity` events per poll (at least one).
    pub fn with_capacity(capacity: usize) -> Events {
        let cap = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        Events {
            raw: polling::Events::with_capacity(cap),
            list: Vec::with_capacity(capacity.max(1)),
        }
    }

    /// The events of the last poll.
    pub fn iter(&self) -> std::slice::Iter<'_, Event> {
        self.list.iter()
    }

    /// How many events the last poll returned.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether the last poll returned no event (it timed out).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Forgets the events held.
    pub fn clear(&mut self) {
        self.raw.clear();
        self.list.clear();
    }
}

impl Default for Events {
    fn default() -> Self {
        Events::with_capacity(1024)
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.list.iter()).finish()
    }
}

impl<'a> IntoIterator for &'a Events {
    type Item = &'a Event;
    type IntoIter = std::slice::Iter<'a, Event>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

struct WakerState {
    token: Token,
    pending: AtomicBool,
    /// The `Waker` is gone; its state stays listed until a pending wake has been reported.
    dropped: AtomicBool,
}

struct Shared {
    poller: Arc<polling::Poller>,
    /// Set by any waker before it notifies; lets `poll` tell a wake from a spurious return.
    woken: AtomicBool,
    wakers: Mutex<Vec<Arc<WakerState>>>,
    /// What the wakers write to (on other platforms they notify through `polling`).
    #[cfg(target_os = "linux")]
    wake_fd: crate::linux::WakeFd,
}

impl Shared {
    /// Makes the poll (blocked now, or the next one) return.
    fn notify(&self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        return self.wake_fd.wake();
        #[cfg(not(target_os = "linux"))]
        return self.poller.notify();
    }

    /// One wait for events into `events.list` (appended): one `epoll_wait` (see
    /// [`crate::linux`]).
    #[cfg(target_os = "linux")]
    fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        use crate::linux::{Raw, WAKE_KEY, wait};
        let mut polling_fds = false;
        let cap = events.list.capacity().max(1);
        wait(&self.poller, cap, timeout, |raw| match raw {
            Raw::Source(event) => events.list.push(event),
            Raw::Wake => self.wake_fd.drain(),
            Raw::Polling => polling_fds = true,
        })?;
        if polling_fds {
            // `polling`'s notifier or timer reported: only its own wait re-arms them. (It never
            // does while nothing notifies through `polling`; this keeps it so if it did.)
            self.poller.wait(&mut events.raw, Some(Duration::ZERO))?;
            for ev in events.raw.iter() {
                if ev.key == WAKE_KEY {
                    self.wake_fd.drain();
                } else {
                    events.list.push(Event::from_polling(&ev));
                }
            }
            events.raw.clear();
        }
        Ok(())
    }

    /// One wait for events into `events.list` (appended).
    #[cfg(not(target_os = "linux"))]
    fn wait(&self, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
        self.poller.wait(&mut events.raw, timeout)?;
        events
            .list
            .extend(events.raw.iter().map(|ev| Event::from_polling(&ev)));
        events.raw.clear();
        Ok(())
    }
}

/// Waits for readiness events. One `Poll` per loop thread; register sources through [`Registry`].
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use mixbus_eventq::{Events, Poll, Token, Waker};
///
/// let mut poll = Poll::new()?;
/// let waker = Waker::new(&poll.registry(), Token(0))?;
/// let t = std::thread::spawn(move || waker.wake());
/// let mut events = Events::with_capacity(16);
/// poll.poll(&mut events, Some(Duration::from_secs(10)))?;
/// assert_eq!(events.iter().next().map(|e| e.token()), Some(Token(0)));
/// t.join().unwrap()?;
/// # Ok::<(), mixbus_eventq::Error>(())
/// ```
pub struct Poll {
    shared: Arc<Shared>,
}

impl Poll {
    /// Creates a poller.
    ///
    /// # Errors
    /// [`Error::NewPoll`] if the operating system refuses (for example, too many open files).
    pub fn new() -> Result<Poll> {
        let poller = Arc::new(polling::Poller::new().map_err(Error::NewPoll)?);
        Ok(Poll {
            shared: Arc::new(Shared {
                #[cfg(target_os = "linux")]
                wake_fd: crate::linux::WakeFd::new(poller.clone()).map_err(Error::NewPoll)?,
                poller,
                woken: AtomicBool::new(false),
                wakers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// A handle that registers sources from any thread, also while this `Poll` is blocked.
    pub fn registry(&self) -> Registry {
        Registry {
            shared: self.shared.clone(),
        }
    }

    /// Waits for events and fills `events` (clearing what it held).
    ///
    /// `None` waits until an event or a wake; `Some(Duration::ZERO)` never blocks. It returns no
    /// earlier than the timeout unless an event or a [`Waker`] ends it; a signal is retried inside.
    ///
    /// # Errors
    /// [`Error::Wait`] if the operating system fails the wait.
    pub fn poll(&mut self, events: &mut Events, timeout: Option<Duration>) -> Result<()> {
        events.clear();
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        loop {
            let remaining = match (timeout, deadline) {
                (None, _) => None,
                (Some(_), Some(deadline)) => {
                    Some(deadline.saturating_duration_since(Instant::now()))
                }
                // A timeout too large to add to now: wait as if forever.
                (Some(_), None) => None,
            };
            match self.shared.wait(events, remaining) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(Error::Wait(err)),
            }
            let woken = self.shared.woken.swap(false, Ordering::AcqRel);
            if woken {
                self.collect_wakes(events);
            }
            if !events.list.is_empty() || woken {
                return Ok(());
            }
            match remaining {
                Some(r) if r.is_zero() => return Ok(()),
                _ => {}
            }
            if let Some(deadline) = deadline
                && Instant::now() >= deadline
            {
                return Ok(());
            }
            // Returned early with nothing to report: a spurious wake-up; wait again.
        }
    }

    fn collect_wakes(&self, events: &mut Events) {
        let mut wakers = self
            .shared
            .wakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for waker in wakers.iter() {
            if waker.pending.swap(false, Ordering::AcqRel) {
                events.list.push(Event {
                    token: waker.token,
                    readable: true,
                    writable: false,
                    hup: false,
                    error: false,
                });
            }
        }
        // A waker dropped right after its wake is still reported once, then forgotten.
        wakers.retain(|w| !w.dropped.load(Ordering::Acquire));
    }
}

impl fmt::Debug for Poll {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poll").finish_non_exhaustive()
    }
}

/// Registers sources with a [`Poll`]; cloneable, `Send + Sync`, usable while the `Poll` is blocked.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

impl Registry {
    /// Registers `source` for `interest`; its events carry `token`.
    ///
    /// The returned [`Registration`] owns the source and deregisters it when dropped, so a source
    /// is never closed while registered. Events are edge-triggered where the platform supports it.
    ///
    /// # Errors
    /// [`Error::Register`] if the operating system refuses, or if `token` is one of the two the
    /// poll keeps for itself (`usize::MAX` and `usize::MAX - 1`).
    pub fn register<S: Source>(
        &self,
        source: S,
        token: Token,
        interest: Interest,
    ) -> Result<Registration<S>> {
        crate::sys::check_token(token, "register")?;
        Registration::new(self.shared.poller.clone(), source, token, interest)
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// Wakes a [`Poll`] from any thread; the poll reports an event with the waker's token.
///
/// Many wakes before one poll cost one wake-up (and one event).
pub struct Waker {
    state: Arc<WakerState>,
    shared: Arc<Shared>,
}

impl Waker {
    /// A waker for the `Poll` behind `registry`; its events carry `token`.
    ///
    /// # Errors
    /// Never fails today; the `Result` leaves room for platforms that need a descriptor.
    pub fn new(registry: &Registry, token: Token) -> Result<Waker> {
        let state = Arc::new(WakerState {
            token,
            pending: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
        });
        registry
            .shared
            .wakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(state.clone());
        Ok(Waker {
            state,
            shared: registry.shared.clone(),
        })
    }

    /// Wakes the poll (the one blocked now, or the next one).
    ///
    /// # Errors
    /// [`Error::Wake`] if the operating system refuses.
    pub fn wake(&self) -> Result<()> {
        if self.state.pending.swap(true, Ordering::AcqRel) {
            // Already pending: the poll has not consumed the last wake yet.
            return Ok(());
        }
        self.shared.woken.store(true, Ordering::Release);
        self.shared.notify().map_err(Error::Wake)
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        let mut wakers = self
            .shared
            .wakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.state.dropped.store(true, Ordering::Release);
        // Under the list's lock, so `Poll` either reports the pending wake before forgetting
        // the state, or sees neither the wake nor the state.
        if !self.state.pending.load(Ordering::Acquire) {
            wakers.retain(|w| !Arc::ptr_eq(w, &self.state));
        }
    }
}

impl fmt::Debug for Waker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Waker")
            .field("token", &self.state.token)
            .finish()
    }
}
