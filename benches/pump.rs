//! pump benches: remote posts against a flume channel baseline, and local re-posts.
//!
//! Run with `cargo bench --bench pump`. Ids read `pump/<case>/<messages>`.
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use mixbus::pump::{EventPump, FnTask, Next};

/// Messages per measured batch.
const N: u64 = 100_000;
/// Samples per case.
const SAMPLES: usize = 20;
/// Measurement time per case.
const MEASURE: Duration = Duration::from_secs(3);
/// How long a batch may take before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(30);

/// Counts remote posts on the pump thread.
static COUNT: AtomicU64 = AtomicU64::new(0);

/// The `pump` group: remote posts, their flume baseline and local re-posts, on one pump.
fn pump_group(c: &mut Criterion) -> EventPump {
    let pump = EventPump::new().expect("pump");
    let mut group = c.benchmark_group("pump");
    group.sample_size(SAMPLES).measurement_time(MEASURE);
    group.throughput(Throughput::Elements(N));

    group.bench_function(BenchmarkId::new("remote_post", N), |b| {
        let (done_tx, done_rx) = flume::bounded::<()>(1);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                for _ in 0..N - 1 {
                    pump.post_fn("count", |_cx| {
                        COUNT.fetch_add(1, Ordering::Relaxed);
                    })
                    .expect("post");
                }
                let done = done_tx.clone();
                pump.post_fn("last", move |_cx| {
                    COUNT.fetch_add(1, Ordering::Relaxed);
                    done.send(()).expect("signal");
                })
                .expect("post");
                done_rx.recv_timeout(PATIENCE).expect("the last post ran");
                total += start.elapsed();
            }
            total
        });
    });

    group.bench_function(BenchmarkId::new("flume_baseline", N), |b| {
        let (tx, rx) = flume::unbounded::<u64>();
        let (done_tx, done_rx) = flume::bounded::<()>(1);
        let receiver = thread::spawn(move || {
            let mut count = 0u64;
            for v in rx.iter() {
                count += black_box(v).min(1);
                if count == N {
                    count = 0;
                    done_tx.send(()).expect("signal");
                }
            }
        });
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                for i in 0..N {
                    tx.send(i | 1).expect("send");
                }
                done_rx
                    .recv_timeout(PATIENCE)
                    .expect("the receiver counted all");
                total += start.elapsed();
            }
            total
        });
        drop(tx);
        receiver.join().expect("receiver");
    });

    group.bench_function(BenchmarkId::new("local_repost", N), |b| {
        let (done_tx, done_rx) = flume::bounded::<()>(1);
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let done = done_tx.clone();
                let mut left = N;
                let start = Instant::now();
                pump.post(FnTask::new("repost", move |_cx| {
                    left -= 1;
                    if left == 0 {
                        done.send(()).expect("signal");
                        Next::Done
                    } else {
                        Next::Repost
                    }
                }))
                .expect("post");
                done_rx.recv_timeout(PATIENCE).expect("the task finished");
                total += start.elapsed();
            }
            total
        });
    });

    group.finish();
    pump
}

// A hand-written `main` instead of `criterion_group!`, whose generated `pub fn` has no docs.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    let pump = pump_group(&mut c);
    let report = pump.shutdown(Duration::from_secs(5));
    assert!(
        report.left.is_empty(),
        "work left after the benches: {report:?}"
    );
    c.final_summary();
}
