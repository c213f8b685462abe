//! A work queue: three competing consumers in one consumer group, with manual ack.
//! Consumer 0 is broken on purpose and fails every job it takes; each of its jobs is delivered
//! again (attempt + 1) and finished by another consumer.
//!
//! ```text
//! cargo run --example work-queue
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use mixbus::bus::{Backoff, Broker, Handler, InMemoryBroker, Message, SubscribeOptions};

const JOBS: usize = 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = Arc::new(InMemoryBroker::new()?);
    let done = Arc::new(AtomicUsize::new(0));
    let mut subs = Vec::new();
    for worker in 0..3 {
        let weak: Weak<InMemoryBroker> = Arc::downgrade(&broker);
        let done = done.clone();
        let options = SubscribeOptions::group("resizers")
            .manual_ack()
            .with_ack_wait(Duration::from_secs(2))
            .with_max_attempts(10)
            .with_backoff(Backoff::fixed(Duration::from_millis(5)));
        let handler = Handler::new(move |job| {
            let name = String::from_utf8_lossy(job.payload()).into_owned();
            if worker == 0 {
                println!(
                    "worker {worker}: {name} (attempt {}) fails on purpose",
                    job.attempt()
                );
                return Err("worker 0 is broken".into());
            }
            println!("worker {worker}: {name} done (attempt {})", job.attempt());
            done.fetch_add(1, Ordering::SeqCst);
            if let (Some(broker), Some(delivery)) = (weak.upgrade(), job.delivery_id()) {
                broker.ack(delivery)?;
            }
            Ok(())
        });
        subs.push(broker.subscribe("jobs.resize", options, handler)?);
    }

    for i in 0..JOBS {
        broker.publish(Message::new("jobs.resize", format!("image-{i:02}.png")))?;
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    while done.load(Ordering::SeqCst) < JOBS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = broker.close(Duration::from_secs(2));
    drop(subs);
    println!(
        "{} of {JOBS} jobs done; close: {report}",
        done.load(Ordering::SeqCst)
    );
    Ok(())
}
