//! The timer heap: entries ordered by deadline, then by the order they were set.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use crate::pump::Job;

const PENDING: u8 = 0;
const FIRED: u8 = 1;
const CANCELLED: u8 = 2;

/// A handle to a timer set with [`crate::PumpHandle::post_after`]; cancels it.
#[derive(Clone)]
pub struct TimerHandle {
    state: Arc<AtomicU8>,
}

impl TimerHandle {
    pub(crate) fn new() -> TimerHandle {
        TimerHandle {
            state: Arc::new(AtomicU8::new(PENDING)),
        }
    }

    /// Cancels the timer. Returns true if it had not fired yet: then its task never runs.
    pub fn cancel(&self) -> bool {
        self.state
            .compare_exchange(PENDING, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Whether the timer's task has started (or been handed to the run queue).
    pub fn has_fired(&self) -> bool {
        self.state.load(Ordering::Acquire) == FIRED
    }

    /// Claims the timer for firing; false if it was cancelled.
    pub(crate) fn fire(&self) -> bool {
        self.state
            .compare_exchange(PENDING, FIRED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

impl fmt::Debug for TimerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state.load(Ordering::Acquire) {
            PENDING => "pending",
            FIRED => "fired",
            _ => "cancelled",
        };
        f.debug_struct("TimerHandle")
            .field("state", &state)
            .finish()
    }
}

pub(crate) enum TimerKind {
    /// A delayed post, cancellable through its handle when it has one.
    Job(Job, Option<TimerHandle>),
    /// The timeout of an I/O wait: wakes the parked task if it still waits with this generation.
    IoTimeout { token: usize, generation: u64 },
}

pub(crate) struct Timer {
    pub(crate) deadline: Instant,
    pub(crate) seq: u64,
    pub(crate) kind: TimerKind,
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        self.deadline == other.deadline && self.seq == other.seq
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timer {
    // Reversed so that `BinaryHeap` (a max-heap) pops the earliest deadline first.
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other
            .deadline
            .cmp(&self.deadline)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

/// Timers in deadline order; ties keep the order they were set.
#[derive(Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Timer>,
    seq: u64,
}

impl Timers {
    pub(crate) fn push(&mut self, deadline: Instant, kind: TimerKind) {
        self.seq += 1;
        self.heap.push(Timer {
            deadline,
            seq: self.seq,
            kind,
        });
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|t| t.deadline)
    }

    /// Pops the earliest timer if its deadline has passed.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Timer> {
        if self.heap.peek()?.deadline <= now {
            self.heap.pop()
        } else {
            None
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn retain(&mut self, keep: impl FnMut(&Timer) -> bool) {
        self.heap.retain(keep);
    }

    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Timer> + '_ {
        self.heap.drain()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_deadline_order_then_insertion_order() {
        let mut timers = Timers::default();
        let base = Instant::now();
        for (i, ms) in [30u64, 10, 20, 10].into_iter().enumerate() {
            timers.push(
                base + Duration::from_millis(ms),
                TimerKind::IoTimeout {
                    token: i,
                    generation: 0,
                },
            );
        }
        let far = base + Duration::from_secs(1);
        let order: Vec<usize> = std::iter::from_fn(|| timers.pop_due(far))
            .map(|t| match t.kind {
                TimerKind::IoTimeout { token, .. } => token,
                TimerKind::Job(..) => unreachable!(),
            })
            .collect();
        assert_eq!(order, vec![1, 3, 2, 0]);
    }

    #[test]
    fn not_due_is_not_popped() {
        let mut timers = Timers::default();
        let now = Instant::now();
        timers.push(
            now + Duration::from_millis(5),
            TimerKind::IoTimeout {
                token: 0,
                generation: 0,
            },
        );
        assert!(timers.pop_due(now).is_none());
        assert_eq!(timers.len(), 1);
    }

    #[test]
    fn cancel_before_fire_wins_once() {
        let h = TimerHandle::new();
        assert!(h.cancel());
        assert!(!h.cancel());
        assert!(!h.fire());
        let h = TimerHandle::new();
        assert!(h.fire());
        assert!(!h.cancel());
        assert!(h.has_fired());
    }
}
