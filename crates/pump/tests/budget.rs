//! Fairness: a long task that yields on its budget lets later tasks run, and overruns are counted.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use mixbus_pump::{EventPump, FnTask, Next, PumpConfig};
use support::{Gate, PATIENCE, busy, recv};

#[test]
fn smoke() {
    let pump = EventPump::new().unwrap();
    let (tx, rx) = flume::unbounded();
    let mut runs = 0;
    pump.post(FnTask::new("thrice", move |_cx| {
        runs += 1;
        if runs < 3 {
            Next::Repost
        } else {
            tx.send(runs).unwrap();
            Next::Done
        }
    }))
    .unwrap();
    assert_eq!(recv(&rx, "the third run"), 3);
}

#[test]
fn a_long_task_lets_a_later_task_run_before_it_finishes() {
    const ITEMS: u32 = 10_000;
    let pump = EventPump::new().unwrap();
    let done = Arc::new(AtomicU32::new(0));
    let (long_tx, long_rx) = flume::bounded(1);
    let (short_tx, short_rx) = flume::bounded(1);
    // Hold the pump so that both tasks are queued before either runs.
    let gate = Gate::new();
    let g = gate.clone();
    pump.post_fn("gate", move |_cx| assert!(g.spin(PATIENCE)))
        .unwrap();
    {
        let done = done.clone();
        let mut runs = 0u32;
        pump.post(FnTask::new("long", move |cx| {
            runs += 1;
            loop {
                // Each item costs a few microseconds, so the job needs many budgets.
                busy(Duration::from_micros(3));
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n == ITEMS {
                    long_tx.send(runs).unwrap();
                    return Next::Done;
                }
                if cx.should_yield() {
                    return Next::Repost;
                }
            }
        }))
        .unwrap();
    }
    {
        let done = done.clone();
        pump.post_fn("short", move |_cx| {
            short_tx.send(done.load(Ordering::Relaxed)).unwrap();
        })
        .unwrap();
    }
    gate.open();
    let seen = recv(&short_rx, "the short task");
    let runs = recv(&long_rx, "the long task to finish");
    assert!(
        seen > 0 && seen < ITEMS,
        "the short task ran after {seen} of {ITEMS} items"
    );
    assert!(runs > 1, "the long task finished in {runs} run(s)");
    assert_eq!(done.load(Ordering::Relaxed), ITEMS);
    assert!(pump.stats().reposts >= u64::from(runs - 1));
}

#[test]
fn an_overrun_is_counted() {
    let config = PumpConfig::default().with_overrun_threshold(Duration::from_millis(5));
    let pump = EventPump::with_config(config).unwrap();
    let (tx, rx) = flume::unbounded();
    pump.post_fn("hog", |_cx| busy(Duration::from_millis(20)))
        .unwrap();
    // Read by the next task, before it can overrun itself: on a loaded machine even a quick
    // task may be preempted for longer than the threshold.
    let handle = pump.handle();
    pump.post_fn("quick", move |_cx| {
        tx.send(handle.stats().overruns).unwrap()
    })
    .unwrap();
    assert_eq!(recv(&rx, "the task after the hog"), 1);
}
