//! The semantic suite: behaviours every [`Broker`] backend must show, written once over the trait
//! and instantiated for each backend (`suite_memory.rs`, `suite_remote.rs`).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mixbus_bus::{Backoff, Broker, Handler, Message, SubscribeOptions};

use super::{collector, recv};

/// How long a negative check ("nothing more arrives") listens.
const QUIET: Duration = Duration::from_millis(150);

fn payload(m: &Message) -> String {
    String::from_utf8(m.payload().to_vec()).unwrap()
}

/// Publish and subscribe work at all.
pub(crate) fn smoke<B: Broker>(b: &B) {
    let (h, rx) = collector();
    let _sub = b
        .subscribe("smoke", SubscribeOptions::default(), h)
        .unwrap();
    let id = b.publish(Message::new("smoke", "hi")).unwrap();
    let m = recv(&rx);
    assert_eq!(payload(&m), "hi");
    if id.0 != 0 {
        assert_eq!(m.id(), id);
    }
}

/// Every matching broadcast subscription gets each message exactly once; others get none.
pub(crate) fn broadcast_each_gets_once<B: Broker>(b: &B) {
    let mut rxs = Vec::new();
    let mut subs = Vec::new();
    for pattern in ["t.*", "t.x", "t.>"] {
        let (h, rx) = collector();
        subs.push(
            b.subscribe(pattern, SubscribeOptions::default(), h)
                .unwrap(),
        );
        rxs.push(rx);
    }
    let (h, other) = collector();
    subs.push(b.subscribe("u.x", SubscribeOptions::default(), h).unwrap());
    const N: usize = 50;
    for i in 0..N {
        b.publish(Message::new("t.x", i.to_string())).unwrap();
    }
    for rx in &rxs {
        let ids: HashSet<u64> = (0..N).map(|_| recv(rx).id().0).collect();
        assert_eq!(ids.len(), N, "a message came twice");
        assert!(
            rx.recv_timeout(QUIET).is_err(),
            "a message came more than once"
        );
    }
    assert!(other.try_recv().is_err());
}

/// A consumer group gives each message to exactly one member and spreads them.
pub(crate) fn group_exactly_once_and_spread<B: Broker>(b: &B) {
    const N: u64 = 400;
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let counts: Arc<Vec<AtomicU64>> = Arc::new((0..2).map(|_| AtomicU64::new(0)).collect());
    let mut subs = Vec::new();
    for m in 0..2 {
        let (seen, counts) = (seen.clone(), counts.clone());
        let handler = Handler::new(move |msg| {
            let until = Instant::now() + Duration::from_micros(200);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            seen.lock().unwrap().push(msg.id().0);
            counts[m].fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        let opts = SubscribeOptions::group("g").with_max_in_flight(8);
        subs.push(b.subscribe("jobs.spread", opts, handler).unwrap());
    }
    for i in 0..N {
        b.publish(Message::new("jobs.spread", i.to_string()))
            .unwrap();
    }
    super::wait_until("every group message", || {
        seen.lock().unwrap().len() as u64 >= N
    });
    // Not a wait for a condition: a quiet window in which a second delivery of any message,
    // already queued or in flight, would arrive and be counted below.
    std::thread::sleep(QUIET);
    let seen = seen.lock().unwrap();
    let unique: HashSet<u64> = seen.iter().copied().collect();
    assert_eq!(seen.len() as u64, N, "a group message came twice");
    assert_eq!(unique.len() as u64, N);
    for c in counts.iter() {
        assert!(c.load(Ordering::SeqCst) >= N / 20, "a member stayed idle");
    }
}

/// A group keeps its messages while it has no member and delivers them, in order, to the next.
pub(crate) fn group_retention_while_no_member<B: Broker>(b: &B) {
    let (h, rx) = collector();
    let first = b
        .subscribe("keep", SubscribeOptions::group("k"), h)
        .unwrap();
    first.unsubscribe();
    for i in 0..10 {
        b.publish(Message::new("keep", i.to_string())).unwrap();
    }
    assert!(rx.try_recv().is_err());
    let (h, rx) = collector();
    let _second = b
        .subscribe("keep", SubscribeOptions::group("k"), h)
        .unwrap();
    let got: Vec<String> = (0..10).map(|_| payload(&recv(&rx))).collect();
    assert_eq!(got, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());
}

/// An un-acked manual delivery comes again after the ack wait with the attempt raised.
pub(crate) fn manual_ack_redelivery<B: Broker>(b: &B) {
    let (h, rx) = collector();
    let wait = Duration::from_millis(100);
    let opts = SubscribeOptions::group("m")
        .manual_ack()
        .with_ack_wait(wait)
        .with_backoff(Backoff::none());
    let _sub = b.subscribe("manual", opts, h).unwrap();
    let t0 = Instant::now();
    b.publish(Message::new("manual", "x")).unwrap();
    let first = recv(&rx);
    assert_eq!(first.attempt(), 1);
    let second = recv(&rx);
    assert!(t0.elapsed() >= wait, "re-delivered before the ack wait");
    assert_eq!(second.id(), first.id());
    assert_eq!(second.attempt(), 2);
    b.ack(second.delivery_id().unwrap()).unwrap();
    assert!(
        rx.recv_timeout(wait * 2).is_err(),
        "acked message came back"
    );
}

/// A nacked delivery comes again with the attempt raised.
pub(crate) fn nack_redelivery<B: Broker>(b: &B) {
    let (h, rx) = collector();
    let opts = SubscribeOptions::default()
        .manual_ack()
        .with_backoff(Backoff::none());
    let _sub = b.subscribe("nacked", opts, h).unwrap();
    b.publish(Message::new("nacked", "x")).unwrap();
    let first = recv(&rx);
    b.nack(first.delivery_id().unwrap(), true).unwrap();
    let second = recv(&rx);
    assert_eq!(second.id(), first.id());
    assert_eq!(second.attempt(), 2);
    b.ack(second.delivery_id().unwrap()).unwrap();
}

/// A message that fails its maximum attempts goes to the dead-letter topic.
pub(crate) fn dead_letter_after_max_attempts<B: Broker>(b: &B) {
    let (dead_h, dead_rx) = collector();
    let _dead = b
        .subscribe("dead.>", SubscribeOptions::default(), dead_h)
        .unwrap();
    let attempts = Arc::new(AtomicU64::new(0));
    let a = attempts.clone();
    let opts = SubscribeOptions::group("d")
        .with_max_attempts(3)
        .with_backoff(Backoff::none());
    let _sub = b
        .subscribe(
            "jobs.fail",
            opts,
            Handler::new(move |_| {
                a.fetch_add(1, Ordering::SeqCst);
                Err("always fails".into())
            }),
        )
        .unwrap();
    b.publish(Message::new("jobs.fail", "img").with_header("trace", "t1"))
        .unwrap();
    let dead = recv(&dead_rx);
    assert_eq!(dead.topic(), "dead.jobs.fail");
    assert_eq!(&dead.payload()[..], b"img");
    assert_eq!(dead.header("trace"), Some("t1"));
    assert_eq!(dead.header("mixbus-attempts"), Some("3"));
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

/// One publisher's messages reach a subscriber in publish order.
pub(crate) fn ordering_of_one_publisher<B: Broker>(b: &B) {
    let (h, rx) = collector();
    let _sub = b
        .subscribe("order", SubscribeOptions::default(), h)
        .unwrap();
    const N: usize = 300;
    for i in 0..N {
        b.publish(Message::new("order", i.to_string())).unwrap();
    }
    for i in 0..N {
        assert_eq!(payload(&recv(&rx)), i.to_string());
    }
}

/// `publish_slice` is `publish` of a message made from the topic and a copy of the payload:
/// the same deliveries, in the same order, mixed with messages; a bad topic is refused.
pub(crate) fn publish_slice_is_publish<B: Broker>(b: &B) {
    let (h, rx) = collector();
    let _sub = b
        .subscribe("slice.*", SubscribeOptions::default(), h)
        .unwrap();
    let mut buf = Vec::new();
    for i in 0..100 {
        buf.clear();
        buf.extend_from_slice(i.to_string().as_bytes());
        let topic = if i % 2 == 0 {
            "slice.even"
        } else {
            "slice.odd"
        };
        if i % 10 == 9 {
            b.publish(Message::new(topic, buf.clone())).unwrap();
        } else {
            b.publish_slice(topic, &buf).unwrap();
        }
    }
    // Larger than a small publish: taken apart from the buffer all the same.
    let big = vec![7u8; 5000];
    b.publish_slice("slice.big", &big).unwrap();
    for i in 0..100 {
        let m = recv(&rx);
        assert_eq!(payload(&m), i.to_string());
        assert_eq!(
            m.topic(),
            if i % 2 == 0 {
                "slice.even"
            } else {
                "slice.odd"
            }
        );
        assert!(m.headers().is_empty());
    }
    let m = recv(&rx);
    assert_eq!((m.topic(), &m.payload()[..]), ("slice.big", &big[..]));
    assert!(b.publish_slice("slice..bad", b"x").is_err());
    assert!(b.publish_slice("", b"x").is_err());
}

/// After close, publish and subscribe fail.
pub(crate) fn close_rejects_publish<B: Broker>(b: &B) {
    let (h, rx) = collector();
    let _sub = b
        .subscribe("closing", SubscribeOptions::default(), h)
        .unwrap();
    b.publish(Message::new("closing", "before")).unwrap();
    assert_eq!(payload(&recv(&rx)), "before");
    let report = b.close(Duration::from_secs(5));
    assert!(!report.timed_out, "{report}");
    assert!(b.publish(Message::new("closing", "after")).is_err());
    assert!(
        b.subscribe(
            "closing",
            SubscribeOptions::default(),
            Handler::new(|_| Ok(()))
        )
        .is_err()
    );
}
