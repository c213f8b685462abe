//! Timers: never early, fired in deadline order, and a cancelled timer never runs.

mod support;

use std::time::{Duration, Instant};

use mixbus_pump::EventPump;
use support::{Rng, SLACK, recv, seed};

#[test]
fn smoke() {
    let pump = EventPump::new().unwrap();
    let (tx, rx) = flume::unbounded();
    pump.post_after(
        Duration::from_millis(5),
        mixbus_pump::OnceTask::new("tick", move |_cx| tx.send(()).unwrap()),
    )
    .unwrap();
    recv(&rx, "the timer");
}

#[test]
fn a_timer_never_fires_early() {
    let pump = EventPump::new().unwrap();
    let (tx, rx) = flume::unbounded();
    let delays = [0u64, 1, 3, 10, 25, 50];
    let mut posted = Vec::new();
    for (i, ms) in delays.into_iter().enumerate() {
        let tx = tx.clone();
        let before = Instant::now();
        pump.post_after(
            Duration::from_millis(ms),
            mixbus_pump::OnceTask::new("timer", move |_cx| tx.send((i, Instant::now())).unwrap()),
        )
        .unwrap();
        posted.push(before);
    }
    for _ in 0..delays.len() {
        let (i, ran) = recv(&rx, "a timer");
        let due = posted[i] + Duration::from_millis(delays[i]);
        assert!(
            ran >= due,
            "timer {i} ({} ms) fired {:?} early",
            delays[i],
            due - ran
        );
        assert!(ran < due + SLACK, "timer {i} fired {:?} late", ran - due);
    }
}

#[test]
fn a_thousand_random_timers_fire_in_deadline_order() {
    const N: usize = 1_000;
    let guard = seed();
    let mut rng = Rng::new(guard.0);
    let pump = EventPump::new().unwrap();
    let (tx, rx) = flume::unbounded();
    // The pump computes each deadline inside the post, so it lies in [lo, hi].
    let mut bounds = Vec::with_capacity(N);
    for i in 0..N {
        let delay = Duration::from_micros(rng.below(200_000));
        let tx = tx.clone();
        let lo = Instant::now() + delay;
        pump.post_after(
            delay,
            mixbus_pump::OnceTask::new("random", move |_cx| tx.send(i).unwrap()),
        )
        .unwrap();
        let hi = Instant::now() + delay;
        bounds.push((lo, hi));
    }
    let order: Vec<usize> = (0..N).map(|_| recv(&rx, "a random timer")).collect();
    // Out of order means: a timer ran after one whose deadline is surely later than its own.
    let mut latest_lo: Option<(usize, Instant)> = None;
    for (pos, &i) in order.iter().enumerate() {
        if let Some((j, lo)) = latest_lo {
            assert!(
                bounds[i].1 >= lo,
                "timer {i} (at position {pos}) ran after timer {j}, whose deadline is later"
            );
        }
        if latest_lo.is_none_or(|(_, lo)| bounds[i].0 > lo) {
            latest_lo = Some((i, bounds[i].0));
        }
    }
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert!(sorted.iter().copied().eq(0..N), "every timer fired once");
}

#[test]
fn a_cancelled_timer_never_fires() {
    let pump = EventPump::new().unwrap();
    let (cancelled_tx, cancelled_rx) = flume::unbounded();
    let (later_tx, later_rx) = flume::unbounded();
    let timer = pump
        .post_after(
            Duration::from_millis(20),
            mixbus_pump::OnceTask::new("cancelled", move |_cx| cancelled_tx.send(()).unwrap()),
        )
        .unwrap();
    pump.post_after(
        Duration::from_millis(60),
        mixbus_pump::OnceTask::new("later", move |_cx| later_tx.send(()).unwrap()),
    )
    .unwrap();
    assert!(timer.cancel(), "cancelling a pending timer succeeds");
    assert!(
        !timer.cancel(),
        "a second cancel reports it was already cancelled"
    );
    recv(&later_rx, "the later timer");
    assert!(cancelled_rx.try_recv().is_err(), "the cancelled timer ran");
    assert!(!timer.has_fired());
}
