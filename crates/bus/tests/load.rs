//! Under load: 8 publishers, 1,000,000 messages, a consumer group of 4 and 2 broadcast
//! subscribers; the group handles each message exactly once, each subscriber sees all, and the
//! stats add up.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use mixbus_bus::{Broker, Error, Handler, Message, StatsCollector, SubscribeOptions};
use support::broker;

const PUBLISHERS: usize = 8;
const MESSAGES: usize = 1_000_000;

/// A set of message indexes (carried in the payload) that counts indexes seen twice.
///
/// Not keyed on message ids: a publish refused as `QueueFull` still used up an id, so under
/// backpressure ids run past the message count.
struct Seen {
    bits: Vec<AtomicU64>,
    count: AtomicU64,
    duplicates: AtomicU64,
}

impl Seen {
    fn new(max_id: usize) -> Arc<Self> {
        Arc::new(Self {
            bits: (0..max_id / 64 + 1).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        })
    }

    fn mark(&self, id: u64) {
        let bit = 1u64 << (id % 64);
        if self.bits[(id / 64) as usize].fetch_or(bit, Ordering::Relaxed) & bit != 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn handler(self: &Arc<Self>) -> Handler {
        let seen = self.clone();
        Handler::new(move |m| {
            let index: [u8; 8] = m.payload()[..8].try_into().map_err(|_| "short payload")?;
            seen.mark(u64::from_be_bytes(index));
            Ok(())
        })
    }
}

fn publish_all(broker: &(impl Broker + ?Sized), publisher: usize) {
    let topic = format!("load.p{publisher}");
    let per = MESSAGES / PUBLISHERS;
    for i in 0..per {
        let index = (publisher * per + i) as u64;
        let mut payload = index.to_be_bytes().to_vec();
        payload.extend_from_slice(b"01234567");
        let mut msg = Message::new(topic.clone(), payload);
        loop {
            match broker.publish(msg) {
                Ok(_) => break,
                Err(Error::QueueFull { message, .. }) => {
                    // Backpressure: the group is behind; let it catch up and try again.
                    msg = *message;
                    thread::yield_now();
                }
                Err(e) => panic!("publish failed: {e}"),
            }
        }
    }
}

#[test]
fn smoke() {
    let broker = broker(2);
    let seen = Seen::new(1000);
    let _sub = broker
        .subscribe("load.>", SubscribeOptions::group("g"), seen.handler())
        .unwrap();
    for i in 0..100u64 {
        broker
            .publish(Message::new("load.x", i.to_be_bytes().to_vec()))
            .unwrap();
    }
    broker.close(Duration::from_secs(10));
    assert_eq!(seen.count.load(Ordering::Relaxed), 100);
}

#[test]
fn million_messages_through_a_group_and_two_broadcast_subscribers() {
    let broker = Arc::new(broker(4));
    let stats = Arc::new(StatsCollector::new());
    broker.add_listener(stats.clone());
    let group = Seen::new(MESSAGES + 1);
    let broadcast = [Seen::new(MESSAGES + 1), Seen::new(MESSAGES + 1)];
    let mut subs = Vec::new();
    for _ in 0..4 {
        subs.push(
            broker
                .subscribe("load.>", SubscribeOptions::group("g"), group.handler())
                .unwrap(),
        );
    }
    for b in &broadcast {
        subs.push(
            broker
                .subscribe("load.*", SubscribeOptions::default(), b.handler())
                .unwrap(),
        );
    }
    let t0 = Instant::now();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let broker = broker.clone();
            thread::spawn(move || publish_all(broker.as_ref(), p))
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
    let report = broker.close(Duration::from_secs(60));
    let elapsed = t0.elapsed();
    eprintln!("1M messages x 3 deliveries in {elapsed:?}");
    assert!(!report.timed_out, "{report}");

    let n = MESSAGES as u64;
    assert_eq!(group.count.load(Ordering::Relaxed), n);
    assert_eq!(group.duplicates.load(Ordering::Relaxed), 0);
    for b in &broadcast {
        assert_eq!(b.count.load(Ordering::Relaxed), n);
        assert_eq!(b.duplicates.load(Ordering::Relaxed), 0);
    }
    assert_eq!(report.delivered, 3 * n);
    assert_eq!((report.pending, report.unacked), (0, 0));

    let snap = stats.snapshot();
    let total = &snap.total;
    assert_eq!(total.published, n);
    assert_eq!(total.dispatched, 3 * n);
    assert_eq!(total.processed, 3 * n);
    assert_eq!(
        (total.failed, total.dropped, total.redelivered, total.depth),
        (0, 0, 0, 0)
    );
    assert_eq!(snap.topics.len(), PUBLISHERS);
    for t in &snap.topics {
        assert_eq!(t.published, n / PUBLISHERS as u64, "{}", t.topic);
        assert_eq!(t.processed, 3 * n / PUBLISHERS as u64, "{}", t.topic);
    }
    assert_eq!(snap.topics.iter().map(|t| t.published).sum::<u64>(), n);
    assert_eq!(snap.queue("g"), Some(0));
    assert!(snap.queues.iter().all(|q| q.depth == 0));
    assert_eq!(snap.active_dispatch, 0);
}
