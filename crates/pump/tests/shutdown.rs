//! Shutdown: it runs queued work, reports what was left or cancelled, never hangs, and refuses
//! later posts; dropping the pump shuts it down too.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mixbus_pump::{Error, EventPump, FnTask, Next, OnceTask, PostError, Task};
use support::{Gate, PATIENCE, SLACK, busy, recv};

#[test]
fn smoke() {
    let pump = EventPump::new().unwrap();
    let report = pump.shutdown(PATIENCE);
    assert!(report.left.is_empty());
    assert!(report.cancelled.is_empty());
    assert!(!report.timed_out);
}

#[test]
fn a_task_that_never_finishes_is_left_and_shutdown_returns_in_time() {
    let pump = EventPump::new().unwrap();
    let (started_tx, started_rx) = flume::bounded(1);
    pump.post(FnTask::new("forever", move |_cx| {
        let _ = started_tx.try_send(());
        busy(Duration::from_micros(100));
        Next::Repost
    }))
    .unwrap();
    recv(&started_rx, "the endless task");
    let timeout = Duration::from_millis(300);
    let start = Instant::now();
    let report = pump.shutdown(timeout);
    let elapsed = start.elapsed();
    assert!(elapsed < timeout + SLACK, "shutdown took {elapsed:?}");
    assert!(
        report.left.iter().any(|n| n == "forever"),
        "report: {report:?}"
    );
}

#[test]
fn shutdown_runs_all_queued_work() {
    let pump = EventPump::new().unwrap();
    let count = Arc::new(AtomicU32::new(0));
    // Hold the pump until shutdown has begun, so the work below is surely still queued.
    pump.post_fn("gate", |cx| {
        let deadline = Instant::now() + PATIENCE;
        while !cx.handle().is_closed() && Instant::now() < deadline {
            std::hint::spin_loop();
        }
    })
    .unwrap();
    for _ in 0..1_000 {
        let count = count.clone();
        pump.post_fn("count", move |_cx| {
            count.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
    }
    let report = pump.shutdown(PATIENCE);
    assert_eq!(count.load(Ordering::Relaxed), 1_000);
    assert!(report.left.is_empty(), "report: {report:?}");
    assert!(!report.timed_out);
    assert!(report.ran >= 1_001);
}

#[test]
fn a_pending_timer_is_reported_cancelled() {
    let pump = EventPump::new().unwrap();
    let (tx, rx) = flume::unbounded();
    let timer = pump
        .post_after(
            Duration::from_secs(60),
            OnceTask::new("later", move |_cx| tx.send(()).unwrap()),
        )
        .unwrap();
    let report = pump.shutdown(PATIENCE);
    assert_eq!(report.cancelled, ["later"]);
    assert!(report.left.is_empty());
    assert!(!timer.cancel(), "shutdown already cancelled the timer");
    assert!(!timer.has_fired());
    assert!(rx.try_recv().is_err());
}

#[test]
fn posting_after_shutdown_is_refused_with_the_task_back() {
    let pump = EventPump::new().unwrap();
    let handle = pump.handle();
    let _ = pump.shutdown(PATIENCE);
    assert!(handle.is_closed());
    match handle.post(FnTask::new("late", |_cx| Next::Done)) {
        Err(PostError::Closed(task)) => assert_eq!(task.name(), "late"),
        other => panic!("post after shutdown gave {other:?}"),
    }
    match handle.post_fn("late-fn", |_cx| {}) {
        Err(PostError::Closed(task)) => assert!(task.into_inner().is_some()),
        other => panic!("post_fn after shutdown gave {other:?}"),
    }
    assert!(matches!(
        handle.post_after(Duration::ZERO, OnceTask::new("late", |_cx| {})),
        Err(PostError::Closed(_))
    ));
    assert!(matches!(
        handle.offload("late", || (), |(), _cx| {}),
        Err(Error::Closed)
    ));
}

#[test]
fn a_run_that_blocks_forever_does_not_hang_shutdown() {
    let pump = EventPump::new().unwrap();
    let gate = Gate::new();
    let (started_tx, started_rx) = flume::bounded(1);
    let g = gate.clone();
    pump.post_fn("stuck", move |_cx| {
        started_tx.send(()).unwrap();
        // Released at the end of the test; bounded so the thread never outlives the run for long.
        g.spin(Duration::from_secs(60));
    })
    .unwrap();
    recv(&started_rx, "the stuck task");
    let timeout = Duration::from_millis(300);
    let start = Instant::now();
    let report = pump.shutdown(timeout);
    let elapsed = start.elapsed();
    gate.open();
    assert!(elapsed < timeout + SLACK, "shutdown took {elapsed:?}");
    assert!(report.timed_out, "report: {report:?}");
}

#[test]
fn dropping_the_pump_shuts_it_down() {
    let pump = EventPump::new().unwrap();
    let handle = pump.handle();
    let count = Arc::new(AtomicU32::new(0));
    for _ in 0..100 {
        let count = count.clone();
        pump.post_fn("count", move |_cx| {
            count.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
    }
    drop(pump);
    assert!(handle.is_closed());
    assert_eq!(count.load(Ordering::Relaxed), 100, "drop runs queued work");
    assert!(matches!(
        handle.post_fn("late", |_cx| {}),
        Err(PostError::Closed(_))
    ));
}
