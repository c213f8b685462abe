//! A stats table printed while messages flow: a publisher thread sends orders and payments for
//! about a second, a consumer group and a broadcast auditor handle them, one in fifty payments
//! fails and is retried, and a `StatsCollector` snapshot is printed every 250 ms.
//!
//! ```text
//! cargo run --example stats-table
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use mixbus::bus::{
    Backoff, Broker, Error, Handler, InMemoryBroker, Message, StatsCollector, SubscribeOptions,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = Arc::new(InMemoryBroker::new()?);
    let stats = Arc::new(StatsCollector::new());
    broker.add_listener(stats.clone());

    let mut subs = Vec::new();
    for _ in 0..2 {
        subs.push(
            broker.subscribe(
                "shop.>",
                SubscribeOptions::group("fulfilment")
                    .with_backoff(Backoff::fixed(Duration::from_millis(20))),
                Handler::new(|m| {
                    if m.topic() == "shop.payments"
                        && m.attempt() == 1
                        && m.id().0.is_multiple_of(50)
                    {
                        return Err("payment gateway timeout".into());
                    }
                    Ok(())
                }),
            )?,
        );
    }
    subs.push(broker.subscribe(
        "shop.*",
        SubscribeOptions::broadcast(),
        Handler::new(|_| Ok(())),
    )?);

    let running = Arc::new(AtomicBool::new(true));
    let publisher = {
        let broker = broker.clone();
        let running = running.clone();
        thread::spawn(move || -> Result<u64, Error> {
            let mut sent = 0u64;
            let until = Instant::now() + Duration::from_secs(1);
            while Instant::now() < until && running.load(Ordering::Relaxed) {
                let topic = if sent.is_multiple_of(3) {
                    "shop.payments"
                } else {
                    "shop.orders"
                };
                match broker.publish(Message::new(topic, format!("#{sent}"))) {
                    Ok(_) => sent += 1,
                    Err(Error::QueueFull { .. }) => thread::yield_now(),
                    Err(e) => return Err(e),
                }
                if sent.is_multiple_of(64) {
                    thread::sleep(Duration::from_micros(200));
                }
            }
            Ok(sent)
        })
    };

    while !publisher.is_finished() {
        thread::sleep(Duration::from_millis(250));
        println!("{}\n", stats.snapshot());
    }
    running.store(false, Ordering::Relaxed);
    let sent = publisher.join().map_err(|_| "publisher panicked")??;
    // Close while the subscriptions are alive, so that queued re-deliveries are still handled.
    let report = broker.close(Duration::from_secs(5));
    drop(subs);
    println!(
        "final, after close ({report}); {sent} messages sent:\n{}",
        stats.snapshot()
    );
    Ok(())
}
