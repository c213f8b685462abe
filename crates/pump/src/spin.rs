//! How long an idle thread spins before it blocks: the pump's own rule, also offered to threads
//! that wait on a channel (such as the bus's handler threads).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long an idle thread should spin, watching for work, before it blocks: a spin between a
/// floor and a ceiling that grows when spinning would have paid and shrinks when it would not.
///
/// Waking a blocked thread costs tens of microseconds on a virtual machine; work that comes
/// while the thread still spins costs none. After each block, tell it how long the thread was
/// idle in all ([`after_block`](Self::after_block)): when work ended a block within `max` of
/// the thread's going idle, a spin of `max` would have caught it, so the spin becomes `max`;
/// when the thread stayed idle past `max`, spinning could not have paid, and the spin halves,
/// down to `min`. A thread whose work keeps coming within `max` (a request/reply exchange) so
/// stops blocking between pieces of work, and one that hears of work now and then spins only
/// `min` after each. `min == max` is a fixed spin.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mixbus_pump::AdaptiveSpin;
///
/// let mut spin = AdaptiveSpin::new(Duration::from_micros(20), Duration::from_micros(200));
/// assert_eq!(spin.current(), Duration::from_micros(20));
/// // Work came 80 µs after the thread went idle, so it had blocked: a longer spin would have
/// // caught it.
/// spin.after_block(Duration::from_micros(80), true);
/// assert_eq!(spin.current(), Duration::from_micros(200));
/// // Idle for 5 ms: spinning would not have paid.
/// spin.after_block(Duration::from_millis(5), true);
/// assert_eq!(spin.current(), Duration::from_micros(100));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveSpin {
    current: Duration,
    min: Duration,
    max: Duration,
}

impl AdaptiveSpin {
    /// A spin between `min` and `max` (a `max` below `min` is taken as `min`), starting at `min`.
    pub fn new(min: Duration, max: Duration) -> AdaptiveSpin {
        AdaptiveSpin {
            current: min,
            min,
            max: max.max(min),
        }
    }

    /// How long to spin the next time the thread is idle.
    pub fn current(&self) -> Duration {
        self.current
    }

    /// Adapts the spin after the thread blocked: `idle` is the whole time since it went idle
    /// (the spin included), `work` whether work ended the block (rather than a timeout).
    pub fn after_block(&mut self, idle: Duration, work: bool) {
        if work && idle <= self.max {
            self.current = self.max;
        } else if idle > self.max {
            self.current = (self.current / 2).max(self.min);
        }
    }

    /// Takes a value from `rx`, spinning first (yielding the core between looks), then
    /// blocking; adapts the spin to how long the wait was. `Err` once the channel is empty and
    /// every sender is gone.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use mixbus_pump::AdaptiveSpin;
    ///
    /// let (tx, rx) = flume::unbounded();
    /// let mut spin = AdaptiveSpin::new(Duration::from_micros(20), Duration::from_micros(200));
    /// tx.send(7).unwrap();
    /// assert_eq!(spin.recv(&rx), Ok(7));
    /// drop(tx);
    /// assert!(spin.recv(&rx).is_err());
    /// ```
    pub fn recv<T>(&mut self, rx: &flume::Receiver<T>) -> Result<T, flume::RecvError> {
        self.wait(rx, None)
    }

    /// [`recv`](Self::recv), spinning only if one of `slots` is free (held while spinning);
    /// otherwise it blocks at once. Threads that share `slots` so never spin more at a time
    /// than it has slots.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use mixbus_pump::{AdaptiveSpin, SpinSlots};
    ///
    /// let slots = SpinSlots::per_core();
    /// let (tx, rx) = flume::unbounded();
    /// let mut spin = AdaptiveSpin::new(Duration::from_micros(20), Duration::from_micros(200));
    /// tx.send("work").unwrap();
    /// assert_eq!(spin.recv_sharing(&rx, &slots), Ok("work"));
    /// ```
    pub fn recv_sharing<T>(
        &mut self,
        rx: &flume::Receiver<T>,
        slots: &SpinSlots,
    ) -> Result<T, flume::RecvError> {
        self.wait(rx, Some(slots))
    }

    /// [`recv`](Self::recv) and [`recv_sharing`](Self::recv_sharing): a value already waiting
    /// is taken at once, with no slot claimed; otherwise the thread spins (if the spin is not
    /// zero and, with `slots`, one is free), then blocks.
    fn wait<T>(
        &mut self,
        rx: &flume::Receiver<T>,
        slots: Option<&SpinSlots>,
    ) -> Result<T, flume::RecvError> {
        match rx.try_recv() {
            Ok(value) => return Ok(value),
            Err(flume::TryRecvError::Disconnected) => return Err(flume::RecvError::Disconnected),
            Err(flume::TryRecvError::Empty) => {}
        }
        let idle_since = Instant::now();
        if !self.current.is_zero() {
            let slot = slots.map(SpinSlots::claim);
            // With `slots` and none free, no spin; the slot is given back before blocking.
            if !matches!(slot, Some(None))
                && let Some(got) = self.spin_recv(rx, idle_since)
            {
                return got;
            }
        }
        self.block_recv(rx, idle_since)
    }

    /// Watches `rx` (yielding the core between looks) until `idle_since` is the current spin
    /// old; `None` if nothing came by then.
    fn spin_recv<T>(
        &self,
        rx: &flume::Receiver<T>,
        idle_since: Instant,
    ) -> Option<Result<T, flume::RecvError>> {
        loop {
            match rx.try_recv() {
                Ok(value) => return Some(Ok(value)),
                Err(flume::TryRecvError::Disconnected) => {
                    return Some(Err(flume::RecvError::Disconnected));
                }
                Err(flume::TryRecvError::Empty) => {}
            }
            if idle_since.elapsed() >= self.current {
                return None;
            }
            thread::yield_now();
        }
    }

    /// Blocks on `rx`, then adapts the spin to the whole idle time since `idle_since`.
    fn block_recv<T>(
        &mut self,
        rx: &flume::Receiver<T>,
        idle_since: Instant,
    ) -> Result<T, flume::RecvError> {
        let got = rx.recv();
        self.after_block(idle_since.elapsed(), got.is_ok());
        got
    }
}

/// Leave to spin, shared by threads that wait for work: at most `limit` of them spin at a time,
/// so that many threads with frequent work do not fill the machine with spinning threads that
/// yield to one another. See [`AdaptiveSpin::recv_sharing`].
#[derive(Debug)]
pub struct SpinSlots {
    busy: AtomicUsize,
    limit: usize,
}

impl SpinSlots {
    /// `limit` slots.
    pub fn new(limit: usize) -> SpinSlots {
        SpinSlots {
            busy: AtomicUsize::new(0),
            limit,
        }
    }

    /// One slot per core of the machine.
    pub fn per_core() -> SpinSlots {
        SpinSlots::new(thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// A slot, if one is free; it is given back when the returned guard is dropped.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixbus_pump::SpinSlots;
    ///
    /// let slots = SpinSlots::new(1);
    /// let held = slots.claim().unwrap();
    /// assert!(slots.claim().is_none());
    /// drop(held);
    /// assert!(slots.claim().is_some());
    /// ```
    pub fn claim(&self) -> Option<SpinSlot<'_>> {
        if self.busy.fetch_add(1, Ordering::AcqRel) < self.limit {
            Some(SpinSlot(self))
        } else {
            self.busy.fetch_sub(1, Ordering::AcqRel);
            None
        }
    }

    /// Slots held right now.
    pub fn busy(&self) -> usize {
        self.busy.load(Ordering::Acquire)
    }
}

/// A slot of [`SpinSlots`], held while its thread spins.
#[derive(Debug)]
#[must_use = "the slot is given back when this is dropped"]
pub struct SpinSlot<'a>(&'a SpinSlots);

impl Drop for SpinSlot<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_secs(10);

    #[test]
    fn a_value_that_ends_a_block_within_max_grows_the_spin_to_max() {
        let mut spin = AdaptiveSpin::new(Duration::ZERO, MAX);
        let (tx, rx) = flume::bounded(1);
        let sender = thread::spawn(move || tx.send(1).unwrap());
        assert_eq!(spin.recv(&rx), Ok(1));
        sender.join().unwrap();
        assert_eq!(spin.current(), MAX);
    }

    #[test]
    fn a_block_ended_by_no_work_leaves_the_spin_alone() {
        let mut spin = AdaptiveSpin::new(Duration::ZERO, MAX);
        spin.after_block(Duration::from_micros(5), false);
        assert_eq!(spin.current(), Duration::ZERO);
        let (tx, rx) = flume::bounded::<u8>(1);
        drop(tx);
        assert!(spin.recv(&rx).is_err());
        assert_eq!(spin.current(), Duration::ZERO);
    }

    #[test]
    fn long_idles_halve_the_spin_down_to_its_floor() {
        let min = Duration::from_micros(20);
        let mut spin = AdaptiveSpin::new(min, Duration::from_micros(200));
        spin.after_block(Duration::from_micros(50), true);
        assert_eq!(spin.current(), Duration::from_micros(200));
        for expected in [100, 50, 25, 20, 20] {
            spin.after_block(Duration::from_millis(1), true);
            assert_eq!(spin.current(), Duration::from_micros(expected));
        }
    }

    #[test]
    fn at_most_limit_slots_are_held_at_once() {
        let slots = SpinSlots::new(3);
        let held: Vec<_> = (0..3)
            .map(|_| slots.claim().expect("a free slot"))
            .collect();
        assert!(slots.claim().is_none(), "a slot past the limit");
        assert_eq!(slots.busy(), 3);
        drop(held);
        assert_eq!(slots.busy(), 0);
        assert!(slots.claim().is_some());
    }

    #[test]
    fn a_thread_without_a_slot_blocks_at_once_and_still_receives() {
        let slots = SpinSlots::new(0);
        let mut spin = AdaptiveSpin::new(MAX, MAX);
        let (tx, rx) = flume::bounded(1);
        let sender = thread::spawn(move || tx.send(5).unwrap());
        assert_eq!(spin.recv_sharing(&rx, &slots), Ok(5));
        sender.join().unwrap();
        assert_eq!(slots.busy(), 0);
    }

    #[test]
    fn a_fixed_spin_stays_fixed() {
        let d = Duration::from_micros(20);
        let mut spin = AdaptiveSpin::new(d, Duration::ZERO);
        spin.after_block(Duration::from_micros(5), true);
        spin.after_block(Duration::from_secs(1), true);
        assert_eq!(spin.current(), d);
    }
}
