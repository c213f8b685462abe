//! `InMemoryBroker`: the broker contract served by a pool of dispatch threads in one process.
//!
//! Each subscription (or consumer group) has its own queue. Publishing pushes the message into the
//! queue of every matching target and, if no member of that target is scheduled yet, schedules one
//! on the shared run queue of the dispatch pool. A scheduled subscription runs on one dispatch
//! thread at a time and drains a batch of messages, so one broadcast subscriber sees one
//! publisher's messages in order, and group members pull from their shared queue concurrently.
//! No lock is held across the whole broker per message: the route table is read-locked, each
//! queue has its own lock (its length reads without it), and ack state is per subscription.
//! A subscription whose handler carries an executor (the bus server's) runs there instead of on
//! the dispatch pool.

use std::any::Any;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use crate::broker::{Broker, CloseReport, Handler, ListenerId, OverflowHook, Subscription};
use crate::error::{Error, Result};
use crate::idhash::{IdMap, IdSet};
use crate::listener::{BrokerListener, DropReason, Listeners, Notifier, SubscriptionInfo};
use crate::message::{DeliveryId, Message, MessageId, SubscriptionId};
use crate::options::{AckMode, SubscribeOptions};
use crate::queue::task::pump::{AdaptiveSpin, PumpConfig, SpinSlots};
use crate::topic::{Pattern, validate_topic};

/// How often the timer thread looks for expired ack waits while manual-ack subscriptions exist.
const ACK_SCAN_TICK: Duration = Duration::from_millis(5);
/// Routes remembered per topic before the cache is cleared.
const ROUTE_CACHE_LIMIT: usize = 4096;

/// Deliveries one run on a handler's executor may make (dispatch threads make `batch`)...
const EXECUTOR_BATCH: usize = 65_536;
/// ...and the time it may take: what a pump gives any one task run, so that forwarding keeps
/// pace with the reads that fill the queue on the same pump.
const EXECUTOR_BUDGET: Duration = Duration::from_millis(1);
/// Messages a run on an executor takes from its queue at a time (with one lock).
const EXECUTOR_CHUNK: usize = 128;

/// Deliveries an ACKR looks at under one lock of the subscription's in-flight store.
const ACKS_PER_LOCK: usize = 1024;

/// The in-flight window a manual-ack subscription starts with, and keeps while its acks come
/// slowly: it holds more (up to its `max_in_flight`) only while its acks come fast enough to
/// drain the window within a quarter of its ack wait ([`paced_window`]).
pub(crate) const BASE_WINDOW: usize = 8192;

/// Payload bytes past which a window grown beyond [`BASE_WINDOW`] takes no more: the growth is
/// for small messages, whose window of 8,192 is a short stretch of a fast stream; larger ones
/// fill a window that size with time enough, and more of them in flight cost cache.
const GROWN_WINDOW_BYTES: usize = 1 << 20;

/// How often, at most, a subscription's window follows its ack rate (measured over at least
/// this long, and at least [`PACE_ACKS`] acks).
const PACE_TICK: Duration = Duration::from_millis(10);

/// Acks between two looks at a subscription's ack rate: counting them is an atomic add, looking
/// takes a lock and the clock.
const PACE_ACKS: usize = 1024;

/// The in-flight window of a subscription that acked `acked` deliveries in `elapsed`: as many as
/// it acks in a quarter of `ack_wait` at that rate, so that what it holds is done well within
/// the ack wait, but at least [`BASE_WINDOW`] and at most `max`.
pub(crate) fn paced_window(
    acked: usize,
    elapsed: Duration,
    ack_wait: Duration,
    max: usize,
) -> usize {
    let secs = elapsed.as_secs_f64().max(1e-6);
    let want = acked as f64 / secs * (ack_wait.as_secs_f64() / 4.0);
    let want = if want.is_finite() && want < usize::MAX as f64 {
        want as usize
    } else {
        usize::MAX
    };
    want.clamp(BASE_WINDOW.min(max), max)
}

/// Unknown ids of one call of `ack_ranges` told to the listeners, at most: a range may name
/// any number of ids, and finding which were unknown costs a look at each.
pub(crate) const UNKNOWN_ACKS_TOLD: usize = 1024;

/// Settings of an [`InMemoryBroker`]: a plain struct with [`Default`] and `with_*` methods.
///
/// # Examples
///
/// ```
/// use mixbus_bus::{InMemoryBroker, InMemoryConfig};
/// let broker = InMemoryBroker::with_config(
///     InMemoryConfig::default().with_dispatch_threads(2).with_group_capacity(10_000),
/// )?;
/// # Ok::<(), mixbus_bus::Error>(())
/// ```
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InMemoryConfig {
    /// Dispatch threads running handlers (default 4, at least 1).
    pub dispatch_threads: usize,
    /// Messages a consumer group may hold before `publish` fails with
    /// [`Error::QueueFull`] (default 65 536). Broadcast queues are not bounded: a broadcast
    /// subscriber that falls behind holds its backlog in memory (each entry shares the payload).
    pub group_capacity: usize,
    /// The first token of default dead-letter topics (default `dead`, giving `dead.<topic>`).
    pub dead_letter_prefix: String,
    /// Messages one subscription handles in a row before its dispatch thread moves on (default 64).
    pub batch: usize,
    /// Payload bytes a manual-ack subscription may hold un-acked (default 64 MiB), beside its
    /// [`SubscribeOptions::max_in_flight`] count: past either, it takes nothing new until acks
    /// free room. It bounds the memory a subscription of large messages pins (a bus server's
    /// remote subscriptions are manual-ack on the server); one delivery run may pass it by at
    /// most one run of messages, and a subscription with nothing in flight always takes one.
    pub max_in_flight_bytes: usize,
    /// How long an idle dispatch thread watches for work before it blocks, at the least
    /// (default 20 µs); see [`with_spin_range`](Self::with_spin_range).
    pub spin: Duration,
    /// How far that spin may grow while work keeps coming soon after the thread blocked
    /// (default 200 µs).
    pub spin_max: Duration,
}

impl Default for InMemoryConfig {
    fn default() -> Self {
        Self {
            dispatch_threads: 4,
            group_capacity: 65_536,
            dead_letter_prefix: "dead".to_owned(),
            batch: 64,
            max_in_flight_bytes: 64 << 20,
            spin: PumpConfig::default().spin,
            spin_max: PumpConfig::default().spin_max,
        }
    }
}

impl InMemoryConfig {
    /// Sets the number of dispatch threads.
    pub fn with_dispatch_threads(mut self, n: usize) -> Self {
        self.dispatch_threads = n;
        self
    }

    /// Sets the consumer group queue limit.
    pub fn with_group_capacity(mut self, n: usize) -> Self {
        self.group_capacity = n;
        self
    }

    /// Sets the payload bytes a manual-ack subscription may hold un-acked.
    pub fn with_max_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.max_in_flight_bytes = bytes;
        self
    }

    /// Sets the dead-letter prefix.
    pub fn with_dead_letter_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.dead_letter_prefix = prefix.into();
        self
    }

    /// Sets the batch size.
    pub fn with_batch(mut self, n: usize) -> Self {
        self.batch = n;
        self
    }

    /// Sets a fixed spin: how long an idle dispatch thread watches for work before it blocks,
    /// always ([`Duration::ZERO`]: it blocks at once).
    pub fn with_spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self.spin_max = spin;
        self
    }

    /// Sets a spin that adapts between `min` and `max` (default 20 to 200 µs), as the event
    /// pump's does
    /// ([`PumpConfig::with_spin_range`](crate::queue::task::pump::PumpConfig::with_spin_range)):
    /// a dispatch thread whose work comes back within `max` of its going idle (a handler that
    /// answers requests, say) stops blocking between messages, and wakes no thread to run
    /// them. At most one dispatch thread per core spins at a time; the price is CPU while
    /// messages come more often than every `max`.
    pub fn with_spin_range(mut self, min: Duration, max: Duration) -> Self {
        self.spin = min;
        self.spin_max = max.max(min);
        self
    }
}

/// The in-memory backend of [`Broker`]: publishers and handlers are threads of one process.
///
/// Handlers run on a pool of dispatch threads named `mixbus-dispatch-N`; ack waits and back-offs
/// are timed by one `mixbus-timer` thread. Call [`close`](Broker::close) when done; dropping the
/// broker closes it with a one-second timeout.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::time::Duration;
/// use mixbus_bus::{Broker, Handler, InMemoryBroker, Message, SubscribeOptions};
/// let broker = InMemoryBroker::new()?;
/// let seen = Arc::new(AtomicUsize::new(0));
/// let s = seen.clone();
/// let _sub = broker.subscribe("greetings.>", SubscribeOptions::default(), Handler::new(move |_| {
///     s.fetch_add(1, Ordering::SeqCst);
///     Ok(())
/// }))?;
/// broker.publish(Message::new("greetings.en", "hello"))?;
/// broker.publish(Message::new("greetings.fr", "bonjour"))?;
/// let report = broker.close(Duration::from_secs(5));
/// assert_eq!(seen.load(Ordering::SeqCst), 2);
/// assert_eq!(report.pending, 0);
/// # Ok::<(), mixbus_bus::Error>(())
/// ```
#[derive(Debug)]
pub struct InMemoryBroker {
    shared: Arc<Shared>,
}

#[repr(align(64))]
#[derive(Debug, Default)]
struct BusySlot(AtomicBool);

struct Shared {
    config: InMemoryConfig,
    closed: AtomicBool,
    next_message: AtomicU64,
    next_subscription: AtomicU64,
    routes: RwLock<Routes>,
    listeners: Listeners,
    ready_tx: flume::Sender<Option<Arc<Sub>>>,
    ready_rx: flume::Receiver<Option<Arc<Sub>>>,
    /// Leave for the dispatch threads to spin before they block, one per core.
    spin_slots: SpinSlots,
    timer: Timer,
    busy: Box<[BusySlot]>,
    manual_subs: AtomicUsize,
    /// Runs, timer passes and nacks under way: each may hold messages out of every queue for a
    /// moment (taken and not yet handled, or failed and not yet queued again), so `close` does
    /// not take the broker for idle while one is.
    in_hand: AtomicUsize,
    retired_delivered: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
    report: Mutex<Option<CloseReport>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryBroker")
            .field("config", &self.config)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The queues a topic routes to.
type Targets = Arc<[Arc<Inbox>]>;

#[derive(Default)]
struct Routes {
    subs: IdMap<SubscriptionId, Arc<Sub>>,
    inboxes: Vec<Arc<Inbox>>,
    groups: HashMap<(String, String), Arc<Inbox>>,
    cache: HashMap<String, Arc<[Arc<Inbox>]>>,
}

/// A FIFO of messages whose length reads without its lock.
#[derive(Default)]
struct Fifo {
    items: Mutex<VecDeque<Message>>,
    /// Changed under the lock, read without it (SeqCst: a run that finds the queue empty after
    /// clearing its scheduled flag must see a push made before the publisher tried to schedule).
    len: AtomicUsize,
}

impl Fifo {
    fn push(&self, msg: Message) {
        let mut items = lock(&self.items);
        items.push_back(msg);
        self.len.fetch_add(1, Ordering::SeqCst);
    }

    /// Pushes a run of messages with one lock.
    fn push_all(&self, msgs: impl ExactSizeIterator<Item = Message>) {
        let n = msgs.len();
        let mut items = lock(&self.items);
        items.extend(msgs);
        self.len.fetch_add(n, Ordering::SeqCst);
    }

    fn pop(&self) -> Option<Message> {
        if self.len() == 0 {
            return None;
        }
        let mut items = lock(&self.items);
        let msg = items.pop_front()?;
        self.len.fetch_sub(1, Ordering::SeqCst);
        Some(msg)
    }

    /// Moves up to `n` messages to `out` with one lock; returns how many.
    fn pop_many(&self, n: usize, out: &mut Vec<Message>) -> usize {
        if n == 0 || self.len() == 0 {
            return 0;
        }
        let mut items = lock(&self.items);
        let k = n.min(items.len());
        out.extend(items.drain(..k));
        self.len.fetch_sub(k, Ordering::SeqCst);
        k
    }

    fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }
}

/// The queue of one broadcast subscription or one consumer group.
struct Inbox {
    name: String,
    pattern: Pattern,
    group: Option<String>,
    /// Published messages.
    fresh: Fifo,
    /// Messages to deliver again, taken first.
    retry: Fifo,
    capacity: Option<usize>,
    reserved: AtomicUsize,
    members: RwLock<Vec<Arc<Sub>>>,
    next_member: AtomicUsize,
    open: AtomicBool,
    /// How long a consumer may go without progress, and what to call (once) when a publish
    /// finds this queue full with its consumer stuck that long: the queue is then cut off
    /// instead of the publish being refused (see [`Handler::with_overflow`]).
    on_overflow: Option<(Duration, OverflowHook)>,
    /// Set once the queue overflowed with a hook: it takes nothing more, and its owner ends it.
    cut: AtomicBool,
}

/// What a publish found in one target queue.
enum Room {
    /// A place was reserved (or the queue has no limit).
    Taken,
    /// Full: the publish is refused.
    Full,
    /// Cut off (it overflowed with a hook): the publish skips it.
    Cut,
}

impl Inbox {
    fn new(name: String, pattern: Pattern, group: Option<String>, capacity: Option<usize>) -> Self {
        Self {
            name,
            pattern,
            group,
            fresh: Fifo::default(),
            retry: Fifo::default(),
            capacity,
            reserved: AtomicUsize::new(0),
            members: RwLock::new(Vec::new()),
            next_member: AtomicUsize::new(0),
            open: AtomicBool::new(true),
            on_overflow: None,
            cut: AtomicBool::new(false),
        }
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::Acquire)
    }

    fn len(&self) -> usize {
        self.fresh.len() + self.retry.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn try_reserve(&self) -> Room {
        if self.is_cut() {
            return Room::Cut;
        }
        match self.capacity {
            None => Room::Taken,
            Some(cap) if self.reserved.fetch_add(1, Ordering::AcqRel) >= cap => {
                let Some((stall, hook)) = &self.on_overflow else {
                    self.reserved.fetch_sub(1, Ordering::AcqRel);
                    return Room::Full;
                };
                if !self.stuck(*stall) {
                    // Its consumer is making progress: hold the message past the limit.
                    return Room::Taken;
                }
                self.reserved.fetch_sub(1, Ordering::AcqRel);
                if !self.cut.swap(true, Ordering::AcqRel) {
                    tracing::warn!(queue = %self.name, capacity = cap, "queue overflowed; cut off");
                    hook(cap);
                }
                Room::Cut
            }
            Some(_) => Room::Taken,
        }
    }

    /// Cuts the queue off (as an overflow would) if it has an overflow hook and its consumer is
    /// stuck; returns whether it is cut off.
    fn cut_if_stuck(&self) -> bool {
        if let Some((stall, hook)) = &self.on_overflow
            && !self.is_cut()
            && self.stuck(*stall)
            && !self.cut.swap(true, Ordering::AcqRel)
        {
            let len = self.len();
            tracing::warn!(queue = %self.name, queued = len, "consumer stuck behind a held publisher; cut off");
            hook(len);
        }
        self.is_cut()
    }

    /// Whether every member is held at its in-flight limit by a delivery older than `stall`.
    fn stuck(&self, stall: Duration) -> bool {
        let now = Instant::now();
        let members = read(&self.members);
        !members.is_empty()
            && members.iter().all(|m| {
                m.blocked()
                    && lock(&m.unacked).order.front().is_some_and(|w| {
                        // Delivered at `deadline - ack_wait`.
                        w.deadline + stall <= now + m.options.ack_wait
                    })
            })
    }

    fn unreserve(&self) {
        self.unreserve_many(1);
    }

    fn unreserve_many(&self, n: usize) {
        if self.capacity.is_some() && n > 0 {
            self.reserved.fetch_sub(n, Ordering::AcqRel);
        }
    }

    fn take(&self) -> Option<Message> {
        if let Some(msg) = self.retry.pop() {
            return Some(msg);
        }
        let msg = self.fresh.pop()?;
        self.unreserve();
        Some(msg)
    }

    /// [`take`](Self::take) up to `n` messages into `out`, with one lock per queue.
    fn take_many(&self, n: usize, out: &mut Vec<Message>) {
        let retried = self.retry.pop_many(n, out);
        let fresh = self.fresh.pop_many(n - retried, out);
        self.unreserve_many(fresh);
    }

    /// Schedules one idle member, starting from the next one in turn.
    fn notify(&self, shared: &Shared) {
        let members = read(&self.members);
        let n = members.len();
        if n == 0 {
            return;
        }
        let start = if n == 1 {
            0
        } else {
            self.next_member.fetch_add(1, Ordering::Relaxed)
        };
        for i in 0..n {
            if members[(start + i) % n].try_schedule(shared) {
                return;
            }
        }
    }
}

#[derive(Default)]
struct Unacked {
    map: InFlight,
    /// The ack waits, oldest first.
    order: VecDeque<Wait>,
}

/// The ack waits of deliveries started together, ending at `deadline`: those of ids
/// `first..=last` with attempt `attempt`. A run of deliveries kept in the in-flight deque
/// (`in_seq`: ids rising, so no other delivery's id falls in the range) has one entry, found
/// there by its range; a delivery kept aside (a re-delivery) has one of its own. One entry per
/// message was a write and a read of 32 bytes for every delivery.
#[derive(Clone, Copy, Debug)]
struct Wait {
    deadline: Instant,
    first: MessageId,
    last: MessageId,
    attempt: u32,
    in_seq: bool,
}

/// A subscription's un-acked messages by id. A subscription's deliveries come in rising id
/// order and its acks mostly in the same order, so they are kept in a deque in delivery order
/// (an ack finds its message at the front, else by binary search), with a map only for
/// re-deliveries, whose ids are lower than the newest delivered. A hash map for all of them was
/// the server's costliest lookup: its buckets were cold by the time the ack came.
#[derive(Default)]
struct InFlight {
    /// Strictly rising ids; `None` once removed (trimmed off the front, or compacted away).
    seq: VecDeque<Entry>,
    /// The `Some` entries of `seq`.
    live: usize,
    /// Messages delivered again, whose ids are below the newest in `seq`.
    late: IdMap<MessageId, Message>,
}

/// One delivery in [`InFlight::seq`]: its id, its payload's bytes as counted in flight (kept
/// here so that an ack does not read the message, long gone from the cache by then) and the
/// message, `None` once removed.
struct Entry {
    id: MessageId,
    bytes: u32,
    msg: Option<Message>,
}

/// A message's payload bytes as the in-flight count takes them.
fn payload_bytes(msg: &Message) -> u32 {
    u32::try_from(msg.payload().len()).unwrap_or(u32::MAX)
}

impl InFlight {
    /// Entries of `seq` past which removed ones are compacted away, if they outnumber the live.
    const COMPACT_AT: usize = 1024;

    /// Keeps `msg` under `id`, with `bytes` ([`payload_bytes`]); true if it went in the deque
    /// (its id is past all there), false if aside.
    fn insert(&mut self, id: MessageId, msg: Message, bytes: u32) -> bool {
        if self.seq.back().is_none_or(|last| id > last.id) {
            let msg = Some(msg);
            self.seq.push_back(Entry { id, bytes, msg });
            self.live += 1;
            true
        } else {
            self.late.insert(id, msg);
            false
        }
    }

    /// Where the entries of the deque with ids from `first` on start (at the front, for an ack
    /// in delivery order, with no search).
    fn start_of(&self, first: MessageId) -> usize {
        match self.seq.front() {
            Some(front) if front.id >= first => 0,
            _ => self.seq.partition_point(|e| e.id < first),
        }
    }

    /// The entries of the deque whose ids are in `first..=last`.
    fn seq_range(&mut self, first: MessageId, last: MessageId) -> impl Iterator<Item = &mut Entry> {
        let start = self.start_of(first);
        self.seq
            .range_mut(start..)
            .take_while(move |e| e.id <= last)
    }

    /// Whether a delivery that `wait` times is still here.
    fn holds(&self, wait: &Wait) -> bool {
        if !wait.in_seq {
            return self
                .get(&wait.first)
                .is_some_and(|m| m.attempt() == wait.attempt);
        }
        self.seq
            .range(self.start_of(wait.first)..)
            .take_while(|e| e.id <= wait.last)
            .any(|e| e.msg.as_ref().is_some_and(|m| m.attempt() == wait.attempt))
    }

    /// Takes out the deliveries `wait` times that are still here, into `out`; returns their
    /// bytes.
    fn take_waiting(&mut self, wait: &Wait, out: &mut Vec<Message>) -> usize {
        if !wait.in_seq {
            if !self.holds(wait) {
                return 0;
            }
            return self.remove(&wait.first).map_or(0, |(msg, bytes)| {
                out.push(msg);
                bytes
            });
        }
        let (mut taken, mut bytes) = (0, 0);
        for entry in self.seq_range(wait.first, wait.last) {
            if entry
                .msg
                .as_ref()
                .is_some_and(|m| m.attempt() == wait.attempt)
                && let Some(msg) = entry.msg.take()
            {
                taken += 1;
                bytes += entry.bytes as usize;
                out.push(msg);
            }
        }
        self.live -= taken;
        self.tidy();
        bytes
    }

    /// Where `id` is in `seq`, if it is there (live or removed).
    fn position(&self, id: MessageId) -> Option<usize> {
        match self.seq.front() {
            Some(front) if front.id == id => Some(0),
            Some(front) if front.id < id => self.seq.binary_search_by_key(&id, |e| e.id).ok(),
            _ => None,
        }
    }

    fn get(&self, id: &MessageId) -> Option<&Message> {
        self.position(*id)
            .and_then(|i| self.seq[i].msg.as_ref())
            .or_else(|| self.late.get(id))
    }

    /// Takes out the message under `id`, with its bytes.
    fn remove(&mut self, id: &MessageId) -> Option<(Message, usize)> {
        if let Some(i) = self.position(*id)
            && let Some(msg) = self.seq[i].msg.take()
        {
            let bytes = self.seq[i].bytes as usize;
            self.live -= 1;
            self.tidy();
            return Some((msg, bytes));
        }
        // A removed entry in `seq` may have been delivered again since, into `late`.
        let msg = self.late.remove(id)?;
        let bytes = payload_bytes(&msg) as usize;
        Some((msg, bytes))
    }

    /// Takes out every message whose id is in `first..end`, into `out`; returns their bytes.
    #[cfg(test)]
    fn take_range(&mut self, first: MessageId, end: MessageId, out: &mut Vec<Message>) -> usize {
        self.take_range_within(first, end, usize::MAX, out).0
    }

    /// [`take_range`](Self::take_range), looking at `limit` entries of the deque at most:
    /// returns the bytes taken and, if it stopped there, the id to go on from.
    fn take_range_within(
        &mut self,
        first: MessageId,
        end: MessageId,
        limit: usize,
        out: &mut Vec<Message>,
    ) -> (usize, Option<MessageId>) {
        let start = self.start_of(first);
        let mut bytes = 0;
        let mut at = start;
        while let Some(entry) = self.seq.get_mut(at) {
            if entry.id >= end {
                break;
            }
            if at - start == limit {
                let resume = entry.id;
                self.tidy();
                return (bytes, Some(resume));
            }
            if let Some(msg) = entry.msg.take() {
                self.live -= 1;
                bytes += entry.bytes as usize;
                out.push(msg);
            }
            at += 1;
        }
        self.tidy();
        if self.late.is_empty() {
            return (bytes, None);
        }
        // Delivered again: by id if the range is shorter than the map, else the other way.
        let from = out.len();
        let span = end.0 - first.0;
        if span <= self.late.len() as u64 {
            for id in first.0..end.0 {
                out.extend(self.late.remove(&MessageId(id)));
            }
        } else {
            let taken = self.late.extract_if(|id, _| (first..end).contains(id));
            out.extend(taken.map(|(_, msg)| msg));
        }
        let late: usize = out[from..].iter().map(|m| payload_bytes(m) as usize).sum();
        (bytes + late, None)
    }

    /// Drops the removed entries at the front of `seq`, and compacts it when removed entries
    /// behind a message still un-acked (which would pile up while it waits) outnumber the live.
    fn tidy(&mut self) {
        while self.seq.front().is_some_and(|e| e.msg.is_none()) {
            self.seq.pop_front();
        }
        if self.seq.len() >= Self::COMPACT_AT && self.seq.len() > 2 * self.live {
            self.seq.retain(|e| e.msg.is_some());
        }
    }

    /// Takes every message out, those delivered first (in delivery order) then the others.
    fn drain(&mut self) -> impl Iterator<Item = Message> + '_ {
        self.live = 0;
        self.seq
            .drain(..)
            .filter_map(|e| e.msg)
            .chain(self.late.drain().map(|(_, m)| m))
    }

    fn len(&self) -> usize {
        self.live + self.late.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Unacked {
    /// Drops the wait-order entries of deliveries already settled: those at the front, and,
    /// once settled ones outnumber the live behind a delivery that waits at the front, all of
    /// them. Without that, one un-acked message held every later entry for its whole ack wait
    /// (30 s by default: tens of millions of entries at full rate).
    fn trim_front(&mut self) {
        while let Some(wait) = self.order.front() {
            if self.map.holds(wait) {
                break;
            }
            self.order.pop_front();
        }
        if self.order.len() >= InFlight::COMPACT_AT && self.order.len() > 2 * self.map.len() {
            let map = &self.map;
            self.order.retain(|wait| map.holds(wait));
        }
    }

    /// Starts the ack wait of `msg`, just put in the in-flight store (in the deque if
    /// `in_seq`), to end at `deadline`: in the entry of the deliveries before it if they went
    /// the same way, with the same deadline and attempt.
    fn wait(&mut self, msg: &Message, in_seq: bool, deadline: Instant) {
        let (id, attempt) = (msg.id(), msg.attempt());
        if let Some(w) = self.order.back_mut()
            && in_seq
            && w.in_seq
            && w.deadline == deadline
            && w.attempt == attempt
            && id > w.last
        {
            w.last = id;
            return;
        }
        self.order.push_back(Wait {
            deadline,
            first: id,
            last: id,
            attempt,
            in_seq,
        });
    }
}

struct Sub {
    info: SubscriptionInfo,
    options: SubscribeOptions,
    manual: bool,
    handler: Handler,
    inbox: Arc<Inbox>,
    scheduled: AtomicBool,
    active: AtomicBool,
    in_flight: AtomicUsize,
    /// Payload bytes of the deliveries counted in `in_flight`.
    in_flight_bytes: AtomicUsize,
    /// [`InMemoryConfig::max_in_flight_bytes`].
    max_in_flight_bytes: usize,
    unacked: Mutex<Unacked>,
    delivered: AtomicU64,
    /// The deliveries it may hold un-acked now: [`BASE_WINDOW`] (or less, per its options) to
    /// start with, following its ack rate up to `max_in_flight` ([`Sub::paced`]).
    window: AtomicUsize,
    /// Acks since the window last followed the ack rate.
    pace_acks: AtomicUsize,
    /// When the window last followed the ack rate.
    paced_at: Mutex<Instant>,
    /// The broker, for runs handed to the handler's executor.
    shared: Weak<Shared>,
}

impl Sub {
    fn blocked(&self) -> bool {
        if !self.manual {
            return false;
        }
        let (in_flight, bytes) = (
            self.in_flight.load(Ordering::Acquire),
            self.in_flight_bytes.load(Ordering::Acquire),
        );
        in_flight >= self.window.load(Ordering::Relaxed)
            || bytes >= self.max_in_flight_bytes
            || (in_flight >= BASE_WINDOW && bytes >= GROWN_WINDOW_BYTES)
    }

    /// `acked` deliveries were acked: every [`PACE_TICK`] or more, the window follows the rate
    /// at which acks came since the last time ([`paced_window`]).
    fn paced(&self, acked: usize) {
        if self.options.max_in_flight <= BASE_WINDOW || acked == 0 {
            return;
        }
        // A look once per PACE_ACKS acks.
        let before = self.pace_acks.fetch_add(acked, Ordering::Relaxed);
        if before / PACE_ACKS == (before + acked) / PACE_ACKS {
            return;
        }
        let Ok(mut at) = self.paced_at.try_lock() else {
            // Another thread is looking.
            return;
        };
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(*at);
        if elapsed < PACE_TICK {
            return;
        }
        let acks = self.pace_acks.swap(0, Ordering::Relaxed);
        let window = paced_window(
            acks,
            elapsed,
            self.options.ack_wait,
            self.options.max_in_flight,
        );
        self.window.store(window, Ordering::Relaxed);
        *at = now;
    }

    /// `n` deliveries of `bytes` ([`payload_bytes`]) left the in-flight count.
    fn landed(&self, n: usize, bytes: usize) {
        self.in_flight_bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.in_flight.fetch_sub(n, Ordering::AcqRel);
    }

    fn try_schedule(self: &Arc<Self>, shared: &Shared) -> bool {
        if !self.active.load(Ordering::Acquire) || self.blocked() {
            return false;
        }
        if self.scheduled.swap(true, Ordering::SeqCst) {
            return false;
        }
        if let Some(executor) = self.handler.executor() {
            // Run where the handler asks (the bus server's pump): no dispatch thread to wake.
            let (sub, weak) = (self.clone(), self.shared.clone());
            let run = Box::new(move || {
                if let Some(shared) = weak.upgrade() {
                    let mut ctx = Ctx {
                        slot: None,
                        version: u64::MAX,
                        notifier: Notifier::default(),
                    };
                    shared.run(&sub, &mut ctx);
                }
            });
            if executor(run) {
                return true;
            }
        }
        let _ = shared.ready_tx.send(Some(self.clone()));
        true
    }

    fn remove_unacked(&self, id: MessageId, attempt: Option<u32>) -> Option<Message> {
        let mut u = lock(&self.unacked);
        if let Some(attempt) = attempt
            && u.map.get(&id).is_none_or(|m| m.attempt() != attempt)
        {
            return None;
        }
        let (msg, bytes) = u.map.remove(&id)?;
        u.trim_front();
        drop(u);
        self.landed(1, bytes);
        Some(msg)
    }
}

/// Counts one piece of work in [`Shared::in_hand`] for as long as it lives.
struct InHand<'a>(&'a AtomicUsize);

impl<'a> InHand<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        InHand(count)
    }
}

impl Drop for InHand<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Per dispatch thread state: its busy slot and a cached listener snapshot.
struct Ctx {
    /// The dispatch thread's busy slot (none for runs on a handler's executor).
    slot: Option<usize>,
    version: u64,
    notifier: Notifier,
}

impl Ctx {
    fn refresh(&mut self, shared: &Shared) {
        let v = shared.listeners.version();
        if v != self.version {
            self.notifier = shared.listeners.snapshot();
            self.version = v;
        }
    }
}

struct TimerEntry {
    at: Instant,
    seq: u64,
    inbox: Arc<Inbox>,
    message: Message,
}

impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.seq == other.seq
    }
}
impl Eq for TimerEntry {}
impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for TimerEntry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: the heap's top is the earliest deadline.
        other.at.cmp(&self.at).then(other.seq.cmp(&self.seq))
    }
}

#[derive(Default)]
struct TimerState {
    heap: BinaryHeap<TimerEntry>,
    seq: u64,
    stop: bool,
}

#[derive(Default)]
struct Timer {
    state: Mutex<TimerState>,
    wake: Condvar,
}

impl Timer {
    fn schedule(&self, at: Instant, inbox: Arc<Inbox>, message: Message) {
        let mut st = lock(&self.state);
        st.seq += 1;
        let seq = st.seq;
        st.heap.push(TimerEntry {
            at,
            seq,
            inbox,
            message,
        });
        drop(st);
        self.wake.notify_one();
    }

    fn len(&self) -> usize {
        lock(&self.state).heap.len()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload");
    format!("handler panicked: {text}")
}

impl InMemoryBroker {
    /// Starts a broker with the default [`InMemoryConfig`].
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] when a thread cannot be started.
    pub fn new() -> Result<Self> {
        Self::with_config(InMemoryConfig::default())
    }

    /// Starts a broker with `config`.
    ///
    /// # Errors
    ///
    /// [`Error::Spawn`] when a thread cannot be started.
    pub fn with_config(mut config: InMemoryConfig) -> Result<Self> {
        config.dispatch_threads = config.dispatch_threads.max(1);
        config.batch = config.batch.max(1);
        config.group_capacity = config.group_capacity.max(1);
        let (ready_tx, ready_rx) = flume::unbounded();
        let threads = config.dispatch_threads;
        let shared = Arc::new(Shared {
            busy: (0..threads).map(|_| BusySlot::default()).collect(),
            config,
            closed: AtomicBool::new(false),
            next_message: AtomicU64::new(0),
            next_subscription: AtomicU64::new(0),
            routes: RwLock::new(Routes::default()),
            listeners: Listeners::default(),
            ready_tx,
            ready_rx,
            spin_slots: SpinSlots::per_core(),
            timer: Timer::default(),
            manual_subs: AtomicUsize::new(0),
            in_hand: AtomicUsize::new(0),
            retired_delivered: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
            report: Mutex::new(None),
        });
        let broker = Self {
            shared: shared.clone(),
        };
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            thread::Builder::new()
                .name(name.clone())
                .spawn(f)
                .map_err(|source| Error::Spawn { name, source })
        };
        let mut handles = Vec::with_capacity(threads + 1);
        {
            let s = shared.clone();
            handles.push(spawn(
                "mixbus-timer".to_owned(),
                Box::new(move || s.timer_loop()),
            )?);
        }
        for n in 0..threads {
            let s = shared.clone();
            let name = format!("mixbus-dispatch-{n}");
            match spawn(name, Box::new(move || s.dispatch_loop(n))) {
                Ok(h) => handles.push(h),
                Err(e) => {
                    *lock(&shared.threads) = handles;
                    broker.close(Duration::from_secs(1));
                    return Err(e);
                }
            }
        }
        *lock(&shared.threads) = handles;
        tracing::debug!(threads, "in-memory broker started");
        Ok(broker)
    }

    /// The broker's configuration.
    pub fn config(&self) -> &InMemoryConfig {
        &self.shared.config
    }

    /// Publishes `messages` in order, as that many [`Broker::publish`] calls would, calling
    /// `result` with each outcome in turn (what the bus server does for a burst of PUBLISH
    /// frames). A burst costs one clock reading, one route lookup per run of one topic, and one
    /// lock and at most one wake per queue for each run.
    ///
    /// Queues left holding more than `watch.above` messages, or more than `watch.above_bytes`
    /// of payload, after it are added to `watch.deep`.
    ///
    /// The messages come with their ids (from [`take_ids`](Self::take_ids)) and publish time.
    pub(crate) fn publish_many(
        &self,
        messages: impl IntoIterator<Item = Message>,
        result: impl FnMut(Result<MessageId>),
        watch: &mut Watch,
    ) {
        self.shared.publish_many(messages, result, watch);
    }

    /// Takes `n` message ids in one step, for messages stamped before they are published
    /// ([`publish_many`](Self::publish_many)): the first of them (the others follow it).
    pub(crate) fn take_ids(&self, n: usize) -> MessageId {
        self.shared.take_ids(n)
    }

    /// Acks several deliveries of one subscription at once (what the bus server does for an ACKS
    /// frame): the same as [`Broker::ack`] on each, with one lookup and one lock.
    pub(crate) fn ack_many(&self, subscription: SubscriptionId, messages: &[MessageId]) {
        self.shared.ack_many(subscription, messages);
    }

    /// Acks the deliveries of one subscription whose ids lie in the given ranges (first id and
    /// count; what the bus server does for an ACKR frame), as [`ack_many`](Self::ack_many) on
    /// each id. The work is that of the deliveries found, whatever the ranges' lengths; the
    /// listeners hear of at most [`UNKNOWN_ACKS_TOLD`] unknown ids per call.
    pub(crate) fn ack_ranges(&self, subscription: SubscriptionId, ranges: &[(u64, u32)]) {
        self.shared.ack_ranges(subscription, ranges);
    }

    /// Messages waiting in the queue named `queue` (a group name, or `pattern#id` for a broadcast
    /// subscription); `None` if there is no such queue.
    pub fn queue_depth(&self, queue: &str) -> Option<usize> {
        read(&self.shared.routes)
            .inboxes
            .iter()
            .find(|i| i.name == queue)
            .map(|i| i.len())
    }
}

/// The queues a burst of publishes left deep (see [`InMemoryBroker::publish_many`]): what a
/// server watches while it holds a publisher back.
#[derive(Default)]
pub(crate) struct Watch {
    /// Queues holding more messages than this are noted.
    pub(crate) above: usize,
    /// Queues holding more payload bytes than this are noted too, their bytes reckoned from
    /// the burst's messages (their count times the burst's mean payload).
    pub(crate) above_bytes: usize,
    pub(crate) deep: Vec<Depth>,
}

impl Watch {
    /// Notes `target` if it is deep, just after a run of messages with `mean` payload bytes
    /// went into it.
    fn note(&mut self, target: &Arc<Inbox>, mean: usize) {
        let limit = self.above.min(self.above_bytes / mean.max(1)).max(1);
        if target.len() > limit && !self.deep.iter().any(|d| Arc::ptr_eq(&d.queue, target)) {
            self.deep.push(Depth {
                queue: target.clone(),
                limit,
            });
        }
    }
}

/// One queue's depth, read without a lock, and the depth it was noted past.
pub(crate) struct Depth {
    queue: Arc<Inbox>,
    limit: usize,
}

impl Depth {
    /// Messages waiting in the queue.
    pub(crate) fn get(&self) -> usize {
        self.queue.len()
    }

    /// The depth it was noted past (what the watch allowed for messages of its size).
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Whether the queue still takes messages (its subscription is open and not cut off). A
    /// queue whose consumer is stuck is cut off now, as if it had overflowed: a publisher held
    /// for it would otherwise wait for ever.
    pub(crate) fn is_open(&self) -> bool {
        self.queue.open.load(Ordering::Acquire) && !self.queue.cut_if_stuck()
    }
}

impl Drop for InMemoryBroker {
    fn drop(&mut self) {
        if !self.shared.closed.load(Ordering::Acquire) {
            self.shared.close(Duration::from_secs(1));
        }
    }
}

impl Shared {
    fn route(&self, topic: &str) -> Result<Arc<[Arc<Inbox>]>> {
        if let Some(targets) = read(&self.routes).cache.get(topic) {
            return Ok(targets.clone());
        }
        validate_topic(topic)?;
        let mut routes = write(&self.routes);
        let targets: Arc<[Arc<Inbox>]> = routes
            .inboxes
            .iter()
            .filter(|i| i.pattern.matches(topic))
            .cloned()
            .collect();
        if routes.cache.len() >= ROUTE_CACHE_LIMIT {
            routes.cache.clear();
        }
        routes.cache.insert(topic.to_owned(), targets.clone());
        Ok(targets)
    }

    fn publish(&self, message: Message, internal: bool) -> Result<MessageId> {
        if !internal && self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        let targets = self.route(message.topic())?;
        let notifier = self.listeners.snapshot();
        let message = self.stamp(message, SystemTime::now());
        let message = self.admit(message, &targets, &notifier, true)?;
        let id = message.id();
        for target in targets.iter().filter(|t| !t.is_cut()) {
            target.fresh.push(message.clone());
            self.notify_or_drain(target, &notifier);
        }
        Ok(id)
    }

    /// [`publish`](Self::publish) for a burst of stamped messages: the same outcome for each
    /// message, in order.
    fn publish_many(
        &self,
        messages: impl IntoIterator<Item = Message>,
        mut result: impl FnMut(Result<MessageId>),
        watch: &mut Watch,
    ) {
        let closed = self.closed.load(Ordering::Acquire);
        let notifier = self.listeners.snapshot();
        // The route of the current run of one topic, and the run's admitted messages.
        let mut route: Option<(Arc<str>, Targets)> = None;
        let messages = messages.into_iter();
        // Room for the whole burst at once: grown by doubling, a burst of a thousand was
        // copied ten times over.
        let mut run: Vec<Message> = Vec::with_capacity(messages.size_hint().0);
        for message in messages {
            if closed {
                result(Err(Error::Closed));
                continue;
            }
            let same = route.as_ref().is_some_and(|(topic, _)| {
                Arc::ptr_eq(topic, message.shared_topic()) || **topic == *message.topic()
            });
            if !same {
                if let Some((_, targets)) = route.take() {
                    self.enqueue_run(&targets, &mut run, &notifier, watch);
                }
                match self.route(message.topic()) {
                    Ok(targets) => route = Some((message.shared_topic().clone(), targets)),
                    Err(err) => {
                        result(Err(err));
                        continue;
                    }
                }
            }
            let Some((_, targets)) = &route else { continue };
            // A run with targets is told to the listeners as a run, when it is queued.
            match self.admit(message, targets, &notifier, targets.is_empty()) {
                Ok(message) => {
                    result(Ok(message.id()));
                    if !targets.is_empty() {
                        run.push(message);
                    }
                }
                Err(err) => result(Err(err)),
            }
        }
        if let Some((_, targets)) = route {
            self.enqueue_run(&targets, &mut run, &notifier, watch);
        }
    }

    /// Tells the listeners of a run of admitted messages (published, then enqueued or dropped
    /// for each target) and pushes it to each of their queues: one lock and one wake each.
    fn enqueue_run(
        &self,
        targets: &[Arc<Inbox>],
        run: &mut Vec<Message>,
        notifier: &Notifier,
        watch: &mut Watch,
    ) {
        if run.is_empty() {
            return;
        }
        if !notifier.is_empty() {
            notifier.each("published", |l| l.published_all(run));
            for target in targets {
                if target.is_cut() {
                    let reason = DropReason::SlowConsumer {
                        queue: target.name.clone(),
                    };
                    for message in run.iter() {
                        notifier.each("dropped", |l| l.dropped(message, &reason));
                    }
                } else {
                    notifier.each("enqueued", |l| l.enqueued_all(run, &target.name));
                }
            }
        }
        let bytes: usize = run.iter().map(|m| m.payload().len()).sum();
        let mean = bytes / run.len();
        let mut open = targets.iter().filter(|t| !t.is_cut()).peekable();
        while let Some(target) = open.next() {
            if open.peek().is_some() {
                target.fresh.push_all(run.iter().cloned());
            } else {
                target.fresh.push_all(run.drain(..));
            }
            self.notify_or_drain(target, notifier);
            watch.note(target, mean);
        }
        run.clear();
    }

    /// Wakes a member of `target` for what was just pushed, or, if the subscription ended
    /// meanwhile, counts what it will never take.
    fn notify_or_drain(&self, target: &Inbox, notifier: &Notifier) {
        if target.open.load(Ordering::Acquire) {
            target.notify(self);
        } else {
            self.drain_closed(target, notifier);
        }
    }

    /// Takes `n` message ids in one step: the first of them (the others follow it).
    fn take_ids(&self, n: usize) -> MessageId {
        MessageId(self.next_message.fetch_add(n as u64, Ordering::Relaxed) + 1)
    }

    /// Gives `message` its id, publish time `now` and first attempt.
    fn stamp(&self, message: Message, now: SystemTime) -> Message {
        message.stamped(self.take_ids(1), now)
    }

    /// Reserves room for a stamped `message` in each of `targets` (the caller pushes it),
    /// telling the listeners if `notify` (else the caller tells them, as
    /// [`enqueue_run`](Self::enqueue_run) does).
    ///
    /// # Errors
    ///
    /// [`Error::QueueFull`] when a target with a capacity has no room.
    fn admit(
        &self,
        message: Message,
        targets: &[Arc<Inbox>],
        notifier: &Notifier,
        notify: bool,
    ) -> Result<Message> {
        let id = message.id();
        for (i, target) in targets.iter().enumerate() {
            if let Room::Full = target.try_reserve() {
                // A queue cut off meanwhile leaks its reservation: it is going away.
                for t in targets[..i].iter().filter(|t| !t.is_cut()) {
                    t.unreserve();
                }
                return Err(Error::QueueFull {
                    queue: target.name.clone(),
                    capacity: target.capacity.unwrap_or(usize::MAX),
                    message: Box::new(message),
                });
            }
        }
        let listen = notify && !notifier.is_empty();
        if listen {
            notifier.each("published", |l| l.published(&message));
        }
        if targets.is_empty() {
            tracing::trace!(
                topic = message.topic(),
                msg.id = id.0,
                "no subscriber; dropped"
            );
            if listen {
                notifier.each("dropped", |l| {
                    l.dropped(&message, &DropReason::NoSubscriber)
                });
            }
            return Ok(message);
        }
        if listen {
            for target in targets {
                if target.is_cut() {
                    let reason = DropReason::SlowConsumer {
                        queue: target.name.clone(),
                    };
                    notifier.each("dropped", |l| l.dropped(&message, &reason));
                } else {
                    notifier.each("enqueued", |l| l.enqueued(&message, &target.name));
                }
            }
        }
        Ok(message)
    }

    fn subscribe(
        self: &Arc<Self>,
        pattern: &str,
        options: SubscribeOptions,
        handler: Handler,
    ) -> Result<Subscription> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        options.validate()?;
        let parsed = Pattern::parse(pattern)?;
        let id = SubscriptionId(self.next_subscription.fetch_add(1, Ordering::Relaxed) + 1);
        let group = options.group_name().map(str::to_owned);
        let manual = options.ack_mode == AckMode::Manual;
        let sub = {
            let mut routes = write(&self.routes);
            let inbox = match &group {
                Some(name) => {
                    let key = (pattern.to_owned(), name.clone());
                    match routes.groups.get(&key) {
                        Some(inbox) => inbox.clone(),
                        None => {
                            let inbox = Arc::new(Inbox::new(
                                name.clone(),
                                parsed,
                                Some(name.clone()),
                                Some(self.config.group_capacity),
                            ));
                            routes.groups.insert(key, inbox.clone());
                            routes.inboxes.push(inbox.clone());
                            routes.cache.clear();
                            inbox
                        }
                    }
                }
                None => {
                    let overflow = handler.overflow();
                    let mut inbox = Inbox::new(
                        format!("{pattern}#{id}"),
                        parsed,
                        None,
                        overflow.map(|(limit, _, _)| limit),
                    );
                    inbox.on_overflow = overflow.map(|(_, stall, hook)| (stall, hook.clone()));
                    let inbox = Arc::new(inbox);
                    routes.inboxes.push(inbox.clone());
                    routes.cache.clear();
                    inbox
                }
            };
            let info = SubscriptionInfo {
                id,
                pattern: pattern.to_owned(),
                group: group.clone(),
                ack_mode: options.ack_mode,
                queue: inbox.name.clone(),
            };
            let options_window = options.max_in_flight.min(BASE_WINDOW);
            let sub = Arc::new(Sub {
                info,
                options,
                manual,
                handler,
                inbox: inbox.clone(),
                scheduled: AtomicBool::new(false),
                active: AtomicBool::new(true),
                in_flight: AtomicUsize::new(0),
                in_flight_bytes: AtomicUsize::new(0),
                max_in_flight_bytes: self.config.max_in_flight_bytes,
                unacked: Mutex::new(Unacked::default()),
                delivered: AtomicU64::new(0),
                window: AtomicUsize::new(options_window),
                pace_acks: AtomicUsize::new(0),
                paced_at: Mutex::new(Instant::now()),
                shared: Arc::downgrade(self),
            });
            write(&inbox.members).push(sub.clone());
            routes.subs.insert(id, sub.clone());
            sub
        };
        if manual {
            self.manual_subs.fetch_add(1, Ordering::AcqRel);
            self.timer.wake.notify_one();
        }
        tracing::debug!(sub.id = id.0, pattern, group = ?sub.info.group, "subscribed");
        self.listeners
            .snapshot()
            .each("subscribed", |l| l.subscribed(&sub.info));
        if !sub.inbox.is_empty() {
            sub.inbox.notify(self);
        }
        let weak: Weak<Shared> = Arc::downgrade(self);
        Ok(Subscription::new(id, pattern, group, move || {
            if let Some(shared) = weak.upgrade() {
                shared.unsubscribe(id);
            }
        }))
    }

    fn unsubscribe(&self, id: SubscriptionId) -> bool {
        let sub = {
            let mut routes = write(&self.routes);
            let Some(sub) = routes.subs.remove(&id) else {
                return false;
            };
            write(&sub.inbox.members).retain(|m| m.info.id != id);
            if sub.inbox.group.is_none() {
                routes.inboxes.retain(|i| !Arc::ptr_eq(i, &sub.inbox));
                routes.cache.clear();
                sub.inbox.open.store(false, Ordering::Release);
            }
            sub
        };
        sub.active.store(false, Ordering::Release);
        self.retired_delivered
            .fetch_add(sub.delivered.load(Ordering::Relaxed), Ordering::Relaxed);
        if sub.manual {
            self.manual_subs.fetch_sub(1, Ordering::AcqRel);
        }
        let unacked: Vec<Message> = {
            let mut u = lock(&sub.unacked);
            u.order.clear();
            u.map.drain().collect()
        };
        sub.in_flight.store(0, Ordering::Release);
        sub.in_flight_bytes.store(0, Ordering::Release);
        let notifier = self.listeners.snapshot();
        if sub.inbox.group.is_some() {
            for msg in unacked {
                self.retry_or_dead(&sub, msg, "group member left before ack", &notifier);
            }
            if !sub.inbox.is_empty() {
                sub.inbox.notify(self);
            }
        } else {
            self.drain_closed(&sub.inbox, &notifier);
        }
        tracing::debug!(sub.id = id.0, pattern = %sub.info.pattern, "unsubscribed");
        notifier.each("unsubscribed", |l| l.unsubscribed(&sub.info));
        true
    }

    /// Empties the queue of an ended broadcast subscription, counting each message as dropped.
    fn drain_closed(&self, inbox: &Inbox, notifier: &Notifier) {
        let reason = DropReason::Unsubscribed {
            queue: inbox.name.clone(),
        };
        while let Some(msg) = inbox.take() {
            notifier.each("dropped", |l| l.dropped(&msg, &reason));
        }
    }

    fn find_sub(&self, id: SubscriptionId) -> Option<Arc<Sub>> {
        read(&self.routes).subs.get(&id).cloned()
    }

    fn ack(&self, delivery: DeliveryId) {
        self.ack_many(delivery.subscription, &[delivery.message]);
    }

    /// Acks several deliveries of one subscription: one lookup and one lock for all of them.
    fn ack_many(&self, subscription: SubscriptionId, messages: &[MessageId]) {
        let notifier = self.listeners.snapshot();
        let sub = self.find_sub(subscription);
        let mut acked = Vec::with_capacity(messages.len());
        let mut bytes = 0;
        let mut unknown = Vec::new();
        match &sub {
            Some(sub) => {
                let mut u = lock(&sub.unacked);
                for &id in messages {
                    match u.map.remove(&id) {
                        Some((msg, b)) => {
                            bytes += b;
                            acked.push(msg);
                        }
                        None => unknown.push(id),
                    }
                }
                u.trim_front();
            }
            None => unknown.extend_from_slice(messages),
        }
        for message in unknown {
            let delivery = DeliveryId {
                subscription,
                message,
            };
            tracing::debug!(delivery = %delivery, "ack of an unknown delivery ignored");
            notifier.each("ack_unknown", |l| l.ack_unknown(delivery));
        }
        if let Some(sub) = sub {
            self.settled(&sub, acked, bytes, &notifier);
        }
    }

    /// Acks the deliveries of `subscription` with ids in `ranges` (first id, count), under one
    /// lock, finding them in the in-flight store rather than trying every id of a range.
    fn ack_ranges(&self, subscription: SubscriptionId, ranges: &[(u64, u32)]) {
        let notifier = self.listeners.snapshot();
        let sub = self.find_sub(subscription);
        let mut acked = Vec::new();
        let mut bytes = 0;
        if let Some(sub) = &sub {
            // A lock per stretch of the store, not one for the whole frame: the run that
            // starts new deliveries' ack waits (on another pump, maybe) waits that long at most,
            // instead of going to sleep behind thousands of acks.
            for &(first, count) in ranges {
                let end = MessageId(first.saturating_add(u64::from(count)));
                let mut from = Some(MessageId(first));
                while let Some(first) = from {
                    let mut u = lock(&sub.unacked);
                    let (b, resume) =
                        u.map
                            .take_range_within(first, end, ACKS_PER_LOCK, &mut acked);
                    bytes += b;
                    from = resume;
                    u.trim_front();
                }
            }
        }
        let named: u64 = ranges.iter().map(|&(_, n)| u64::from(n)).sum();
        let unknown = named.saturating_sub(acked.len() as u64);
        if unknown > 0 {
            tracing::debug!(sub = %subscription, unknown, "acks of unknown deliveries ignored");
            if !notifier.is_empty() {
                let found: IdSet<MessageId> = acked.iter().map(Message::id).collect();
                let unknown_ids = ranges
                    .iter()
                    .flat_map(|&(first, n)| first..first.saturating_add(u64::from(n)))
                    .map(MessageId)
                    .filter(|id| !found.contains(id))
                    .take(
                        usize::try_from(unknown)
                            .map_or(UNKNOWN_ACKS_TOLD, |n| n.min(UNKNOWN_ACKS_TOLD)),
                    );
                for message in unknown_ids {
                    let delivery = DeliveryId {
                        subscription,
                        message,
                    };
                    notifier.each("ack_unknown", |l| l.ack_unknown(delivery));
                }
            }
        }
        if let Some(sub) = sub {
            self.settled(&sub, acked, bytes, &notifier);
        }
    }

    /// The deliveries `acked` of `sub` were acked (and taken out of its un-acked store): they
    /// leave the in-flight count, the listeners hear of them, and the subscription gets going
    /// again if they held it.
    fn settled(&self, sub: &Arc<Sub>, acked: Vec<Message>, bytes: usize, notifier: &Notifier) {
        sub.landed(acked.len(), bytes);
        sub.paced(acked.len());
        if !acked.is_empty() {
            notifier.each("acked", |l| l.acked_all(&acked, &sub.info));
        }
        if !sub.inbox.is_empty() {
            sub.try_schedule(self);
        }
    }

    fn nack(&self, delivery: DeliveryId, requeue: bool) {
        let _in_hand = InHand::new(&self.in_hand);
        let notifier = self.listeners.snapshot();
        let removed = self
            .find_sub(delivery.subscription)
            .and_then(|sub| sub.remove_unacked(delivery.message, None).map(|m| (sub, m)));
        let Some((sub, msg)) = removed else {
            tracing::debug!(delivery = %delivery, "nack of an unknown delivery ignored");
            notifier.each("ack_unknown", |l| l.ack_unknown(delivery));
            return;
        };
        notifier.each("nacked", |l| l.nacked(&msg, &sub.info, requeue));
        if requeue {
            self.retry_or_dead(&sub, msg, "nacked", &notifier);
        } else {
            self.dead_letter(&sub, msg, "nacked without requeue", &notifier);
        }
        if !sub.inbox.is_empty() {
            sub.try_schedule(self);
        }
    }

    fn retry_or_dead(&self, sub: &Sub, msg: Message, reason: &str, notifier: &Notifier) {
        let attempt = msg.attempt();
        if attempt >= sub.options.max_attempts {
            self.dead_letter(sub, msg, reason, notifier);
            return;
        }
        let next = msg
            .with_header(format!("mixbus-attempt-{attempt}"), reason)
            .with_attempt(attempt + 1);
        tracing::warn!(
            topic = next.topic(),
            msg.id = next.id().0,
            attempt = attempt + 1,
            reason,
            "re-delivering"
        );
        notifier.each("redelivered", |l| l.redelivered(&next, &sub.info, reason));
        let delay = sub.options.backoff.delay(attempt);
        if delay.is_zero() {
            self.requeue(&sub.inbox, next, notifier);
        } else {
            self.timer
                .schedule(Instant::now() + delay, sub.inbox.clone(), next);
        }
    }

    fn requeue(&self, inbox: &Inbox, msg: Message, notifier: &Notifier) {
        notifier.each("enqueued", |l| l.enqueued(&msg, &inbox.name));
        if !inbox.open.load(Ordering::Acquire) {
            let reason = DropReason::Unsubscribed {
                queue: inbox.name.clone(),
            };
            notifier.each("dropped", |l| l.dropped(&msg, &reason));
            return;
        }
        inbox.retry.push(msg);
        inbox.notify(self);
    }

    fn dead_letter(&self, sub: &Sub, msg: Message, reason: &str, notifier: &Notifier) {
        let prefix = &self.config.dead_letter_prefix;
        let dead_topic = match &sub.options.dead_letter_topic {
            Some(t) => t.clone(),
            None => format!("{prefix}.{}", msg.topic()),
        };
        if msg.topic() == dead_topic
            || (sub.options.dead_letter_topic.is_none()
                && msg
                    .topic()
                    .strip_prefix(prefix.as_str())
                    .is_some_and(|r| r.starts_with('.')))
        {
            tracing::error!(
                topic = msg.topic(),
                msg.id = msg.id().0,
                reason,
                "dead letter failed; dropped"
            );
            notifier.each("dropped", |l| {
                l.dropped(&msg, &DropReason::DeadLetterFailed)
            });
            return;
        }
        tracing::warn!(
            topic = msg.topic(),
            msg.id = msg.id().0,
            attempt = msg.attempt(),
            reason,
            dead_topic,
            "dead-lettered"
        );
        notifier.each("dead_lettered", |l| {
            l.dead_lettered(&msg, &sub.info, &dead_topic)
        });
        let dead = Message::new(dead_topic, msg.payload().clone())
            .with_headers(msg.headers().iter().cloned())
            .with_header("mixbus-dead-reason", reason)
            .with_header("mixbus-original-topic", msg.topic())
            .with_header("mixbus-original-id", msg.id().0.to_string())
            .with_header("mixbus-attempts", msg.attempt().to_string())
            .with_header("mixbus-subscription", sub.info.pattern.clone())
            .with_header("mixbus-group", sub.info.group.clone().unwrap_or_default());
        if let Err(error) = self.publish(dead, true) {
            tracing::error!(topic = msg.topic(), msg.id = msg.id().0, %error, "dead letter refused; dropped");
            notifier.each("dropped", |l| {
                l.dropped(&msg, &DropReason::DeadLetterFailed)
            });
        }
    }

    fn dispatch_loop(self: Arc<Self>, slot: usize) {
        let span = tracing::debug_span!("dispatch", thread = slot);
        let _enter = span.enter();
        let mut ctx = Ctx {
            slot: Some(slot),
            version: u64::MAX,
            notifier: self.listeners.snapshot(),
        };
        // Spin a while before blocking, within the machine's spin slots: a handler's next
        // message that comes soon (a request/reply exchange) then needs no thread wake-up.
        let mut spin = AdaptiveSpin::new(self.config.spin, self.config.spin_max);
        while let Ok(Some(sub)) = spin.recv_sharing(&self.ready_rx, &self.spin_slots) {
            self.run(&sub, &mut ctx);
        }
        tracing::debug!("dispatch thread stopped");
    }

    fn run(&self, sub: &Arc<Sub>, ctx: &mut Ctx) {
        // Counted before anything is taken, so that `idle` sees the run or the queued messages.
        let _in_hand = InHand::new(&self.in_hand);
        ctx.refresh(self);
        // A run on an executor drains more, for a time budget: it shares its thread with whatever
        // fills the queue (the server's pump reads publishes for a budget of its own), so a run
        // cut at a fixed count lets the queue grow.
        let limit = match ctx.slot {
            Some(_) => self.config.batch,
            None => self.config.batch.max(EXECUTOR_BATCH),
        };
        // Handlers on an executor never block: one clock reading serves the whole run, and
        // messages are taken many at a time. A dispatch thread takes one at a time, so that a
        // slow handler holds back no message that another group member could take.
        let (run_start, chunk) = match ctx.slot {
            None => (Some(Instant::now()), EXECUTOR_CHUNK),
            Some(_) => (None, 1),
        };
        let mut taken = Vec::with_capacity(chunk.min(limit));
        let mut delivered = 0;
        while delivered < limit {
            if !sub.active.load(Ordering::Acquire) || sub.blocked() {
                break;
            }
            let room = if sub.manual {
                let in_flight = sub.in_flight.load(Ordering::Acquire);
                let window = sub.window.load(Ordering::Relaxed);
                window.saturating_sub(in_flight).max(1)
            } else {
                usize::MAX
            };
            sub.inbox
                .take_many(chunk.min(limit - delivered).min(room), &mut taken);
            if taken.is_empty() {
                break;
            }
            delivered += taken.len();
            if !self.track(sub, &mut taken, run_start, ctx) {
                break;
            }
            self.deliver(sub, &mut taken, ctx);
            if run_start.is_some_and(|t| t.elapsed() >= EXECUTOR_BUDGET) {
                break;
            }
        }
        if delivered > 0
            && let Err(payload) = catch_unwind(AssertUnwindSafe(|| sub.handler.batch_end()))
        {
            tracing::error!(sub.id = sub.info.id.0, error = %panic_text(payload.as_ref()), "batch-end hook panicked");
        }
        sub.scheduled.store(false, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !sub.inbox.is_empty() {
            // Let an idle member help with the backlog, and come back for more ourselves.
            if sub.inbox.group.is_some() {
                sub.inbox.notify(self);
            }
            sub.try_schedule(self);
        }
    }

    /// Names the deliveries of messages just taken for `sub` and, for a manual-ack subscription,
    /// starts their ack wait (from `now`, read here if none) with one lock. Returns `false` if
    /// the subscription ended meanwhile: the messages are then handed on as its end hands on
    /// its un-acked ones (to another group member, or counted as dropped), not delivered.
    fn track(&self, sub: &Sub, taken: &mut Vec<Message>, now: Option<Instant>, ctx: &Ctx) -> bool {
        for msg in taken.iter_mut() {
            msg.set_delivered_to(sub.info.id);
        }
        sub.delivered
            .fetch_add(taken.len() as u64, Ordering::Relaxed);
        if sub.manual {
            let deadline = now.unwrap_or_else(Instant::now) + sub.options.ack_wait;
            let mut u = lock(&sub.unacked);
            let mut bytes = 0;
            for msg in taken.iter() {
                let b = payload_bytes(msg);
                bytes += b as usize;
                let in_seq = u.map.insert(msg.id(), msg.clone(), b);
                u.wait(msg, in_seq, deadline);
            }
            // Counted before the lock is released: an ack of these (which takes it) must not
            // subtract them first, wrapping the counts for a moment.
            sub.in_flight_bytes.fetch_add(bytes, Ordering::AcqRel);
            sub.in_flight.fetch_add(taken.len(), Ordering::AcqRel);
            drop(u);
        }
        // An unsubscribe clears `active` before it takes the un-acked messages under the same
        // lock: either it took these too, or this load sees it.
        if sub.active.load(Ordering::Acquire) {
            return true;
        }
        let orphans: Vec<Message> = if sub.manual {
            let mut u = lock(&sub.unacked);
            taken
                .drain(..)
                .filter_map(|m| u.map.remove(&m.id()).map(|(m, _)| m))
                .collect()
        } else {
            std::mem::take(taken)
        };
        let notifier = &ctx.notifier;
        for msg in orphans {
            if sub.inbox.group.is_some() {
                self.retry_or_dead(sub, msg, "group member left before ack", notifier);
            } else {
                let reason = DropReason::Unsubscribed {
                    queue: sub.inbox.name.clone(),
                };
                notifier.each("dropped", |l| l.dropped(&msg, &reason));
            }
        }
        false
    }

    /// Delivers the messages taken and tracked by [`track`](Self::track), in order, and empties
    /// `taken`. The listeners hear of them a run at a time: dispatched for all, then processed
    /// for each run that succeeded and failed for each that did not, in order.
    fn deliver(&self, sub: &Sub, taken: &mut Vec<Message>, ctx: &Ctx) {
        let notifier = &ctx.notifier;
        let listen = !notifier.is_empty();
        if listen {
            notifier.each("dispatched", |l| l.dispatched_all(taken, &sub.info));
        }
        let busy = ctx.slot.and_then(|slot| self.busy.get(slot)).map(|b| &b.0);
        if let Some(call_all) = sub.handler.call_all() {
            if let Some(busy) = busy {
                busy.store(true, Ordering::Release);
            }
            let result = catch_unwind(AssertUnwindSafe(|| call_all(taken)));
            if let Some(busy) = busy {
                busy.store(false, Ordering::Release);
            }
            match result {
                Ok(()) if listen => {
                    notifier.each("processed", |l| l.processed_all(taken, &sub.info));
                }
                Ok(()) => {}
                Err(payload) => {
                    // Not meant to happen; if it does, every message of the run is retried.
                    let error = panic_text(payload.as_ref());
                    for msg in taken.iter() {
                        self.delivery_failed(sub, msg.clone(), &error, notifier);
                    }
                }
            }
            taken.clear();
            return;
        }
        // Where the run of messages not yet told as processed starts.
        let mut ok_from = 0;
        for i in 0..taken.len() {
            if let Some(busy) = busy {
                busy.store(true, Ordering::Release);
            }
            let result = catch_unwind(AssertUnwindSafe(|| sub.handler.call(&taken[i])));
            if let Some(busy) = busy {
                busy.store(false, Ordering::Release);
            }
            let error = match result {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => e.to_string(),
                Err(payload) => panic_text(payload.as_ref()),
            };
            if listen && ok_from < i {
                let done = &taken[ok_from..i];
                notifier.each("processed", |l| l.processed_all(done, &sub.info));
            }
            ok_from = i + 1;
            self.delivery_failed(sub, taken[i].clone(), &error, notifier);
        }
        if listen && ok_from < taken.len() {
            let done = &taken[ok_from..];
            notifier.each("processed", |l| l.processed_all(done, &sub.info));
        }
        taken.clear();
    }

    /// A handler failed on `msg`: tells the listeners and retries it or sends it to the dead
    /// letters.
    fn delivery_failed(&self, sub: &Sub, msg: Message, error: &str, notifier: &Notifier) {
        tracing::warn!(topic = msg.topic(), msg.id = msg.id().0, attempt = msg.attempt(), %error, "delivery failed");
        notifier.each("failed", |l| l.failed(&msg, &sub.info, error));
        let msg = if sub.manual {
            match sub.remove_unacked(msg.id(), Some(msg.attempt())) {
                Some(m) => m,
                None => return,
            }
        } else {
            msg
        };
        self.retry_or_dead(sub, msg, error, notifier);
    }

    fn timer_loop(self: Arc<Self>) {
        let span = tracing::debug_span!("timer");
        let _enter = span.enter();
        loop {
            let (due, _in_hand) = {
                let mut st = lock(&self.timer.state);
                let mut due = Vec::new();
                loop {
                    if st.stop {
                        return;
                    }
                    let now = Instant::now();
                    while st.heap.peek().is_some_and(|e| e.at <= now) {
                        due.extend(st.heap.pop());
                    }
                    let scan = self.manual_subs.load(Ordering::Acquire) > 0;
                    if !due.is_empty() {
                        break;
                    }
                    let mut wait = st
                        .heap
                        .peek()
                        .map_or(Duration::from_secs(3600), |e| e.at - now);
                    if scan {
                        wait = wait.min(ACK_SCAN_TICK);
                    }
                    let (guard, timeout) = self
                        .timer
                        .wake
                        .wait_timeout(st, wait)
                        .unwrap_or_else(|e| e.into_inner());
                    st = guard;
                    if timeout.timed_out() && scan {
                        break;
                    }
                }
                // Counted before the lock goes, so that `idle` sees the entries or this pass.
                (due, InHand::new(&self.in_hand))
            };
            let notifier = self.listeners.snapshot();
            for entry in due {
                self.requeue(&entry.inbox, entry.message, &notifier);
            }
            if self.manual_subs.load(Ordering::Acquire) > 0 {
                self.expire_acks(&notifier);
            }
        }
    }

    fn expire_acks(&self, notifier: &Notifier) {
        let subs: Vec<Arc<Sub>> = read(&self.routes)
            .subs
            .values()
            .filter(|s| s.manual)
            .cloned()
            .collect();
        let now = Instant::now();
        for sub in subs {
            let mut expired = Vec::new();
            let mut bytes = 0;
            {
                let mut u = lock(&sub.unacked);
                while let Some(&wait) = u.order.front() {
                    if wait.deadline > now {
                        break;
                    }
                    u.order.pop_front();
                    bytes += u.map.take_waiting(&wait, &mut expired);
                }
            }
            if expired.is_empty() {
                continue;
            }
            sub.landed(expired.len(), bytes);
            for msg in expired {
                self.retry_or_dead(&sub, msg, "ack wait expired", notifier);
            }
            if !sub.inbox.is_empty() {
                sub.try_schedule(self);
            }
        }
    }

    fn idle(&self) -> bool {
        let routes = read(&self.routes);
        routes
            .inboxes
            .iter()
            .all(|i| i.is_empty() || read(&i.members).is_empty())
            && routes
                .subs
                .values()
                .all(|s| lock(&s.unacked).map.is_empty())
            && self.busy.iter().all(|b| !b.0.load(Ordering::Acquire))
            && self.timer.len() == 0
            // Last: work that took messages from a queue or the timer counted itself first.
            && self.in_hand.load(Ordering::SeqCst) == 0
    }

    fn close(&self, timeout: Duration) -> CloseReport {
        let start = Instant::now();
        let mut report = lock(&self.report);
        if let Some(r) = &*report {
            return r.clone();
        }
        self.closed.store(true, Ordering::Release);
        let deadline = start + timeout;
        let mut timed_out = false;
        while !self.idle() {
            if Instant::now() >= deadline {
                timed_out = true;
                break;
            }
            thread::sleep(Duration::from_millis(1));
        }
        let subs: Vec<Arc<Sub>> = read(&self.routes).subs.values().cloned().collect();
        for sub in &subs {
            sub.active.store(false, Ordering::Release);
        }
        {
            lock(&self.timer.state).stop = true;
            self.timer.wake.notify_all();
        }
        let handles = std::mem::take(&mut *lock(&self.threads));
        for _ in 0..self.busy.len() {
            let _ = self.ready_tx.send(None);
        }
        // Idle threads exit at once; give them a moment even when the timeout has passed.
        let join_deadline = deadline.max(Instant::now() + Duration::from_millis(50));
        let mut left = handles;
        while !left.is_empty() && Instant::now() < join_deadline {
            let (done, running): (Vec<_>, Vec<_>) = left.into_iter().partition(|h| h.is_finished());
            for h in done {
                let _ = h.join();
            }
            left = running;
            if !left.is_empty() {
                thread::sleep(Duration::from_millis(1));
            }
        }
        let running_handlers = self
            .busy
            .iter()
            .filter(|b| b.0.load(Ordering::Acquire))
            .count();
        if !left.is_empty() {
            tracing::error!(
                threads = left.len(),
                "close timed out; leaving threads behind"
            );
            timed_out = true;
        }
        let routes = read(&self.routes);
        let delivered = self.retired_delivered.load(Ordering::Relaxed)
            + routes
                .subs
                .values()
                .map(|s| s.delivered.load(Ordering::Relaxed))
                .sum::<u64>();
        let unacked = routes
            .subs
            .values()
            .map(|s| lock(&s.unacked).map.len() as u64)
            .sum();
        let pending =
            routes.inboxes.iter().map(|i| i.len() as u64).sum::<u64>() + self.timer.len() as u64;
        drop(routes);
        let r = CloseReport {
            delivered,
            unacked,
            pending,
            running_handlers: running_handlers as u64,
            unsent_publishes: 0,
            timed_out,
            elapsed: start.elapsed(),
        };
        tracing::info!(report = %r, "in-memory broker closed");
        *report = Some(r.clone());
        r
    }
}

impl Broker for InMemoryBroker {
    fn publish(&self, message: Message) -> Result<MessageId> {
        self.shared.publish(message, false)
    }

    fn subscribe(
        &self,
        pattern: &str,
        options: SubscribeOptions,
        handler: Handler,
    ) -> Result<Subscription> {
        self.shared.subscribe(pattern, options, handler)
    }

    fn unsubscribe(&self, id: SubscriptionId) -> bool {
        self.shared.unsubscribe(id)
    }

    fn ack(&self, delivery: DeliveryId) -> Result<()> {
        self.shared.ack(delivery);
        Ok(())
    }

    fn nack(&self, delivery: DeliveryId, requeue: bool) -> Result<()> {
        self.shared.nack(delivery, requeue);
        Ok(())
    }

    fn add_listener(&self, listener: Arc<dyn BrokerListener>) -> ListenerId {
        self.shared.listeners.add(listener)
    }

    fn remove_listener(&self, id: ListenerId) -> bool {
        self.shared.listeners.remove(id)
    }

    fn close(&self, timeout: Duration) -> CloseReport {
        self.shared.close(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(id: u64) -> Message {
        Message::new("t", "x").stamped(MessageId(id), SystemTime::UNIX_EPOCH)
    }

    /// Puts message `id` in `f`, with its id as its bytes.
    fn put(f: &mut InFlight, id: u64) {
        f.insert(MessageId(id), msg(id), id as u32);
    }

    fn ids(f: &InFlight) -> Vec<u64> {
        let mut ids: Vec<u64> = (0..200)
            .filter(|&i| f.get(&MessageId(i)).is_some())
            .collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn the_window_is_what_the_ack_rate_drains_in_a_quarter_of_the_ack_wait() {
        let second = Duration::from_secs(1);
        let wait = Duration::from_secs(4);
        // 10,000 acks a second drain 10,000 in a quarter of 4 s.
        assert_eq!(paced_window(10_000, second, wait, 32_768), 10_000);
        // Fast: up to the subscription's limit.
        assert_eq!(paced_window(1_000_000, second, wait, 32_768), 32_768);
        // Slow: never below the base window, unless the limit is lower.
        assert_eq!(paced_window(100, second, wait, 32_768), BASE_WINDOW);
        assert_eq!(paced_window(100, second, wait, 10), 10);
        // No time at all, or a rate past any count: the limit.
        assert_eq!(paced_window(5, Duration::ZERO, wait, 32_768), 32_768);
        assert_eq!(
            paced_window(usize::MAX, second, Duration::MAX, 50_000),
            50_000
        );
    }

    #[test]
    fn in_flight_takes_a_range_by_what_it_holds() {
        let mut f = InFlight::default();
        for id in [3, 5, 8, 13, 21] {
            put(&mut f, id);
        }
        // Delivered again, below the newest: in the side map.
        f.remove(&MessageId(5));
        put(&mut f, 5);
        let take = |f: &mut InFlight, first, end| {
            let mut out = Vec::new();
            let bytes = f.take_range(MessageId(first), MessageId(end), &mut out);
            let mut ids: Vec<u64> = out.iter().map(|m| m.id().0).collect();
            ids.sort_unstable();
            (ids, bytes)
        };
        // The middle of the deque and the side map; the ends of the range are not included.
        // The deque keeps each one's bytes (here its id); the side map counts its payload.
        let (taken, bytes) = take(&mut f, 5, 13);
        assert_eq!(taken, [5, 8]);
        assert_eq!(bytes, 8 + 1);
        assert_eq!(ids(&f), [3, 13, 21]);
        assert_eq!(f.len(), 3);
        // Nothing there; then the front, past the end of what is held.
        assert_eq!(take(&mut f, 14, 20), (Vec::new(), 0));
        assert_eq!(take(&mut f, 0, u64::MAX), (vec![3, 13, 21], 3 + 13 + 21));
        assert!(f.is_empty());
        assert!(f.seq.is_empty(), "taken entries leave the deque");
    }

    #[test]
    fn a_range_is_taken_a_stretch_at_a_time() {
        let mut f = InFlight::default();
        for id in 1..=10 {
            put(&mut f, id);
        }
        f.remove(&MessageId(3));
        let mut out = Vec::new();
        // Four entries looked at (3 among them, gone already), then where to go on from.
        let (bytes, resume) = f.take_range_within(MessageId(2), MessageId(9), 4, &mut out);
        assert_eq!((bytes, resume), (2 + 4 + 5, Some(MessageId(6))));
        let (bytes, resume) = f.take_range_within(MessageId(6), MessageId(9), 4, &mut out);
        assert_eq!((bytes, resume), (6 + 7 + 8, None));
        let taken: Vec<u64> = out.iter().map(|m| m.id().0).collect();
        assert_eq!(taken, [2, 4, 5, 6, 7, 8]);
        assert_eq!(ids(&f), [1, 9, 10]);
    }

    #[test]
    fn in_flight_finds_what_was_inserted_in_any_order_of_removal() {
        let mut f = InFlight::default();
        for id in [3, 5, 8, 13] {
            put(&mut f, id);
        }
        assert_eq!(f.len(), 4);
        // Out of order: the middle, then the front, then an unknown id.
        let removed = |f: &mut InFlight, id| f.remove(&MessageId(id)).map(|(m, b)| (m.id().0, b));
        assert_eq!(removed(&mut f, 8), Some((8, 8)));
        assert!(f.remove(&MessageId(8)).is_none(), "removed once only");
        assert_eq!(removed(&mut f, 3), Some((3, 3)));
        assert!(f.remove(&MessageId(4)).is_none());
        assert_eq!(ids(&f), [5, 13]);
        // A re-delivery below the newest id goes aside, and is found there.
        put(&mut f, 8);
        put(&mut f, 2);
        assert_eq!(ids(&f), [2, 5, 8, 13]);
        assert_eq!(f.len(), 4);
        assert_eq!(
            removed(&mut f, 8),
            Some((8, 1)),
            "the side map counts its payload"
        );
        let rest: Vec<u64> = f.drain().map(|m| m.id().0).collect();
        assert_eq!(rest[..2], [5, 13], "delivery order first");
        assert_eq!(rest[2..], [2]);
        assert!(f.is_empty());
        assert!(f.remove(&MessageId(5)).is_none());
    }

    /// Tracks `ids` (attempt `attempt`) in `u` as one run would, with ack waits ending at
    /// `deadline`.
    fn track_run(u: &mut Unacked, ids: &[u64], attempt: u32, deadline: Instant) {
        for &id in ids {
            let m = msg(id).with_attempt(attempt);
            let in_seq = u.map.insert(MessageId(id), m.clone(), 1);
            u.wait(&m, in_seq, deadline);
        }
    }

    /// What expiring every wait up to `now` takes, by id.
    fn expire(u: &mut Unacked, now: Instant) -> Vec<u64> {
        let mut out = Vec::new();
        while let Some(&w) = u.order.front() {
            if w.deadline > now {
                break;
            }
            u.order.pop_front();
            u.map.take_waiting(&w, &mut out);
        }
        out.iter().map(|m| m.id().0).collect()
    }

    #[test]
    fn a_run_waits_for_its_acks_under_one_entry() {
        let t0 = Instant::now();
        let (t1, t2) = (t0 + Duration::from_secs(1), t0 + Duration::from_secs(2));
        let mut u = Unacked::default();
        track_run(&mut u, &[1, 2, 3, 4], 1, t1);
        track_run(&mut u, &[6, 7], 1, t2);
        assert_eq!(u.order.len(), 2, "one entry per run");
        // Acked in part: the run still waits, for what is left of it.
        u.map.remove(&MessageId(1));
        u.map.remove(&MessageId(3));
        u.trim_front();
        assert_eq!(u.order.len(), 2);
        assert_eq!(expire(&mut u, t1), [2, 4]);
        // Acked whole: the entry goes when it reaches the front.
        u.map.remove(&MessageId(6));
        u.map.remove(&MessageId(7));
        u.trim_front();
        assert!(u.order.is_empty());
        assert!(u.map.is_empty());
    }

    #[test]
    fn a_wait_never_times_a_later_delivery_of_the_same_message() {
        let t0 = Instant::now();
        let (t1, t2) = (t0 + Duration::from_secs(1), t0 + Duration::from_secs(2));
        let mut u = Unacked::default();
        track_run(&mut u, &[5, 6, 7], 1, t1);
        // 5 is nacked and comes again (attempt 2) while the first run still waits: kept
        // aside, under a wait of its own.
        u.map.remove(&MessageId(5));
        track_run(&mut u, &[5], 2, t2);
        assert_eq!(u.order.len(), 2);
        assert_eq!(expire(&mut u, t1), [6, 7], "not the later delivery of 5");
        assert_eq!(expire(&mut u, t2), [5]);
        // Back in the emptied deque, a later delivery is not the earlier one either.
        track_run(&mut u, &[9], 1, t1);
        u.map.remove(&MessageId(9));
        track_run(&mut u, &[9], 2, t2);
        assert_eq!(expire(&mut u, t1), Vec::<u64>::new());
        assert_eq!(expire(&mut u, t2), [9]);
    }

    #[test]
    fn the_wait_order_stays_small_behind_a_message_never_acked() {
        let mut u = Unacked::default();
        let deadline = Instant::now();
        for id in 0..100_000 {
            let message = msg(id);
            let in_seq = u.map.insert(MessageId(id), message.clone(), 1);
            // Each its own wait, as if each went in a run of its own.
            u.order.push_back(Wait {
                deadline,
                first: MessageId(id),
                last: MessageId(id),
                attempt: message.attempt(),
                in_seq,
            });
            if id > 0 {
                assert!(u.map.remove(&MessageId(id)).is_some());
                u.trim_front();
            }
        }
        assert_eq!(u.map.len(), 1);
        assert!(
            u.order.len() <= InFlight::COMPACT_AT,
            "{} entries",
            u.order.len()
        );
        assert_eq!(u.order.front().map(|w| w.first), Some(MessageId(0)));
    }

    #[test]
    fn in_flight_stays_small_behind_a_message_never_acked() {
        let mut f = InFlight::default();
        put(&mut f, 0);
        for id in 1..100_000 {
            put(&mut f, id);
            assert!(f.remove(&MessageId(id)).is_some());
        }
        assert_eq!(f.len(), 1);
        assert!(
            f.seq.len() <= InFlight::COMPACT_AT,
            "{} entries kept",
            f.seq.len()
        );
        assert_eq!(
            f.remove(&MessageId(0)).map(|(m, _)| m.id()),
            Some(MessageId(0))
        );
        assert!(f.seq.is_empty());
    }
}
