//! Message bus benches: publish-to-handler throughput through the in-memory broker, against a
//! flume channel carrying the same messages between the same threads, and fan-out cost by payload
//! size. Run with `cargo bench --bench bus`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use mixbus::bus::{
    Broker, Bytes, Handler, InMemoryBroker, InMemoryConfig, Message, SubscribeOptions,
};

/// Payload size of the publish-to-handler cases.
const SIZE: usize = 64;
/// Payload sizes of the fan-out cases: the cost must not grow with them.
const FANOUT_SIZES: [usize; 2] = [64, 64 * 1024];
/// Broadcast subscribers in the fan-out cases.
const FANOUT: usize = 4;
/// Topic used by every case.
const TOPIC: &str = "bench.topic";

/// Waits until `counter` reaches `target`.
fn wait_for(counter: &AtomicU64, target: u64) {
    while counter.load(Ordering::Acquire) < target {
        std::hint::spin_loop();
        thread::yield_now();
    }
}

fn counting_handler(counter: &Arc<AtomicU64>) -> Handler {
    let counter = counter.clone();
    Handler::new(move |m| {
        black_box(m.payload().len());
        counter.fetch_add(1, Ordering::Release);
        Ok(())
    })
}

fn broker(threads: usize) -> Arc<InMemoryBroker> {
    let config = InMemoryConfig::default().with_dispatch_threads(threads);
    Arc::new(InMemoryBroker::with_config(config).expect("start broker"))
}

/// Publishes `iters` messages and returns the time until `counters` all saw them.
fn run(
    broker: &InMemoryBroker,
    payload: &Bytes,
    counters: &[Arc<AtomicU64>],
    iters: u64,
) -> Duration {
    let targets: Vec<u64> = counters
        .iter()
        .map(|c| c.load(Ordering::Acquire) + iters)
        .collect();
    let start = Instant::now();
    for _ in 0..iters {
        broker
            .publish(Message::new(TOPIC, payload.clone()))
            .expect("publish");
    }
    for (c, t) in counters.iter().zip(targets) {
        wait_for(c, t);
    }
    start.elapsed()
}

fn publish_to_handler(c: &mut Criterion) {
    let mut group = c.benchmark_group("bus");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(1));
    let payload = Bytes::from(vec![7u8; SIZE]);

    // Baseline: one flume channel carrying the same messages to one consumer thread.
    {
        let (tx, rx) = flume::unbounded::<Message>();
        let counter = Arc::new(AtomicU64::new(0));
        let c2 = counter.clone();
        let consumer = thread::spawn(move || {
            for m in rx.iter() {
                black_box(m.payload().len());
                c2.fetch_add(1, Ordering::Release);
            }
        });
        group.bench_function(BenchmarkId::new("flume_baseline", SIZE), |b| {
            b.iter_custom(|iters| {
                let target = counter.load(Ordering::Acquire) + iters;
                let start = Instant::now();
                for _ in 0..iters {
                    tx.send(Message::new(TOPIC, payload.clone())).expect("send");
                }
                wait_for(&counter, target);
                start.elapsed()
            });
        });
        drop(tx);
        consumer.join().expect("consumer");
    }

    // Auto ack: acked when the handler returns.
    {
        let broker = broker(1);
        let counter = Arc::new(AtomicU64::new(0));
        let _sub = broker
            .subscribe(
                TOPIC,
                SubscribeOptions::default(),
                counting_handler(&counter),
            )
            .expect("subscribe");
        group.bench_function(BenchmarkId::new("auto_ack", SIZE), |b| {
            b.iter_custom(|iters| run(&broker, &payload, std::slice::from_ref(&counter), iters));
        });
        broker.close(Duration::from_secs(5));
    }

    // Manual ack: the handler acks each delivery itself.
    {
        let broker = broker(1);
        let counter = Arc::new(AtomicU64::new(0));
        let weak = Arc::downgrade(&broker);
        let c2 = counter.clone();
        let opts = SubscribeOptions::default()
            .manual_ack()
            .with_max_in_flight(usize::MAX);
        let _sub = broker
            .subscribe(
                TOPIC,
                opts,
                Handler::new(move |m| {
                    if let (Some(b), Some(d)) = (weak.upgrade(), m.delivery_id()) {
                        b.ack(d)?;
                    }
                    c2.fetch_add(1, Ordering::Release);
                    Ok(())
                }),
            )
            .expect("subscribe");
        group.bench_function(BenchmarkId::new("manual_ack", SIZE), |b| {
            b.iter_custom(|iters| run(&broker, &payload, std::slice::from_ref(&counter), iters));
        });
        broker.close(Duration::from_secs(5));
    }
    group.finish();
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("bus_fanout");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Elements(1));
    for size in FANOUT_SIZES {
        // Baseline: the same message cloned into one flume channel per consumer thread.
        {
            let payload = Bytes::from(vec![7u8; size]);
            let counters: Vec<Arc<AtomicU64>> =
                (0..FANOUT).map(|_| Arc::new(AtomicU64::new(0))).collect();
            let mut senders = Vec::new();
            let mut consumers = Vec::new();
            for counter in &counters {
                let (tx, rx) = flume::unbounded::<Message>();
                let counter = counter.clone();
                senders.push(tx);
                consumers.push(thread::spawn(move || {
                    for m in rx.iter() {
                        black_box(m.payload().len());
                        counter.fetch_add(1, Ordering::Release);
                    }
                }));
            }
            group.bench_function(BenchmarkId::new("flume_baseline", size), |b| {
                b.iter_custom(|iters| {
                    let targets: Vec<u64> = counters
                        .iter()
                        .map(|c| c.load(Ordering::Acquire) + iters)
                        .collect();
                    let start = Instant::now();
                    for _ in 0..iters {
                        let m = Message::new(TOPIC, payload.clone());
                        for tx in &senders {
                            tx.send(m.clone()).expect("send");
                        }
                    }
                    for (c, t) in counters.iter().zip(targets) {
                        wait_for(c, t);
                    }
                    start.elapsed()
                });
            });
            drop(senders);
            for t in consumers {
                t.join().expect("consumer");
            }
        }
        {
            let payload = Bytes::from(vec![7u8; size]);
            let broker = broker(2);
            let counters: Vec<Arc<AtomicU64>> =
                (0..FANOUT).map(|_| Arc::new(AtomicU64::new(0))).collect();
            let _subs: Vec<_> = counters
                .iter()
                .map(|c| {
                    broker
                        .subscribe(TOPIC, SubscribeOptions::default(), counting_handler(c))
                        .expect("subscribe")
                })
                .collect();
            group.bench_function(BenchmarkId::new("broadcast4", size), |b| {
                b.iter_custom(|iters| run(&broker, &payload, &counters, iters));
            });
            broker.close(Duration::from_secs(5));
        }
    }
    group.finish();
}

// A hand-written `main` instead of `criterion_group!`, whose generated `pub fn` has no docs.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    publish_to_handler(&mut c);
    fan_out(&mut c);
    c.final_summary();
}
