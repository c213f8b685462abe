//! Closing: publish fails afterwards, in-flight work finishes within the timeout, the report
//! counts what was delivered and left, and a stuck handler cannot make close hang.

mod support;

use std::time::{Duration, Instant};

use mixbus_bus::{Broker, Error, Handler, Message, SubscribeOptions};
use support::{broker, collector, recv};

#[test]
fn smoke() {
    let broker = broker(2);
    let report = broker.close(Duration::from_secs(1));
    assert!(!report.timed_out);
    assert_eq!(report.delivered, 0);
    assert!(matches!(
        broker.publish(Message::new("a", "x")),
        Err(Error::Closed)
    ));
}

#[test]
fn publish_and_subscribe_after_close_fail_clearly() {
    let broker = broker(1);
    broker.close(Duration::from_secs(1));
    let err = broker.publish(Message::new("a", "x")).unwrap_err();
    assert_eq!(err.to_string(), "broker is closed");
    let res = broker.subscribe("a", SubscribeOptions::default(), Handler::new(|_| Ok(())));
    assert!(matches!(res, Err(Error::Closed)));
    // A second close returns the first report at once.
    assert!(!broker.close(Duration::from_secs(1)).timed_out);
}

#[test]
fn close_waits_for_queued_work_and_reports_it() {
    let broker = broker(2);
    let (h, rx) = collector();
    let _sub = broker
        .subscribe("a", SubscribeOptions::default(), h)
        .unwrap();
    for _ in 0..1000 {
        broker.publish(Message::new("a", "x")).unwrap();
    }
    let report = broker.close(support::WAIT);
    assert!(!report.timed_out);
    assert_eq!(rx.len(), 1000);
    assert_eq!(
        (report.delivered, report.unacked, report.pending),
        (1000, 0, 0)
    );
}

#[test]
fn unacked_deliveries_are_reported() {
    let broker = broker(2);
    let (h, rx) = collector();
    let _sub = broker
        .subscribe("b", SubscribeOptions::default().manual_ack(), h)
        .unwrap();
    broker.publish(Message::new("b", "never acked")).unwrap();
    recv(&rx);
    let report = broker.close(Duration::from_millis(100));
    assert!(
        report.timed_out,
        "an un-acked delivery keeps close waiting until the timeout"
    );
    assert_eq!(
        (report.delivered, report.unacked, report.pending),
        (1, 1, 0)
    );
}

#[test]
fn pending_messages_are_reported_when_time_runs_out() {
    let broker = broker(1);
    let (gate_tx, gate_rx) = flume::bounded::<()>(0);
    let (started_tx, started_rx) = flume::bounded(1);
    let _sub = broker
        .subscribe(
            "slow",
            SubscribeOptions::default(),
            Handler::new(move |_| {
                let _ = started_tx.try_send(());
                let _ = gate_rx.recv();
                Ok(())
            }),
        )
        .unwrap();
    for _ in 0..5 {
        broker.publish(Message::new("slow", "x")).unwrap();
    }
    started_rx.recv_timeout(support::WAIT).unwrap();
    let t0 = Instant::now();
    let report = broker.close(Duration::from_millis(100));
    assert!(t0.elapsed() < Duration::from_secs(5), "close hung");
    assert!(report.timed_out);
    assert_eq!(report.delivered, 1);
    assert_eq!(report.pending, 4);
    assert_eq!(report.running_handlers, 1);
    drop(gate_tx);
}

#[test]
fn a_handler_that_never_returns_does_not_make_close_hang() {
    let broker = broker(2);
    let (started_tx, started_rx) = flume::bounded(1);
    // Stands in for a handler that never returns; released after the test's asserts.
    let (forever_tx, forever_rx) = flume::bounded::<()>(0);
    let _sub = broker
        .subscribe(
            "stuck",
            SubscribeOptions::default(),
            Handler::new(move |_| {
                let _ = started_tx.try_send(());
                let _ = forever_rx.recv();
                Ok(())
            }),
        )
        .unwrap();
    broker.publish(Message::new("stuck", "x")).unwrap();
    started_rx.recv_timeout(support::WAIT).unwrap();
    let t0 = Instant::now();
    let report = broker.close(Duration::from_millis(200));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(200),
        "close returned before its timeout"
    );
    assert!(took < Duration::from_secs(5), "close hung for {took:?}");
    assert!(report.timed_out);
    assert_eq!(report.running_handlers, 1);
    drop(forever_tx);
}

/// Holds the first `failed` event until told to go on: the failed delivery is then out of
/// every queue and no handler is running, but its retry is not queued yet.
struct HoldFirstFailure {
    entered: flume::Sender<()>,
    go: flume::Receiver<()>,
    dead: std::sync::atomic::AtomicU64,
    once: std::sync::Once,
}

impl mixbus_bus::BrokerListener for HoldFirstFailure {
    fn failed(&self, _m: &Message, _s: &mixbus_bus::SubscriptionInfo, _e: &str) {
        self.once.call_once(|| {
            let _ = self.entered.send(());
            let _ = self.go.recv_timeout(support::WAIT);
        });
    }

    fn dead_lettered(&self, _m: &Message, _s: &mixbus_bus::SubscriptionInfo, _t: &str) {
        self.dead.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn close_waits_for_a_failed_delivery_to_be_retried() {
    // Regression: between a handler's failure and the queueing of its retry, close saw no
    // queued message and no running handler, took the broker for idle and stopped it: the
    // retry (and the dead letter after it) never happened.
    let broker = broker(1);
    let (entered_tx, entered) = flume::bounded(1);
    let (go, go_rx) = flume::bounded(1);
    let hold = std::sync::Arc::new(HoldFirstFailure {
        entered: entered_tx,
        go: go_rx,
        dead: Default::default(),
        once: std::sync::Once::new(),
    });
    broker.add_listener(hold.clone());
    let options = SubscribeOptions::default()
        .with_max_attempts(2)
        .with_backoff(mixbus_bus::Backoff::none());
    let _sub = broker
        .subscribe("t", options, Handler::new(|_| Err("nope".into())))
        .unwrap();
    broker.publish(Message::new("t", "x")).unwrap();
    entered
        .recv_timeout(support::WAIT)
        .expect("the first failure");
    std::thread::scope(|s| {
        let closing = s.spawn(|| broker.close(support::WAIT));
        // A correct close waits for the retry, so it cannot finish while the failure is held:
        // give it a bounded chance to (wrongly) finish, then let the failure go on.
        let deadline = Instant::now() + Duration::from_millis(300);
        while !closing.is_finished() && Instant::now() < deadline {
            std::thread::yield_now();
        }
        let finished_early = closing.is_finished();
        go.send(()).unwrap();
        let report = closing.join().unwrap();
        assert!(!finished_early, "close returned while a retry was pending");
        assert!(!report.timed_out, "{report:?}");
    });
    assert_eq!(hold.dead.load(std::sync::atomic::Ordering::SeqCst), 1);
}
