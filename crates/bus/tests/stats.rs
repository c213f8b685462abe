//! `StatsCollector`: counts per topic and in total, queue depth, active handlers, a table.

mod support;

use std::sync::Arc;
use std::time::Duration;

use mixbus_bus::{
    Backoff, Broker, Handler, Message, StatsCollector, StatsSnapshot, SubscribeOptions,
};
use support::{Recorder, broker, remote, server, wait_until};

/// Nothing is queued or running any more: every depth and the handler count are back to zero.
fn assert_drained(snap: &StatsSnapshot) {
    assert_eq!(snap.total.depth, 0);
    assert_eq!(snap.active_dispatch, 0);
    assert!(
        snap.queues.iter().all(|q| q.depth == 0),
        "{:?}",
        snap.queues
    );
}

#[test]
fn smoke() {
    let stats = StatsCollector::new();
    let snap = stats.snapshot();
    assert_eq!(snap.total.published, 0);
    assert!(snap.to_string().contains("topic"));
}

#[test]
fn counts_depth_and_table() {
    let broker = broker(2);
    let stats = Arc::new(StatsCollector::new());
    let id = broker.add_listener(stats.clone());
    let (gate_tx, gate_rx) = flume::unbounded::<()>();
    let _slow = broker
        .subscribe(
            "orders.*",
            SubscribeOptions::group("billing"),
            Handler::new(move |_| {
                gate_rx.recv_timeout(support::WAIT)?;
                Ok(())
            }),
        )
        .unwrap();
    let opts = SubscribeOptions::default()
        .with_max_attempts(2)
        .with_backoff(Backoff::none());
    let _failing = broker
        .subscribe("orders.failed", opts, Handler::new(|_| Err("nope".into())))
        .unwrap();
    for _ in 0..5 {
        broker.publish(Message::new("orders.created", "x")).unwrap();
    }
    broker.publish(Message::new("orders.failed", "x")).unwrap();
    broker.publish(Message::new("nobody.home", "x")).unwrap();

    // One handler is blocked on the gate: the rest of the group's messages wait in its queue.
    wait_until("one active handler and a backlog", || {
        let s = stats.snapshot();
        s.active_dispatch == 1 && s.queue("billing") == Some(5)
    });
    let snap = stats.snapshot();
    assert_eq!(snap.topic("orders.created").unwrap().depth, 4);
    assert_eq!(snap.subscriptions, 2);
    let table = snap.to_string();
    for needle in [
        "orders.created",
        "orders.failed",
        "nobody.home",
        "queue billing",
        "active dispatch threads 1",
    ] {
        assert!(table.contains(needle), "{needle} missing from\n{table}");
    }

    for _ in 0..6 {
        gate_tx.send(()).unwrap();
    }
    broker.close(Duration::from_secs(10));
    let snap = stats.snapshot();
    let created = snap.topic("orders.created").unwrap();
    assert_eq!(
        (created.published, created.processed, created.depth),
        (5, 5, 0)
    );
    let failed = snap.topic("orders.failed").unwrap();
    // Two failing attempts, plus the billing group's copy (its pattern `orders.*` matches too).
    assert_eq!(
        (
            failed.dispatched,
            failed.failed,
            failed.redelivered,
            failed.dead_lettered
        ),
        (3, 2, 1, 1)
    );
    assert_eq!(failed.processed, 1);
    assert_eq!(snap.topic("nobody.home").unwrap().dropped, 1);
    // The dead letter was published too, and dropped: nobody listens on dead.orders.failed.
    assert_eq!(snap.topic("dead.orders.failed").unwrap().dropped, 1);
    assert_eq!(snap.total.published, 8);
    assert_eq!(snap.active_dispatch, 0);
    assert!(snap.total.published_per_sec >= 0.0);
    assert!(broker.remove_listener(id));
}

#[test]
fn counts_from_many_threads_add_up() {
    // More threads than get shards of their own (the later ones share one), each counting on
    // two topics, while the main thread takes snapshots.
    const THREADS: u64 = 100;
    const EACH: u64 = 1_000;
    let stats = Arc::new(StatsCollector::new());
    let broker = Arc::new(broker(1));
    broker.add_listener(stats.clone());
    let _sub = broker
        .subscribe(
            "many.*",
            SubscribeOptions::default(),
            Handler::new(|_| Ok(())),
        )
        .unwrap();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let broker = broker.clone();
            std::thread::spawn(move || {
                for i in 0..EACH {
                    let topic = if i % 2 == 0 { "many.even" } else { "many.odd" };
                    broker
                        .publish(Message::new(topic, format!("{t}/{i}")))
                        .unwrap();
                }
            })
        })
        .collect();
    while workers.iter().any(|w| !w.is_finished()) {
        let _ = stats.snapshot();
        std::thread::yield_now();
    }
    for w in workers {
        w.join().unwrap();
    }
    wait_until("every message processed", || {
        stats.snapshot().total.processed == THREADS * EACH
    });
    let snap = stats.snapshot();
    assert_eq!(snap.total.published, THREADS * EACH);
    assert_eq!(
        snap.topic("many.even").unwrap().published,
        THREADS * EACH / 2
    );
    assert_eq!(
        snap.topic("many.odd").unwrap().dispatched,
        THREADS * EACH / 2
    );
    assert_drained(&snap);
}

#[test]
fn server_bursts_count_like_single_events() {
    // The server tells its listeners a burst at a time (`published_all`, `dispatched_all`, ...);
    // its own collector counts each run in one step, while `Recorder` takes the per-message
    // defaults. Both must see the same totals, and the depths must come back to zero.
    const N: u64 = 20_000;
    let server = server(1);
    let rec = Recorder::new();
    server.broker().add_listener(rec.clone());
    let subscriber = Arc::new(remote(&server));
    let acker = Arc::downgrade(&subscriber);
    let _group = subscriber
        .subscribe(
            "burst.*",
            SubscribeOptions::group("g").manual_ack(),
            Handler::new(move |m| {
                let acker = acker.upgrade().ok_or("client gone")?;
                acker.ack(m.delivery_id().expect("a delivery id"))?;
                Ok(())
            }),
        )
        .unwrap();
    let _all = subscriber
        .subscribe(
            "burst.>",
            SubscribeOptions::default(),
            Handler::new(|_| Ok(())),
        )
        .unwrap();
    let publisher = remote(&server);
    // Runs of one topic of different lengths, so bursts hold several runs.
    for i in 0..N {
        let topic = if (i / 7) % 3 == 0 {
            "burst.a"
        } else {
            "burst.b"
        };
        publisher
            .publish(Message::new(topic, i.to_string()))
            .unwrap();
    }
    wait_until("every delivery acked", || {
        Recorder::get(&rec.acked) == 2 * N && server.stats().bus.total.acked == 2 * N
    });
    let snap = server.stats().bus;
    assert_eq!(snap.total.published, N);
    assert_eq!(Recorder::get(&rec.published), N);
    assert_eq!(snap.total.dispatched, 2 * N);
    assert_eq!(Recorder::get(&rec.dispatched), 2 * N);
    assert_eq!(snap.total.processed, 2 * N);
    assert_eq!(Recorder::get(&rec.processed), 2 * N);
    let a = snap.topic("burst.a").unwrap().published;
    let b = snap.topic("burst.b").unwrap().published;
    assert_eq!(a + b, N);
    assert_eq!(a, (0..N).filter(|i| (i / 7) % 3 == 0).count() as u64);
    assert_drained(&snap);
}
