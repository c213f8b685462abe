//! `mixbus bench`: throughput and latency of the bus, with every message checked on arrival.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mixbus::bus::{Broker, Bytes, Error as BusError, Handler, Message, SubscribeOptions};

use crate::CliError;

/// The smallest payload: 8 bytes of publisher and sequence number, 8 of send time.
pub(crate) const MIN_SIZE: usize = 16;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Workload {
    /// Publishers to broadcast subscribers; each subscriber must see every message in order.
    Pubsub,
    /// One publisher to several broadcast subscribers (use --subscribers).
    Fanout,
    /// A consumer group with manual acks: each message processed exactly once by one member.
    Group,
    /// Request/reply round trips, one outstanding at a time.
    Reqrep,
}

/// The settings of one bench run.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) workload: Workload,
    pub(crate) size: usize,
    pub(crate) count: u64,
    pub(crate) publishers: usize,
    pub(crate) subscribers: usize,
    /// Subscribers' handlers run inline (streaming workloads).
    pub(crate) inline: bool,
    /// Messages (requests) per second in all, if paced.
    pub(crate) rate: Option<u64>,
    pub(crate) progress: bool,
}

impl Plan {
    /// How far apart one of `publishers` spaces its messages to keep to the rate.
    fn gap(&self, publishers: usize) -> Option<Duration> {
        self.rate
            .map(|rate| Duration::from_secs_f64(publishers as f64 / rate as f64))
    }
}

/// Waits until message `seq` of a stream spaced `gap` apart, started at `start`, is due. The
/// sleep is the pacing itself: it stands in for no event.
fn keep_pace(gap: Option<Duration>, start: Instant, seq: u64) {
    if let Some(gap) = gap {
        let due = start + gap.mul_f64(seq as f64);
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
    }
}

/// The CPU time this process has used so far (user and system), where the system says
/// (`/proc/self/stat` on Linux).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports in clock ticks of 1/100 s on every architecture it runs on (USER_HZ).
    Some(Duration::from_millis(ticks * 10))
}

/// CPU time used since `before`, if it can be read.
fn cpu_since(before: Option<Duration>) -> Option<Duration> {
    Some(cpu_time()?.saturating_sub(before?))
}

/// What a run found.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) backend: String,
    pub(crate) workload: Workload,
    pub(crate) size: usize,
    pub(crate) published: u64,
    pub(crate) delivered: u64,
    pub(crate) elapsed: Duration,
    /// The process's CPU time over the run, where it can be read.
    pub(crate) cpu: Option<Duration>,
    pub(crate) latency: Histogram<u64>,
    pub(crate) verified: Result<String, String>,
}

impl Outcome {
    pub(crate) fn msgs_per_sec(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(crate) fn mb_per_sec(&self) -> f64 {
        self.msgs_per_sec() * self.size as f64 / 1e6
    }

    fn pct_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }

    /// The derived figures both outputs show.
    fn figures(&self) -> Figures {
        Figures {
            workload: format!("{:?}", self.workload).to_lowercase(),
            seconds: self.elapsed.as_secs_f64(),
            msgs_per_sec: self.msgs_per_sec(),
            mb_per_sec: self.mb_per_sec(),
            p50: self.pct_us(0.50),
            p99: self.pct_us(0.99),
            p999: self.pct_us(0.999),
        }
    }

    pub(crate) fn table(&self) -> String {
        let f = self.figures();
        let verdict = match &self.verified {
            Ok(text) => format!("verified: {text}"),
            Err(text) => format!("NOT VERIFIED: {text}"),
        };
        let cpu = self
            .cpu
            .map_or_else(|| "-".to_owned(), |c| format!("{:.2}", c.as_secs_f64()));
        format!(
            "backend   workload  size   published  delivered  seconds  msgs/s        MB/s      p50 us   p99 us   p99.9 us  cpu s\n\
             {:<9} {:<9} {:<6} {:<10} {:<10} {:<8.3} {:<13.0} {:<9.1} {:<8.1} {:<8.1} {:<9.1} {cpu}\n{verdict}",
            self.backend,
            f.workload,
            self.size,
            self.published,
            self.delivered,
            f.seconds,
            f.msgs_per_sec,
            f.mb_per_sec,
            f.p50,
            f.p99,
            f.p999,
        )
    }

    pub(crate) fn json(&self) -> String {
        let f = self.figures();
        let (ok, text) = match &self.verified {
            Ok(t) => (true, t.as_str()),
            Err(t) => (false, t.as_str()),
        };
        format!(
            "{{\"backend\":\"{}\",\"workload\":\"{}\",\"size\":{},\"published\":{},\"delivered\":{},\"seconds\":{:.6},\"msgs_per_sec\":{:.1},\"mb_per_sec\":{:.3},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"cpu_s\":{},\"verified\":{},\"verdict\":\"{}\"}}",
            self.backend,
            f.workload,
            self.size,
            self.published,
            self.delivered,
            f.seconds,
            f.msgs_per_sec,
            f.mb_per_sec,
            f.p50,
            f.p99,
            f.p999,
            self.cpu
                .map_or_else(|| "null".to_owned(), |c| format!("{:.3}", c.as_secs_f64())),
            ok,
            text.replace('"', "'"),
        )
    }
}

/// Figures derived from an [`Outcome`].
struct Figures {
    workload: String,
    seconds: f64,
    msgs_per_sec: f64,
    mb_per_sec: f64,
    p50: f64,
    p99: f64,
    p999: f64,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static bounds are valid")
}

/// One subscriber's view: what it saw, checked as it arrives.
struct Seen {
    received: u64,
    /// Next expected sequence number per publisher (ordered workloads only).
    next: Vec<u64>,
    out_of_order: u64,
    latency: Histogram<u64>,
}

/// For a consumer group: which (publisher, seq) were processed, to prove exactly once. The
/// members mark their messages with atomic bit sets, not under a lock they would share for
/// every message.
struct Once {
    bits: Vec<Vec<AtomicU64>>,
    duplicates: AtomicU64,
}

/// Streaming workloads time every this many-th message of each publisher (the others carry a
/// send time of zero): two clock readings per message were a few percent of the whole run's
/// CPU, a cost of the measurement, not of the bus. Request/reply times every round trip.
const LATENCY_EVERY: u64 = 16;

/// Writes the message's id and, if `stamp`, its send time (nanoseconds since `origin`, at
/// least 1; zero means not timed).
fn encode(buf: &mut [u8], publisher: usize, seq: u64, origin: Instant, stamp: bool) {
    let id = ((publisher as u64) << 48) | seq;
    buf[..8].copy_from_slice(&id.to_be_bytes());
    let now = if stamp {
        (origin.elapsed().as_nanos() as u64).max(1)
    } else {
        0
    };
    buf[8..16].copy_from_slice(&now.to_be_bytes());
}

fn decode(payload: &[u8]) -> Option<(usize, u64, u64)> {
    let id = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let sent = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some(((id >> 48) as usize, id & ((1 << 48) - 1), sent))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Each group member's handle to the subscriber broker, to ack with: a strong one under a lock
/// of its own. Upgrading one weak handle shared by every member, for each message, made the
/// members' threads contend on its reference count. The handles are let go of when the run
/// ends (also on an early return), so the broker does not keep itself alive through its
/// subscriptions' handlers.
struct Ackers(Vec<Acker>);

/// One member's handle; `None` once the run is over.
type Acker = Arc<Mutex<Option<Arc<dyn Broker>>>>;

impl Drop for Ackers {
    fn drop(&mut self) {
        for acker in &self.0 {
            lock(acker).take();
        }
    }
}

/// Bytes of deliveries the publishers may have outstanding (published, not yet handled by a
/// subscriber). A server cuts off a consumer whose connection falls `max_outbound_bytes` behind
/// (8 MiB by default) as a slow consumer, as NATS does: a publisher of large messages running
/// flat out would get a healthy subscriber cut off. Half of that default keeps the pipe full
/// (at 4 KiB, a thousand deliveries in flight) and leaves small messages to the server's own
/// hold on publishers.
const PACE_BYTES: u64 = 4 << 20;

/// How long the publishers wait for a delivery before they give up (something was lost).
const STALL: Duration = Duration::from_secs(10);

/// Deliveries handled, counted per subscriber on a cache line of its own: the subscribers'
/// threads adding to one shared counter for every message contended on it.
struct Counts(Vec<Count>);

#[repr(align(128))]
#[derive(Default)]
struct Count(AtomicU64);

impl Counts {
    fn new(subscribers: usize) -> Self {
        Counts((0..subscribers.max(1)).map(|_| Count::default()).collect())
    }

    /// One more delivery handled by subscriber `i`.
    fn add(&self, i: usize) {
        self.0[i].0.fetch_add(1, Ordering::SeqCst);
    }

    /// Deliveries handled by all (SeqCst: a handler's work before its count is seen).
    fn total(&self) -> u64 {
        self.0.iter().map(|c| c.0.load(Ordering::SeqCst)).sum()
    }
}

/// Keeps the publishers at most a window of deliveries ahead of the subscribers.
struct Pace {
    /// Deliveries the window allows outstanding (at least one message's worth).
    window: u64,
    /// Deliveries the messages published so far will make.
    owed: AtomicU64,
    /// Deliveries handled.
    delivered: Arc<Counts>,
    /// A publisher waits on `room`; a handler signals it when this is set.
    waiting: AtomicBool,
    lock: Mutex<()>,
    room: std::sync::Condvar,
}

impl Pace {
    /// Waits for room in the window and takes a share of it for one of `publishers` threads:
    /// how many messages of `per_message` deliveries each it may publish now (at least one),
    /// or `None` if no delivery was handled for [`STALL`] while it waited. A publisher looks at
    /// the subscribers' count once per share, not once per message.
    fn admit(&self, per_message: u64, publishers: u64) -> Option<u64> {
        let mut last = (self.delivered.total(), Instant::now());
        loop {
            let delivered = self.delivered.total();
            let free = self.room(delivered);
            if free >= per_message {
                // Concurrent publishers each take a share of what they saw, so together they
                // stay within it (give or take one message each).
                let share = (free / per_message / publishers).max(1);
                self.owed.fetch_add(share * per_message, Ordering::SeqCst);
                return Some(share);
            }
            if delivered != last.0 {
                last = (delivered, Instant::now());
            } else if last.1.elapsed() > STALL {
                return None;
            }
            let guard = lock(&self.lock);
            self.waiting.store(true, Ordering::SeqCst);
            // Either the handler that makes room sees `waiting`, or this sees its delivery.
            if self.room(self.delivered.total()) >= self.resume(per_message) {
                continue;
            }
            drop(
                self.room
                    .wait_timeout(guard, Duration::from_millis(100))
                    .unwrap_or_else(|p| p.into_inner()),
            );
        }
    }

    /// Deliveries the window has room for, with `delivered` handled.
    fn room(&self, delivered: u64) -> u64 {
        let outstanding = self.owed.load(Ordering::SeqCst).saturating_sub(delivered);
        self.window.saturating_sub(outstanding)
    }

    /// Room a waiting publisher is woken for: a quarter of the window (at least a message). A
    /// publisher woken for each delivery would take one message at a time, and a 4 KiB stream
    /// spent its time switching threads (a context switch per ten messages).
    fn resume(&self, per_message: u64) -> u64 {
        (self.window / 4).max(per_message)
    }

    /// Called by a handler after it counted a delivery.
    fn delivered(&self, per_message: u64) {
        if self.waiting.load(Ordering::SeqCst) {
            if self.room(self.delivered.total()) < self.resume(per_message) {
                return;
            }
            let _guard = lock(&self.lock);
            self.waiting.store(false, Ordering::SeqCst);
            self.room.notify_all();
        }
    }
}

/// [`publish_retrying`] with `Broker::publish_slice`: what a streaming publisher uses, as a
/// program that has its payload in a buffer would.
fn publish_slice_retrying(
    broker: &dyn Broker,
    topic: &str,
    payload: &[u8],
) -> Result<(), BusError> {
    loop {
        match broker.publish_slice(topic, payload) {
            Ok(_) => return Ok(()),
            Err(BusError::QueueFull { .. }) => thread::yield_now(),
            Err(err) => return Err(err),
        }
    }
}

/// Publishes, retrying while a bounded queue is full (backpressure, not loss).
fn publish_retrying(broker: &dyn Broker, mut msg: Message) -> Result<(), BusError> {
    loop {
        match broker.publish(msg) {
            Ok(_) => return Ok(()),
            Err(BusError::QueueFull { message, .. }) => {
                msg = *message;
                thread::yield_now();
            }
            Err(err) => return Err(err),
        }
    }
}

/// Runs `plan` against `broker`, which must be fresh (no other subscriptions on `bench.>`).
///
/// Publishers use `broker`; subscribers use `subscriber` (the same broker in memory, a second
/// connection over the network, so each direction has its own socket).
pub(crate) fn run(
    broker: Arc<dyn Broker>,
    subscriber: Arc<dyn Broker>,
    backend: &str,
    plan: &Plan,
) -> Result<Outcome, CliError> {
    if plan.workload == Workload::Reqrep {
        return run_reqrep(broker, subscriber, backend, plan);
    }
    let size = plan.size.max(MIN_SIZE);
    let publishers = if plan.workload == Workload::Fanout {
        1
    } else {
        plan.publishers.max(1)
    };
    let subscribers = plan.subscribers.max(1);
    let total = plan.count;
    let per_publisher: Vec<u64> = (0..publishers)
        .map(|p| total / publishers as u64 + u64::from((p as u64) < total % publishers as u64))
        .collect();
    let origin = Instant::now();
    let group = plan.workload == Workload::Group;
    let expected_deliveries = if group {
        total
    } else {
        total * subscribers as u64
    };

    let delivered = Arc::new(Counts::new(subscribers));
    let per_message = if group { 1 } else { subscribers as u64 };
    let pace = Arc::new(Pace {
        window: (PACE_BYTES / size as u64).max(per_message),
        owed: AtomicU64::new(0),
        delivered: delivered.clone(),
        waiting: AtomicBool::new(false),
        lock: Mutex::new(()),
        room: std::sync::Condvar::new(),
    });
    let stalled = Arc::new(AtomicBool::new(false));
    let seen: Vec<Arc<Mutex<Seen>>> = (0..subscribers)
        .map(|_| {
            Arc::new(Mutex::new(Seen {
                received: 0,
                next: vec![0; publishers],
                out_of_order: 0,
                latency: histogram(),
            }))
        })
        .collect();
    let once = Arc::new(Once {
        bits: per_publisher
            .iter()
            .map(|&n| {
                (0..(n as usize).div_ceil(64))
                    .map(|_| AtomicU64::new(0))
                    .collect()
            })
            .collect(),
        duplicates: AtomicU64::new(0),
    });
    let mut ackers = Ackers(Vec::new());
    let mut subs = Vec::new();
    for s in 0..subscribers {
        let seen = seen[s].clone();
        let once = once.clone();
        let delivered = delivered.clone();
        let pace = pace.clone();
        let acker: Option<Acker> = group.then(|| Arc::new(Mutex::new(Some(subscriber.clone()))));
        ackers.0.extend(acker.clone());
        let options = if group {
            SubscribeOptions::group("bench").manual_ack()
        } else {
            SubscribeOptions::broadcast()
        };
        let handler = Handler::new(move |msg: &Message| {
            let (publisher, seq, sent) = decode(msg.payload()).ok_or("short bench payload")?;
            {
                let mut seen = lock(&seen);
                seen.received += 1;
                if sent != 0 {
                    let now = origin.elapsed().as_nanos() as u64;
                    let _ = seen.latency.record(now.saturating_sub(sent).max(1));
                }
                if group {
                    let word = once
                        .bits
                        .get(publisher)
                        .and_then(|words| words.get((seq / 64) as usize))
                        .ok_or("bench payload out of range")?;
                    let bit = 1u64 << (seq % 64);
                    // Read by the check after the `delivered` count below (SeqCst) says all came.
                    if word.fetch_or(bit, Ordering::Relaxed) & bit != 0 {
                        once.duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                } else if seen.next.get(publisher) == Some(&seq) {
                    seen.next[publisher] += 1;
                } else {
                    seen.out_of_order += 1;
                }
            }
            if let (Some(acker), Some(delivery)) = (&acker, msg.delivery_id())
                && let Some(broker) = lock(acker).as_ref()
            {
                broker.ack(delivery)?;
            }
            delivered.add(s);
            pace.delivered(per_message);
            Ok(())
        });
        let handler = if plan.inline {
            handler.inline()
        } else {
            handler
        };
        subs.push(subscriber.subscribe("bench.data", options, handler)?);
    }

    let stop_progress = Arc::new(AtomicBool::new(false));
    let progress = plan.progress.then(|| {
        let delivered = delivered.clone();
        let stop = stop_progress.clone();
        thread::spawn(move || show_progress(|| delivered.total(), expected_deliveries, &stop))
    });

    let gap = plan.gap(publishers);
    let cpu_before = cpu_time();
    let start = Instant::now();
    let mut threads = Vec::new();
    for (p, &n) in per_publisher.iter().enumerate() {
        let broker = broker.clone();
        let (pace, stalled) = (pace.clone(), stalled.clone());
        threads.push(thread::spawn(move || -> Result<(), BusError> {
            let mut buf = vec![0u8; size];
            let topic = "bench.data";
            let mut credit = 0;
            for seq in 0..n {
                if credit == 0 {
                    match pace.admit(per_message, publishers as u64) {
                        Some(share) => credit = share,
                        None => {
                            // Nothing arrives any more: stop, and let the check below say what
                            // is missing.
                            stalled.store(true, Ordering::SeqCst);
                            return Ok(());
                        }
                    }
                }
                credit -= 1;
                keep_pace(gap, start, seq);
                encode(&mut buf, p, seq, origin, seq % LATENCY_EVERY == 0);
                publish_slice_retrying(&*broker, topic, &buf)?;
            }
            Ok(())
        }));
    }
    for t in threads {
        t.join()
            .map_err(|_| CliError::msg("a publisher thread panicked"))??;
    }
    // Wait for every delivery, bounded: no progress for 10 s means something was lost.
    let mut last = (0, Instant::now());
    // SeqCst loads (`Counts::total`): the handlers' marks (`Once`) before each count are then
    // seen by the checks.
    while delivered.total() < expected_deliveries {
        let now = delivered.total();
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(10) {
            break;
        }
        thread::sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed();
    let cpu = cpu_since(cpu_before);
    stop_progress.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    drop(subs);

    let mut latency = histogram();
    let mut problems = Vec::new();
    if stalled.load(Ordering::SeqCst) {
        problems.push(format!(
            "the publishers stopped: no delivery for {} s",
            STALL.as_secs()
        ));
    }
    let mut got = 0;
    for (i, s) in seen.iter().enumerate() {
        let s = lock(s);
        got += s.received;
        let _ = latency.add(&s.latency);
        if !group {
            if s.received != total {
                problems.push(format!("subscriber {i} received {} of {total}", s.received));
            }
            if s.out_of_order > 0 {
                problems.push(format!(
                    "subscriber {i} saw {} messages out of order",
                    s.out_of_order
                ));
            }
        }
    }
    if group {
        let processed: u64 = once
            .bits
            .iter()
            .flatten()
            .map(|w| u64::from(w.load(Ordering::SeqCst).count_ones()))
            .sum();
        let duplicates = once.duplicates.load(Ordering::SeqCst);
        if duplicates > 0 {
            problems.push(format!("{duplicates} messages processed twice"));
        }
        if processed != total {
            problems.push(format!("{processed} of {total} messages processed"));
        }
    }
    let verified = if problems.is_empty() {
        Ok(if group {
            format!("all {total} messages processed exactly once across {subscribers} members")
        } else {
            format!(
                "each of {subscribers} subscribers got all {total} messages, once, in publish order"
            )
        })
    } else {
        Err(problems.join("; "))
    };
    Ok(Outcome {
        backend: backend.to_owned(),
        workload: plan.workload,
        size,
        published: total,
        delivered: got,
        elapsed,
        cpu,
        latency,
        verified,
    })
}

fn run_reqrep(
    broker: Arc<dyn Broker>,
    responder_broker: Arc<dyn Broker>,
    backend: &str,
    plan: &Plan,
) -> Result<Outcome, CliError> {
    let size = plan.size.max(MIN_SIZE);
    let origin = Instant::now();
    let weak: Weak<dyn Broker> = Arc::downgrade(&responder_broker);
    // The responder answers each request on the reply topic with the same payload. It acks
    // the request before it replies, so the ack is on the wire ahead of the reply: with an
    // ack after the handler, the last request could still be un-acked when the bench drops
    // the subscription, and the server would re-deliver it ("group member left before ack").
    let responder = responder_broker.subscribe(
        "bench.req",
        SubscribeOptions::group("responders").manual_ack(),
        Handler::new(move |msg: &Message| {
            if let Some(broker) = weak.upgrade() {
                if let Some(delivery) = msg.delivery_id() {
                    broker.ack(delivery)?;
                }
                publish_retrying(&*broker, Message::new("bench.rep", msg.payload().clone()))?;
            }
            Ok(())
        }),
    )?;
    let (tx, rx) = flume::unbounded::<Bytes>();
    let replies = broker.subscribe(
        "bench.rep",
        SubscribeOptions::broadcast(),
        Handler::new(move |msg: &Message| {
            let _ = tx.send(msg.payload().clone());
            Ok(())
        }),
    )?;
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let progress = plan.progress.then(|| {
        let delivered = delivered.clone();
        let stop = stop.clone();
        let count = plan.count;
        thread::spawn(move || show_progress(|| delivered.load(Ordering::Relaxed), count, &stop))
    });
    let mut latency = histogram();
    let mut buf = vec![0u8; size];
    let mut problems = Vec::new();
    let gap = plan.gap(1);
    let cpu_before = cpu_time();
    let start = Instant::now();
    for seq in 0..plan.count {
        keep_pace(gap, start, seq);
        encode(&mut buf, 0, seq, origin, true);
        let sent = Instant::now();
        publish_retrying(
            &*broker,
            Message::new("bench.req", Bytes::copy_from_slice(&buf)),
        )?;
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(reply) => {
                let _ = latency.record((sent.elapsed().as_nanos() as u64).max(1));
                if decode(&reply).map(|(_, s, _)| s) != Some(seq) {
                    problems.push(format!("reply {seq} carried the wrong sequence number"));
                    break;
                }
                delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                problems.push(format!("no reply to request {seq} within 10 s"));
                break;
            }
        }
    }
    let elapsed = start.elapsed();
    let cpu = cpu_since(cpu_before);
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    drop((responder, replies));
    let got = delivered.load(Ordering::Relaxed);
    Ok(Outcome {
        backend: backend.to_owned(),
        workload: Workload::Reqrep,
        size,
        published: plan.count,
        delivered: got,
        elapsed,
        cpu,
        latency,
        verified: if problems.is_empty() {
            Ok(format!(
                "all {got} replies arrived, each matching its request"
            ))
        } else {
            Err(problems.join("; "))
        },
    })
}

fn show_progress(done: impl Fn() -> u64, total: u64, stop: &AtomicBool) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(1)
    };
    let start = Instant::now();
    let mut last_print = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(20));
        if last_print.elapsed() < every {
            continue;
        }
        last_print = Instant::now();
        let n = done();
        let rate = n as f64 / start.elapsed().as_secs_f64().max(1e-9);
        let pct = if total == 0 {
            100.0
        } else {
            n as f64 * 100.0 / total as f64
        };
        let line = format!("  {n}/{total} delivered ({pct:.0}%), {rate:.0} msgs/s");
        let mut err = std::io::stderr().lock();
        let _ = if tty {
            write!(err, "\r{line}   ")
        } else {
            writeln!(err, "{line}")
        };
        let _ = err.flush();
    }
    if tty {
        let _ = writeln!(std::io::stderr());
    }
}
