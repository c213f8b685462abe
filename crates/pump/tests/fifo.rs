//! FIFO order: posts from each thread run in posting order, and posts from the pump thread queue
//! behind work already posted, without waking the pump.

mod support;

use std::sync::{Arc, Mutex};
use std::thread;

use mixbus_pump::{EventPump, Next};
use support::{Gate, PATIENCE, recv};

#[test]
fn smoke() {
    let pump = EventPump::new().unwrap();
    let (tx, rx) = flume::unbounded();
    pump.post_fn("hello", move |_cx| tx.send(7).unwrap())
        .unwrap();
    assert_eq!(recv(&rx, "the posted task"), 7);
}

#[derive(Default)]
struct Seen {
    next: [u32; THREADS],
    total: u32,
    bad: Option<String>,
}

const THREADS: usize = 4;
const PER_THREAD: u32 = 25_000;

#[test]
fn posts_from_four_threads_run_in_each_threads_order() {
    let pump = EventPump::new().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (done_tx, done_rx) = flume::bounded(1);
    let posters: Vec<_> = (0..THREADS)
        .map(|t| {
            let handle = pump.handle();
            let seen = seen.clone();
            let done_tx = done_tx.clone();
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let seen = seen.clone();
                    let done_tx = done_tx.clone();
                    handle
                        .post_fn("fifo", move |_cx| {
                            let mut s = seen.lock().unwrap();
                            if s.next[t] != i && s.bad.is_none() {
                                s.bad = Some(format!(
                                    "thread {t}: post {i} ran when {} was expected",
                                    s.next[t]
                                ));
                            }
                            s.next[t] = i + 1;
                            s.total += 1;
                            if s.total == THREADS as u32 * PER_THREAD {
                                done_tx.send(()).unwrap();
                            }
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    for p in posters {
        p.join().unwrap();
    }
    recv(&done_rx, "all 100,000 posts");
    let s = seen.lock().unwrap();
    assert_eq!(s.bad, None);
    assert_eq!(s.next, [PER_THREAD; THREADS]);
    assert_eq!(s.total, THREADS as u32 * PER_THREAD);
}

#[test]
fn posts_from_the_pump_thread_queue_behind_earlier_work_without_a_wakeup() {
    let pump = EventPump::new().unwrap();
    let (order_tx, order_rx) = flume::unbounded::<&'static str>();
    let (started_tx, started_rx) = flume::bounded(1);
    let (check_tx, check_rx) = flume::bounded(1);
    let gate = Gate::new();
    {
        let gate = gate.clone();
        let order_tx = order_tx.clone();
        pump.post_fn("gate", move |cx| {
            order_tx.send("gate").unwrap();
            started_tx.send(()).unwrap();
            // The test posts "b" and "c" while this run spins: they are queued before the two
            // posts below.
            let opened = gate.spin(PATIENCE);
            let before = cx.handle().stats().wakeups;
            let tx = order_tx.clone();
            cx.post_fn("local", move |_cx| tx.send("local").unwrap());
            let tx = order_tx.clone();
            cx.handle()
                .post_fn("handle", move |_cx| tx.send("handle").unwrap())
                .unwrap();
            let after = cx.handle().stats().wakeups;
            check_tx
                .send((opened, cx.handle().is_pump_thread(), before, after))
                .unwrap();
        })
        .unwrap();
    }
    recv(&started_rx, "the gate task to start");
    for name in ["b", "c"] {
        let tx = order_tx.clone();
        pump.post_fn(name, move |_cx| tx.send(name).unwrap())
            .unwrap();
    }
    gate.open();
    let (opened, on_pump, before, after) = recv(&check_rx, "the gate task's checks");
    assert!(opened, "the gate never opened");
    assert!(on_pump, "a task runs on the pump thread");
    assert_eq!(before, after, "posting from the pump thread woke it");
    let order: Vec<_> = (0..5).map(|_| recv(&order_rx, "the order")).collect();
    assert_eq!(order, ["gate", "b", "c", "local", "handle"]);
}

#[test]
fn a_repost_goes_behind_work_posted_during_the_run() {
    let pump = EventPump::new().unwrap();
    let (order_tx, order_rx) = flume::unbounded::<&'static str>();
    let (started_tx, started_rx) = flume::bounded(1);
    let gate = Gate::new();
    {
        let gate = gate.clone();
        let order_tx = order_tx.clone();
        let mut runs = 0;
        pump.post(mixbus_pump::FnTask::new("twice", move |_cx| {
            runs += 1;
            order_tx
                .send(if runs == 1 { "first" } else { "second" })
                .unwrap();
            if runs == 1 {
                started_tx.send(()).unwrap();
                assert!(gate.spin(PATIENCE), "the gate never opened");
                Next::Repost
            } else {
                Next::Done
            }
        }))
        .unwrap();
    }
    recv(&started_rx, "the first run");
    let tx = order_tx.clone();
    pump.post_fn("other", move |_cx| tx.send("other").unwrap())
        .unwrap();
    gate.open();
    let order: Vec<_> = (0..3).map(|_| recv(&order_rx, "the order")).collect();
    assert_eq!(order, ["first", "other", "second"]);
}
