//! Failed deliveries: a handler error or panic is a failure, is retried, and the dispatch threads
//! survive; a panicking listener does not break the broker.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mixbus_bus::{Backoff, Broker, BrokerListener, Handler, Message, SubscribeOptions};
use support::{Recorder, broker, collector, recv, wait_until};

#[test]
fn smoke() {
    let broker = broker(1);
    let rec = Recorder::new();
    broker.add_listener(rec.clone());
    let opts = SubscribeOptions::default().with_max_attempts(1);
    let _sub = broker
        .subscribe("f", opts, Handler::new(|_| Err("boom".into())))
        .unwrap();
    broker.publish(Message::new("f", "x")).unwrap();
    wait_until("a failure", || Recorder::get(&rec.failed) == 1);
    assert_eq!(rec.errors.lock().unwrap()[0], "boom");
}

#[test]
fn error_and_panic_are_failures_that_are_retried_and_the_thread_survives() {
    // One dispatch thread: if a panic killed it, nothing after would be delivered.
    let broker = broker(1);
    let rec = Recorder::new();
    broker.add_listener(rec.clone());
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let (ok_h, ok_rx) = collector();
    let opts = SubscribeOptions::default()
        .with_max_attempts(3)
        .with_backoff(Backoff::none());
    let _sub = broker
        .subscribe(
            "f",
            opts,
            Handler::new(move |m| match c.fetch_add(1, Ordering::SeqCst) {
                0 => Err(format!("error on attempt {}", m.attempt()).into()),
                1 => panic!("panic on attempt {}", m.attempt()),
                _ => Ok(()),
            }),
        )
        .unwrap();
    let _ok = broker
        .subscribe("f", SubscribeOptions::default(), ok_h)
        .unwrap();
    broker.publish(Message::new("f", "x")).unwrap();
    wait_until("the third attempt", || calls.load(Ordering::SeqCst) == 3);
    wait_until("processed twice", || Recorder::get(&rec.processed) == 2);
    assert_eq!(Recorder::get(&rec.failed), 2);
    assert_eq!(Recorder::get(&rec.redelivered), 2);
    let errors = rec.errors.lock().unwrap().clone();
    assert_eq!(errors[0], "error on attempt 1");
    assert_eq!(errors[1], "handler panicked: panic on attempt 2");
    recv(&ok_rx);
    // The thread is still there.
    broker.publish(Message::new("f", "y")).unwrap();
    assert_eq!(&recv(&ok_rx).payload()[..], b"y");
}

#[test]
fn failed_manual_delivery_is_redelivered() {
    let broker = broker(2);
    let (tx, rx) = flume::unbounded();
    let opts = SubscribeOptions::group("w")
        .manual_ack()
        .with_backoff(Backoff::none());
    let b = Arc::new(broker);
    let weak = Arc::downgrade(&b);
    let _sub = b
        .subscribe(
            "f",
            opts,
            Handler::new(move |m| {
                tx.send(m.attempt())?;
                if m.attempt() == 1 {
                    return Err("first try fails".into());
                }
                if let Some(b) = weak.upgrade() {
                    b.ack(m.delivery_id().unwrap())?;
                }
                Ok(())
            }),
        )
        .unwrap();
    b.publish(Message::new("f", "x")).unwrap();
    assert_eq!(rx.recv_timeout(support::WAIT).unwrap(), 1);
    assert_eq!(rx.recv_timeout(support::WAIT).unwrap(), 2);
    let report = b.close(Duration::from_secs(5));
    assert_eq!(report.unacked, 0);
    assert_eq!(report.delivered, 2);
}

#[derive(Debug)]
struct Panicky;

impl BrokerListener for Panicky {
    fn published(&self, _m: &Message) {
        panic!("listener bug");
    }
    fn dispatched(&self, _m: &Message, _s: &mixbus_bus::SubscriptionInfo) {
        panic!("listener bug");
    }
}

#[test]
fn a_panicking_listener_does_not_break_the_broker() {
    let broker = broker(1);
    broker.add_listener(Arc::new(Panicky));
    let rec = Recorder::new();
    broker.add_listener(rec.clone());
    let (h, rx) = collector();
    let _sub = broker
        .subscribe("l", SubscribeOptions::default(), h)
        .unwrap();
    for i in 0..3 {
        broker.publish(Message::new("l", i.to_string())).unwrap();
    }
    for _ in 0..3 {
        recv(&rx);
    }
    assert_eq!(Recorder::get(&rec.published), 3);
    wait_until("three processed", || Recorder::get(&rec.processed) == 3);
}
