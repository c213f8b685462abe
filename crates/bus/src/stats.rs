//! `StatsCollector`: a listener keeping lock-free counters per topic and queue, with snapshots.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::LocalKey;
use std::time::{Duration, Instant};

use crate::listener::{BrokerListener, DropReason, SubscriptionInfo};
use crate::message::Message;

#[derive(Debug, Default)]
struct Counters {
    published: AtomicU64,
    dispatched: AtomicU64,
    processed: AtomicU64,
    failed: AtomicU64,
    acked: AtomicU64,
    nacked: AtomicU64,
    redelivered: AtomicU64,
    dead_lettered: AtomicU64,
    dropped: AtomicU64,
    depth: AtomicI64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Counts for one topic (or the total over all topics) at one moment.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopicStats {
    /// The topic (`*` for the total).
    pub topic: String,
    /// Messages published.
    pub published: u64,
    /// Deliveries handed to handlers (every attempt counts).
    pub dispatched: u64,
    /// Handlers that returned `Ok`.
    pub processed: u64,
    /// Handlers that returned an error or panicked.
    pub failed: u64,
    /// Manual acks.
    pub acked: u64,
    /// Manual nacks.
    pub nacked: u64,
    /// Re-deliveries scheduled.
    pub redelivered: u64,
    /// Messages sent to a dead-letter topic.
    pub dead_lettered: u64,
    /// Messages that reached no handler.
    pub dropped: u64,
    /// Messages queued for delivery now.
    pub depth: u64,
    /// Publish rate since the previous snapshot, per second.
    pub published_per_sec: f64,
    /// Processing rate since the previous snapshot, per second.
    pub processed_per_sec: f64,
}

/// The depth of one queue (a consumer group, or a broadcast subscription's `pattern#id`).
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// The queue's name.
    pub queue: String,
    /// Messages queued now.
    pub depth: u64,
}

/// A snapshot of a [`StatsCollector`]: plain data.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatsSnapshot {
    /// Time since the collector was created.
    pub uptime: Duration,
    /// The sum over all topics.
    pub total: TopicStats,
    /// One entry per topic seen, sorted by topic.
    pub topics: Vec<TopicStats>,
    /// One entry per queue seen, sorted by name.
    pub queues: Vec<QueueStats>,
    /// Handlers running now (dispatch threads busy).
    pub active_dispatch: u64,
    /// Subscriptions alive now.
    pub subscriptions: u64,
}

impl StatsSnapshot {
    /// The entry for `topic`, if it was seen.
    pub fn topic(&self, topic: &str) -> Option<&TopicStats> {
        self.topics.iter().find(|t| t.topic == topic)
    }

    /// The depth of `queue`, if it was seen.
    pub fn queue(&self, queue: &str) -> Option<u64> {
        self.queues
            .iter()
            .find(|q| q.queue == queue)
            .map(|q| q.depth)
    }
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<24} {:>10} {:>10} {:>10} {:>7} {:>7} {:>7} {:>6} {:>7} {:>7} {:>10} {:>10}",
            "topic",
            "published",
            "dispatched",
            "processed",
            "failed",
            "redeliv",
            "dead",
            "drop",
            "acked",
            "depth",
            "pub/s",
            "proc/s"
        )?;
        for t in self.topics.iter().chain(std::iter::once(&self.total)) {
            writeln!(
                f,
                "{:<24} {:>10} {:>10} {:>10} {:>7} {:>7} {:>7} {:>6} {:>7} {:>7} {:>10.0} {:>10.0}",
                t.topic,
                t.published,
                t.dispatched,
                t.processed,
                t.failed,
                t.redelivered,
                t.dead_lettered,
                t.dropped,
                t.acked,
                t.depth,
                t.published_per_sec,
                t.processed_per_sec
            )?;
        }
        for q in &self.queues {
            writeln!(f, "queue {:<18} depth {}", q.queue, q.depth)?;
        }
        write!(
            f,
            "active dispatch threads {}, subscriptions {}, uptime {:.1?}",
            self.active_dispatch, self.subscriptions, self.uptime
        )
    }
}

/// When the previous snapshot was taken, and each topic's (published, processed) counts then.
type LastSnapshot = (Instant, HashMap<String, (u64, u64)>);

/// A [`BrokerListener`] that counts everything: per topic and in total, with recent rates,
/// queue depth per topic and per queue (group), and handlers running now.
///
/// Counters are atomics; the per-topic table is read-locked only to find a topic's counters.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use mixbus_bus::{Broker, Handler, InMemoryBroker, Message, StatsCollector, SubscribeOptions};
/// let broker = InMemoryBroker::new()?;
/// let stats = Arc::new(StatsCollector::new());
/// broker.add_listener(stats.clone());
/// let _sub = broker.subscribe("orders.*", SubscribeOptions::default(), Handler::new(|_| Ok(())))?;
/// broker.publish(Message::new("orders.created", "1"))?;
/// broker.close(Duration::from_secs(5));
/// let snap = stats.snapshot();
/// assert_eq!(snap.topic("orders.created").unwrap().processed, 1);
/// println!("{snap}");
/// # Ok::<(), mixbus_bus::Error>(())
/// ```
#[derive(Debug)]
pub struct StatsCollector {
    started: Instant,
    id: u64,
    topics: RwLock<HashMap<String, Arc<Counters>>>,
    queues: RwLock<HashMap<String, Arc<AtomicI64>>>,
    active: AtomicI64,
    subscriptions: AtomicI64,
    last: Mutex<LastSnapshot>,
}

/// Collectors are numbered so that a thread can cache their entries.
static NEXT_COLLECTOR: AtomicU64 = AtomicU64::new(1);

/// Entries a thread keeps per cache.
const RECENT: usize = 8;

/// The entries of one kind a thread used last: (collector id, name, entry). Entries are never
/// removed from a collector, so a cached one stays the collector's own.
type Recent<K, T> = RefCell<Vec<(u64, K, Arc<T>)>>;

thread_local! {
    /// Topics are kept as the messages' shared strings: a hit is usually a pointer compare.
    static RECENT_TOPICS: Recent<Arc<str>, Counters> = const { RefCell::new(Vec::new()) };
    static RECENT_QUEUES: Recent<String, AtomicI64> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on the entry `name` of `map` (created on first use), looking in this thread's cache
/// first (`is` tells whether a cached key is `name`; `key` makes one): the common case costs a
/// compare instead of a hash and a shared lock.
fn cached<K, T: Default>(
    recent: &'static LocalKey<Recent<K, T>>,
    collector: u64,
    map: &RwLock<HashMap<String, Arc<T>>>,
    name: &str,
    is: impl Fn(&K) -> bool,
    key: impl FnOnce() -> K,
    f: impl FnOnce(&T),
) {
    recent.with_borrow_mut(|recent| {
        if let Some((_, _, entry)) = recent.iter().find(|(id, k, _)| *id == collector && is(k)) {
            return f(entry);
        }
        let found = map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned();
        let entry = found.unwrap_or_else(|| {
            let mut map = map.write().unwrap_or_else(|e| e.into_inner());
            map.entry(name.to_owned()).or_default().clone()
        });
        f(&entry);
        recent.truncate(RECENT - 1);
        recent.insert(0, (collector, key(), entry));
    });
}

impl Default for StatsCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl StatsCollector {
    /// An empty collector; add it to a broker with [`Broker::add_listener`](crate::Broker::add_listener).
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            id: NEXT_COLLECTOR.fetch_add(1, Ordering::Relaxed),
            started: now,
            topics: RwLock::default(),
            queues: RwLock::default(),
            active: AtomicI64::new(0),
            subscriptions: AtomicI64::new(0),
            last: Mutex::new((now, HashMap::new())),
        }
    }

    /// Runs `f` on the counters of the message's topic, created on first use. (The totals are
    /// summed when a snapshot is taken, so an event costs one count, not two.)
    fn with_topic(&self, message: &Message, f: impl FnOnce(&Counters)) {
        let topic = message.shared_topic();
        let is = |k: &Arc<str>| Arc::ptr_eq(k, topic) || **k == **topic;
        cached(
            &RECENT_TOPICS,
            self.id,
            &self.topics,
            topic,
            is,
            || topic.clone(),
            f,
        );
    }

    fn count(&self, message: &Message, f: impl Fn(&Counters) -> &AtomicU64) {
        self.with_topic(message, |c| bump(f(c)));
    }

    /// Runs `f` once per run of one topic in `messages`, with that topic's counters and the
    /// run's length: a burst on one topic costs one lookup and one count per counter.
    fn each_run(&self, messages: &[Message], mut f: impl FnMut(&Counters, u64)) {
        let mut rest = messages;
        while let Some(first) = rest.first() {
            let topic = first.shared_topic();
            let n = rest
                .iter()
                .take_while(|m| Arc::ptr_eq(m.shared_topic(), topic) || m.topic() == &**topic)
                .count();
            self.with_topic(first, |c| f(c, n as u64));
            rest = &rest[n..];
        }
    }

    /// Counts a run of messages on `f`'s counter of each one's topic.
    fn count_all(&self, messages: &[Message], f: impl Fn(&Counters) -> &AtomicU64) {
        self.each_run(messages, |c, n| {
            f(c).fetch_add(n, Ordering::Relaxed);
        });
    }

    /// Moves the depth of each message's topic and of `queue` by `delta` per message.
    fn depth_all(&self, messages: &[Message], queue: &str, delta: i64) {
        self.each_run(messages, |c, n| {
            c.depth.fetch_add(delta * n as i64, Ordering::Relaxed);
        });
        self.queue_depth(queue, delta * messages.len() as i64);
    }

    fn depth(&self, message: &Message, queue: &str, delta: i64) {
        self.with_topic(message, |c| {
            c.depth.fetch_add(delta, Ordering::Relaxed);
        });
        self.queue_depth(queue, delta);
    }

    fn queue_depth(&self, queue: &str, delta: i64) {
        let is = |k: &String| k == queue;
        cached(
            &RECENT_QUEUES,
            self.id,
            &self.queues,
            queue,
            is,
            || queue.to_owned(),
            |d| {
                d.fetch_add(delta, Ordering::Relaxed);
            },
        );
    }

    /// The counters now, with rates measured since the previous snapshot.
    pub fn snapshot(&self) -> StatsSnapshot {
        let now = Instant::now();
        let read = |name: &str, c: &Counters| TopicStats {
            topic: name.to_owned(),
            published: c.published.load(Ordering::Relaxed),
            dispatched: c.dispatched.load(Ordering::Relaxed),
            processed: c.processed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            acked: c.acked.load(Ordering::Relaxed),
            nacked: c.nacked.load(Ordering::Relaxed),
            redelivered: c.redelivered.load(Ordering::Relaxed),
            dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            depth: c.depth.load(Ordering::Relaxed).max(0) as u64,
            published_per_sec: 0.0,
            processed_per_sec: 0.0,
        };
        let mut topics: Vec<TopicStats> = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, c)| read(name, c))
            .collect();
        topics.sort_by(|a, b| a.topic.cmp(&b.topic));
        let mut total = TopicStats {
            topic: "*".to_owned(),
            ..TopicStats::default()
        };
        for t in &topics {
            total.published += t.published;
            total.dispatched += t.dispatched;
            total.processed += t.processed;
            total.failed += t.failed;
            total.acked += t.acked;
            total.nacked += t.nacked;
            total.redelivered += t.redelivered;
            total.dead_lettered += t.dead_lettered;
            total.dropped += t.dropped;
            total.depth += t.depth;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let secs = now.duration_since(last.0).as_secs_f64().max(1e-9);
        for t in topics.iter_mut().chain(std::iter::once(&mut total)) {
            let (p, d) = last.1.get(&t.topic).copied().unwrap_or((0, 0));
            t.published_per_sec = t.published.saturating_sub(p) as f64 / secs;
            t.processed_per_sec = t.processed.saturating_sub(d) as f64 / secs;
            last.1.insert(t.topic.clone(), (t.published, t.processed));
        }
        last.0 = now;
        drop(last);
        let mut queues: Vec<QueueStats> = self
            .queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(name, d)| QueueStats {
                queue: name.clone(),
                depth: d.load(Ordering::Relaxed).max(0) as u64,
            })
            .collect();
        queues.sort_by(|a, b| a.queue.cmp(&b.queue));
        StatsSnapshot {
            uptime: now.duration_since(self.started),
            total,
            topics,
            queues,
            active_dispatch: self.active.load(Ordering::Relaxed).max(0) as u64,
            subscriptions: self.subscriptions.load(Ordering::Relaxed).max(0) as u64,
        }
    }
}

impl BrokerListener for StatsCollector {
    fn published(&self, message: &Message) {
        self.count(message, |c| &c.published);
    }

    fn enqueued(&self, message: &Message, queue: &str) {
        self.depth(message, queue, 1);
    }

    fn dispatched(&self, message: &Message, subscription: &SubscriptionInfo) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.depth(message, &subscription.queue, -1);
        self.count(message, |c| &c.dispatched);
    }

    fn processed(&self, message: &Message, _subscription: &SubscriptionInfo) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.count(message, |c| &c.processed);
    }

    fn failed(&self, message: &Message, _subscription: &SubscriptionInfo, _error: &str) {
        self.active.fetch_sub(1, Ordering::Relaxed);
        self.count(message, |c| &c.failed);
    }

    fn acked(&self, message: &Message, _subscription: &SubscriptionInfo) {
        self.count(message, |c| &c.acked);
    }

    fn nacked(&self, message: &Message, _subscription: &SubscriptionInfo, _requeue: bool) {
        self.count(message, |c| &c.nacked);
    }

    fn redelivered(&self, message: &Message, _subscription: &SubscriptionInfo, _reason: &str) {
        self.count(message, |c| &c.redelivered);
    }

    fn dead_lettered(&self, message: &Message, _subscription: &SubscriptionInfo, _dead: &str) {
        self.count(message, |c| &c.dead_lettered);
    }

    fn dropped(&self, message: &Message, reason: &DropReason) {
        if let DropReason::Unsubscribed { queue } = reason {
            self.depth(message, queue, -1);
        }
        self.count(message, |c| &c.dropped);
    }

    fn subscribed(&self, _subscription: &SubscriptionInfo) {
        self.subscriptions.fetch_add(1, Ordering::Relaxed);
    }

    fn unsubscribed(&self, _subscription: &SubscriptionInfo) {
        self.subscriptions.fetch_sub(1, Ordering::Relaxed);
    }

    fn published_all(&self, messages: &[Message]) {
        self.count_all(messages, |c| &c.published);
    }

    fn enqueued_all(&self, messages: &[Message], queue: &str) {
        self.depth_all(messages, queue, 1);
    }

    fn dispatched_all(&self, messages: &[Message], subscription: &SubscriptionInfo) {
        self.active
            .fetch_add(messages.len() as i64, Ordering::Relaxed);
        self.depth_all(messages, &subscription.queue, -1);
        self.count_all(messages, |c| &c.dispatched);
    }

    fn processed_all(&self, messages: &[Message], _subscription: &SubscriptionInfo) {
        self.active
            .fetch_sub(messages.len() as i64, Ordering::Relaxed);
        self.count_all(messages, |c| &c.processed);
    }

    fn acked_all(&self, messages: &[Message], _subscription: &SubscriptionInfo) {
        self.count_all(messages, |c| &c.acked);
    }
}
