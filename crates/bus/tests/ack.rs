//! Manual ack: ack wait expiry, nack with back-off, dead letters with history, unknown acks,
//! and the in-flight limit.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use mixbus_bus::{
    Backoff, Broker, DeliveryId, Handler, Message, MessageId, SubscribeOptions, SubscriptionId,
};
use support::{Recorder, broker, collector, recv, wait_until};

#[test]
fn smoke() {
    let broker = broker(2);
    let rec = Recorder::new();
    broker.add_listener(rec.clone());
    let (h, rx) = collector();
    let _sub = broker
        .subscribe("jobs", SubscribeOptions::default().manual_ack(), h)
        .unwrap();
    broker.publish(Message::new("jobs", "x")).unwrap();
    let msg = recv(&rx);
    broker.ack(msg.delivery_id().unwrap()).unwrap();
    assert_eq!(Recorder::get(&rec.acked), 1);
    let report = broker.close(Duration::from_secs(5));
    assert_eq!(report.unacked, 0);
}

#[test]
fn unacked_message_is_delivered_again_after_the_ack_wait() {
    let broker = broker(2);
    let (h, rx) = collector();
    let wait = Duration::from_millis(50);
    let opts = SubscribeOptions::group("w")
        .manual_ack()
        .with_ack_wait(wait)
        .with_backoff(Backoff::none());
    let _sub = broker.subscribe("jobs", opts, h).unwrap();
    let t0 = Instant::now();
    broker.publish(Message::new("jobs", "x")).unwrap();
    let first = recv(&rx);
    assert_eq!(first.attempt(), 1);
    let second = recv(&rx);
    assert!(t0.elapsed() >= wait, "re-delivered before the ack wait");
    assert_eq!(second.id(), first.id());
    assert_eq!(second.attempt(), 2);
    assert_eq!(second.header("mixbus-attempt-1"), Some("ack wait expired"));
    broker.ack(second.delivery_id().unwrap()).unwrap();
    // The late ack of the first delivery is now unknown: a no-op.
    broker.ack(first.delivery_id().unwrap()).unwrap();
    assert!(
        rx.recv_timeout(Duration::from_millis(150)).is_err(),
        "acked message came back"
    );
}

#[test]
fn nack_redelivers_after_the_backoff() {
    let broker = broker(2);
    let rec = Recorder::new();
    broker.add_listener(rec.clone());
    let (h, rx) = collector();
    let backoff = Duration::from_millis(40);
    let opts = SubscribeOptions::default()
        .manual_ack()
        .with_backoff(Backoff::fixed(backoff));
    let _sub = broker.subscribe("jobs", opts, h).unwrap();
    broker.publish(Message::new("jobs", "x")).unwrap();
    let first = recv(&rx);
    let t0 = Instant::now();
    broker.nack(first.delivery_id().unwrap(), true).unwrap();
    let second = recv(&rx);
    assert!(t0.elapsed() >= backoff, "re-delivered before the back-off");
    assert_eq!(second.attempt(), 2);
    assert_eq!(Recorder::get(&rec.redelivered), 1);
    broker.ack(second.delivery_id().unwrap()).unwrap();
}

#[test]
fn after_max_attempts_the_message_is_dead_lettered_with_its_history() {
    let broker = broker(2);
    let rec = Recorder::new();
    broker.add_listener(rec.clone());
    let (dead_h, dead_rx) = collector();
    let _dead = broker
        .subscribe("dead.>", SubscribeOptions::default(), dead_h)
        .unwrap();
    let (h, rx) = collector();
    let opts = SubscribeOptions::group("w")
        .manual_ack()
        .with_max_attempts(3)
        .with_backoff(Backoff::none());
    let _sub = broker.subscribe("jobs.resize", opts, h).unwrap();
    let id = broker
        .publish(Message::new("jobs.resize", "img").with_header("trace", "t1"))
        .unwrap();
    for attempt in 1..=3 {
        let m = recv(&rx);
        assert_eq!(m.attempt(), attempt);
        broker.nack(m.delivery_id().unwrap(), true).unwrap();
    }
    let dead = recv(&dead_rx);
    assert_eq!(dead.topic(), "dead.jobs.resize");
    assert_eq!(&dead.payload()[..], b"img");
    assert_eq!(dead.header("trace"), Some("t1"));
    assert_eq!(dead.header("mixbus-original-topic"), Some("jobs.resize"));
    assert_eq!(
        dead.header("mixbus-original-id"),
        Some(id.0.to_string().as_str())
    );
    assert_eq!(dead.header("mixbus-attempts"), Some("3"));
    assert_eq!(dead.header("mixbus-group"), Some("w"));
    assert_eq!(dead.header("mixbus-attempt-1"), Some("nacked"));
    assert_eq!(dead.header("mixbus-attempt-2"), Some("nacked"));
    assert_eq!(dead.header("mixbus-dead-reason"), Some("nacked"));
    assert_eq!(Recorder::get(&rec.dead_lettered), 1);
    assert_eq!(Recorder::get(&rec.redelivered), 2);
    assert!(rx.try_recv().is_err());
}

#[test]
fn nack_without_requeue_dead_letters_at_once() {
    let broker = broker(2);
    let (dead_h, dead_rx) = collector();
    let opts = SubscribeOptions::default().with_dead_letter_topic("graveyard");
    let _dead = broker
        .subscribe("graveyard", SubscribeOptions::default(), dead_h)
        .unwrap();
    let (h, rx) = collector();
    let _sub = broker.subscribe("jobs", opts.manual_ack(), h).unwrap();
    broker.publish(Message::new("jobs", "x")).unwrap();
    broker
        .nack(recv(&rx).delivery_id().unwrap(), false)
        .unwrap();
    let dead = recv(&dead_rx);
    assert_eq!(
        dead.header("mixbus-dead-reason"),
        Some("nacked without requeue")
    );
    assert_eq!(dead.header("mixbus-attempts"), Some("1"));
}

#[test]
fn ack_of_unknown_or_acked_delivery_is_a_no_op_the_listener_sees() {
    let broker = broker(2);
    let rec = Recorder::new();
    broker.add_listener(rec.clone());
    let (h, rx) = collector();
    let _sub = broker
        .subscribe("jobs", SubscribeOptions::default().manual_ack(), h)
        .unwrap();
    broker.publish(Message::new("jobs", "x")).unwrap();
    let d = recv(&rx).delivery_id().unwrap();
    broker.ack(d).unwrap();
    broker.ack(d).unwrap();
    let bogus = DeliveryId {
        subscription: SubscriptionId(999),
        message: MessageId(12345),
    };
    broker.ack(bogus).unwrap();
    broker.nack(bogus, true).unwrap();
    assert_eq!(*rec.ack_unknown.lock().unwrap(), vec![d, bogus, bogus]);
    assert_eq!(Recorder::get(&rec.acked), 1);
}

/// Takes ten deliveries, acking the oldest each time, checking that three and never more are
/// held un-acked at once; returns the last three, un-acked.
fn three_in_flight_of_ten(broker: &impl Broker, rx: &flume::Receiver<Message>) -> Vec<Message> {
    let mut held: Vec<Message> = (0..3).map(|_| recv(rx)).collect();
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "more than 3 in flight"
    );
    let mut seen = 3;
    while seen < 10 {
        let m = held.remove(0);
        broker.ack(m.delivery_id().unwrap()).unwrap();
        held.push(recv(rx));
        seen += 1;
        assert!(rx.try_recv().is_err(), "more than 3 in flight");
    }
    held
}

#[test]
fn max_in_flight_limits_unacked_deliveries() {
    let broker = Arc::new(broker(2));
    let (h, rx) = collector();
    let opts = SubscribeOptions::default()
        .manual_ack()
        .with_max_in_flight(3);
    let _sub = broker.subscribe("jobs", opts, h).unwrap();
    for i in 0..10 {
        broker.publish(Message::new("jobs", i.to_string())).unwrap();
    }
    let held = three_in_flight_of_ten(&*broker, &rx);
    for m in held {
        broker.ack(m.delivery_id().unwrap()).unwrap();
    }
    assert_eq!(broker.queue_depth(&format!("jobs#{}", _sub.id())), Some(0));
    let report = broker.close(Duration::from_secs(5));
    assert_eq!(
        (report.delivered, report.unacked, report.pending),
        (10, 0, 0)
    );
}

#[test]
fn max_in_flight_bytes_limits_unacked_payload() {
    use mixbus_bus::{InMemoryBroker, InMemoryConfig};
    // 4,000-byte payloads against a 10,000-byte bound: two fit under it, the third passes it.
    let config = InMemoryConfig::default()
        .with_dispatch_threads(2)
        .with_max_in_flight_bytes(10_000);
    let broker = InMemoryBroker::with_config(config).unwrap();
    let (h, rx) = collector();
    let opts = SubscribeOptions::default().manual_ack();
    let sub = broker.subscribe("big", opts, h).unwrap();
    for i in 0..10u8 {
        broker.publish(Message::new("big", vec![i; 4000])).unwrap();
    }
    let held = three_in_flight_of_ten(&broker, &rx);
    let order: Vec<u8> = held.iter().map(|m| m.payload()[0]).collect();
    assert_eq!(order, vec![7, 8, 9]);
    for m in held {
        broker.ack(m.delivery_id().unwrap()).unwrap();
    }
    assert_eq!(broker.queue_depth(&format!("big#{}", sub.id())), Some(0));
}

#[test]
fn the_window_follows_fast_acks_up_to_max_in_flight() {
    // A handler that acks at once, for the first ACKED messages: the window grows past its base
    // of 8,192 to max_in_flight (65,536 by default) as the acks come, so when they stop the
    // subscription holds 65,536, and the rest wait in its queue.
    const ACKED: usize = 100_000;
    const MORE: usize = 80_000;
    let broker = Arc::new(broker(1));
    let seen = Arc::new(AtomicUsize::new(0));
    let (weak, count) = (Arc::downgrade(&broker), seen.clone());
    let handler = Handler::new(move |m: &Message| {
        if count.fetch_add(1, Ordering::SeqCst) < ACKED
            && let Some(broker) = weak.upgrade()
        {
            broker.ack(m.delivery_id().unwrap()).unwrap();
        }
        Ok(())
    });
    let opts = SubscribeOptions::default().manual_ack();
    assert_eq!(opts.max_in_flight, 65_536);
    let sub = broker.subscribe("pace", opts, handler).unwrap();
    for _ in 0..ACKED + MORE {
        broker.publish(Message::new("pace", "x")).unwrap();
    }
    let queue = format!("pace#{}", sub.id());
    wait_until("65,536 held un-acked, the rest queued", || {
        seen.load(Ordering::SeqCst) == ACKED + 65_536
            && broker.queue_depth(&queue) == Some(MORE - 65_536)
    });
}
