//! Broadcast delivery: every matching subscription gets each message once, in publish order.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mixbus_bus::{Broker, Handler, Message, SubscribeOptions};
use support::{Recorder, broker, collector, recv, wait_until};

#[test]
fn smoke() {
    let broker = broker(2);
    let (handler, rx) = collector();
    let _sub = broker
        .subscribe("a.b", SubscribeOptions::default(), handler)
        .unwrap();
    let id = broker
        .publish(Message::new("a.b", "hi").with_header("k", "v"))
        .unwrap();
    let msg = recv(&rx);
    assert_eq!(msg.id(), id);
    assert_eq!(msg.topic(), "a.b");
    assert_eq!(&msg.payload()[..], b"hi");
    assert_eq!(msg.header("k"), Some("v"));
    assert_eq!(msg.attempt(), 1);
    assert!(msg.published_at() > std::time::UNIX_EPOCH);
    assert_eq!(msg.delivery_id().unwrap().message, id);
}

#[test]
fn handlers_run_on_named_dispatch_threads() {
    let broker = broker(2);
    let (tx, rx) = flume::unbounded();
    let _sub = broker
        .subscribe(
            "t",
            SubscribeOptions::default(),
            Handler::new(move |_| {
                tx.send(std::thread::current().name().map(str::to_owned))?;
                Ok(())
            }),
        )
        .unwrap();
    broker.publish(Message::new("t", "x")).unwrap();
    let name = rx.recv_timeout(support::WAIT).unwrap().unwrap();
    assert!(name.starts_with("mixbus-dispatch-"), "{name}");
}

#[test]
fn every_matching_subscription_gets_each_message_once() {
    let broker = broker(3);
    let (h1, rx1) = collector();
    let (h2, rx2) = collector();
    let (h3, rx3) = collector();
    let (h4, rx4) = collector();
    let _s1 = broker
        .subscribe("orders.*", SubscribeOptions::default(), h1)
        .unwrap();
    let _s2 = broker
        .subscribe("orders.>", SubscribeOptions::broadcast(), h2)
        .unwrap();
    let _s3 = broker
        .subscribe("orders.created", SubscribeOptions::default(), h3)
        .unwrap();
    let _s4 = broker
        .subscribe("payments.*", SubscribeOptions::default(), h4)
        .unwrap();
    for i in 0..100 {
        broker
            .publish(Message::new("orders.created", i.to_string()))
            .unwrap();
    }
    broker
        .publish(Message::new("orders.eu.created", "deep"))
        .unwrap();
    let report = broker.close(Duration::from_secs(10));
    assert!(!report.timed_out);
    assert_eq!(rx1.len(), 100);
    assert_eq!(rx2.len(), 101);
    assert_eq!(rx3.len(), 100);
    assert_eq!(rx4.len(), 0);
    assert_eq!(report.delivered, 301);
}

#[test]
fn message_without_subscriber_is_dropped_and_counted() {
    let broker = broker(1);
    let rec = Recorder::new();
    broker.add_listener(rec.clone());
    broker.publish(Message::new("nobody.home", "x")).unwrap();
    assert_eq!(Recorder::get(&rec.published), 1);
    assert_eq!(Recorder::get(&rec.dropped), 1);
}

#[test]
fn one_publisher_order_is_kept_per_subscriber() {
    let broker = broker(4);
    let (h1, rx1) = collector();
    let (h2, rx2) = collector();
    let _s1 = broker
        .subscribe("seq", SubscribeOptions::default(), h1)
        .unwrap();
    let _s2 = broker
        .subscribe("seq", SubscribeOptions::default(), h2)
        .unwrap();
    const N: u64 = 20_000;
    for i in 0..N {
        broker
            .publish(Message::new(
                "seq",
                Bytes::copy_from_slice(&i.to_be_bytes()),
            ))
            .unwrap();
    }
    for rx in [&rx1, &rx2] {
        for i in 0..N {
            let msg = recv(rx);
            let got = u64::from_be_bytes(msg.payload()[..8].try_into().unwrap());
            assert_eq!(got, i, "out of order");
        }
    }
}

#[test]
fn fan_out_shares_the_payload() {
    let broker = broker(2);
    let (h1, rx1) = collector();
    let (h2, rx2) = collector();
    let _s1 = broker
        .subscribe("big", SubscribeOptions::default(), h1)
        .unwrap();
    let _s2 = broker
        .subscribe("big", SubscribeOptions::default(), h2)
        .unwrap();
    let payload = Bytes::from(vec![7u8; 64 * 1024]);
    let ptr = payload.as_ptr();
    broker.publish(Message::new("big", payload)).unwrap();
    let (a, b) = (recv(&rx1), recv(&rx2));
    assert!(a.shares_payload_with(&b));
    assert_eq!(a.payload().as_ptr(), ptr);
}

#[test]
fn unsubscribe_and_drop_end_a_subscription() {
    let broker = broker(2);
    let rec = Recorder::new();
    broker.add_listener(rec.clone());
    let (h1, rx1) = collector();
    let (h2, rx2) = collector();
    let s1 = broker
        .subscribe("t", SubscribeOptions::default(), h1)
        .unwrap();
    let s2 = broker
        .subscribe("t", SubscribeOptions::default(), h2)
        .unwrap();
    assert_eq!(Recorder::get(&rec.subscribed), 2);
    broker.publish(Message::new("t", "1")).unwrap();
    recv(&rx1);
    recv(&rx2);
    s1.unsubscribe();
    drop(s2);
    wait_until("two unsubscribed events", || {
        Recorder::get(&rec.unsubscribed) == 2
    });
    broker.publish(Message::new("t", "2")).unwrap();
    assert_eq!(Recorder::get(&rec.dropped), 1);
    assert!(rx1.try_recv().is_err() && rx2.try_recv().is_err());
}

#[test]
fn handler_can_use_the_broker() {
    let broker = Arc::new(broker(2));
    let (h, rx) = collector();
    let _sink = broker
        .subscribe("out", SubscribeOptions::default(), h)
        .unwrap();
    let b = Arc::downgrade(&broker);
    let _relay = broker
        .subscribe(
            "in",
            SubscribeOptions::default(),
            Handler::new(move |m| {
                if let Some(b) = b.upgrade() {
                    b.publish(Message::new("out", m.payload().clone()))?;
                }
                Ok(())
            }),
        )
        .unwrap();
    broker.publish(Message::new("in", "relayed")).unwrap();
    assert_eq!(&recv(&rx).payload()[..], b"relayed");
}
