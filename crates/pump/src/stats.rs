//! Pump statistics: counters kept with relaxed atomics, read as a plain snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) posted: AtomicU64,
    pub(crate) ran: AtomicU64,
    pub(crate) reposts: AtomicU64,
    pub(crate) overruns: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) timers_fired: AtomicU64,
    pub(crate) wakeups: AtomicU64,
    pub(crate) asleep_ns: AtomicU64,
    pub(crate) queue_depth: AtomicU64,
    pub(crate) timers_pending: AtomicU64,
    pub(crate) io_waiting: AtomicU64,
    pub(crate) offloaded: AtomicU64,
    pub(crate) spin_ns: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set(counter: &AtomicU64, value: Duration) {
        counter.store(value.as_nanos() as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> PumpStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PumpStats {
            posted: get(&self.posted),
            tasks_run: get(&self.ran),
            reposts: get(&self.reposts),
            overruns: get(&self.overruns),
            panics: get(&self.panics),
            cancelled: get(&self.cancelled),
            timers_fired: get(&self.timers_fired),
            wakeups: get(&self.wakeups),
            time_asleep: Duration::from_nanos(get(&self.asleep_ns)),
            queue_depth: get(&self.queue_depth),
            timers_pending: get(&self.timers_pending),
            io_waiting: get(&self.io_waiting),
            offloaded: get(&self.offloaded),
            spin: Duration::from_nanos(get(&self.spin_ns)),
        }
    }
}

/// A snapshot of a pump's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PumpStats {
    /// Tasks posted from any thread (not counting re-posts).
    pub posted: u64,
    /// Task runs (a task that re-posts itself counts once per run).
    pub tasks_run: u64,
    /// Runs that returned "not finished" and went to the back of the queue (or to a timer).
    pub reposts: u64,
    /// Runs that took longer than the overrun threshold.
    pub overruns: u64,
    /// Runs that panicked (the task was dropped, the pump went on).
    pub panics: u64,
    /// Posts, timers and waits dropped without running (cancelled timers, killed owners).
    pub cancelled: u64,
    /// Timers that fired.
    pub timers_fired: u64,
    /// Times another thread woke the sleeping pump.
    pub wakeups: u64,
    /// Time spent asleep in `poll`.
    pub time_asleep: Duration,
    /// Tasks runnable at the last turn of the loop.
    pub queue_depth: u64,
    /// Timers set and not yet fired or dropped.
    pub timers_pending: u64,
    /// Tasks waiting for I/O readiness.
    pub io_waiting: u64,
    /// Closures handed to worker threads.
    pub offloaded: u64,
    /// How long the pump spins the next time it is idle, before it sleeps: between
    /// [`PumpConfig::spin`](crate::PumpConfig::spin) and
    /// [`PumpConfig::spin_max`](crate::PumpConfig::spin_max), see
    /// [`PumpConfig::with_spin_range`](crate::PumpConfig::with_spin_range).
    pub spin: Duration,
}
