//! The idle spin (`PumpConfig::spin`): how long an idle pump watches its inbox and sockets before
//! it sleeps. Work that arrives within it needs no wake-up; timers and shutdown are never delayed
//! by it. By default it adapts (`PumpConfig::with_spin_range`): it grows when work came back soon
//! after the pump fell asleep and shrinks when the pump stayed idle.

mod support;

use std::thread;
use std::time::{Duration, Instant};

use mixbus_pump::{EventPump, OnceTask, PumpConfig};
use support::{PATIENCE, SLACK, recv, wait_until};

/// A spin far longer than any test waits: the pump never falls asleep on its own within a test.
const LONG_SPIN: Duration = Duration::from_secs(30);

/// How long the pump is left idle before the next post: far past the default spin (20 µs,
/// adapting up to 200 µs).
const IDLE: Duration = Duration::from_millis(50);

fn spinning_pump(spin: Duration) -> EventPump {
    EventPump::with_config(PumpConfig::default().with_spin(spin)).unwrap()
}

/// Runs one task on `pump` and waits for it.
fn run_one(pump: &EventPump) {
    let (tx, rx) = flume::bounded(1);
    pump.handle()
        .post_fn("one", move |_cx| tx.send(()).unwrap())
        .unwrap();
    recv(&rx, "the posted task");
}

#[test]
fn smoke() {
    let pump = spinning_pump(Duration::ZERO);
    run_one(&pump);
    let report = pump.shutdown(PATIENCE);
    assert!(!report.timed_out);
}

#[test]
fn a_post_within_the_spin_needs_no_wake_up() {
    let pump = spinning_pump(LONG_SPIN);
    run_one(&pump);
    // The scenario needs the pump idle for a while, so this one sleep is the test's subject,
    // not a stand-in for synchronisation: a pump with the default spin is asleep by then.
    thread::sleep(IDLE);
    assert!(
        !pump.handle().is_sleeping(),
        "a pump spinning for {LONG_SPIN:?} fell asleep after {IDLE:?} idle"
    );
    let before = pump.stats().wakeups;
    run_one(&pump);
    assert_eq!(
        pump.stats().wakeups,
        before,
        "a post within the spin woke the pump"
    );
}

#[test]
fn a_pump_with_the_default_spin_sleeps_and_a_post_wakes_it() {
    // The counterpart of the test above: with the default spin the same post costs a wake-up.
    let pump = EventPump::new().unwrap();
    run_one(&pump);
    wait_until("the idle pump to fall asleep", || {
        pump.handle().is_sleeping()
    });
    let before = pump.stats().wakeups;
    run_one(&pump);
    assert_eq!(pump.stats().wakeups, before + 1);
}

#[test]
fn a_spin_never_delays_a_timer() {
    let pump = spinning_pump(LONG_SPIN);
    run_one(&pump);
    let delay = Duration::from_millis(20);
    let (tx, rx) = flume::bounded(1);
    let set = Instant::now();
    pump.handle()
        .post_after(
            delay,
            OnceTask::new("timer", move |_cx| tx.send(Instant::now()).unwrap()),
        )
        .unwrap();
    let fired = recv(&rx, "the timer").duration_since(set);
    assert!(fired >= delay, "the timer fired early, after {fired:?}");
    assert!(
        fired < delay + SLACK,
        "the timer fired after {fired:?}: the spin held it back"
    );
}

#[test]
fn a_spinning_pump_shuts_down_at_once() {
    let pump = spinning_pump(LONG_SPIN);
    run_one(&pump);
    let start = Instant::now();
    let report = pump.shutdown(PATIENCE);
    assert!(!report.timed_out, "the spinning pump did not stop");
    assert!(
        start.elapsed() < SLACK,
        "shutting down a spinning pump took {:?}",
        start.elapsed()
    );
}

/// Runs one task on `pump` after it fell asleep, so that the task's post wakes it.
fn wake_with_one(pump: &EventPump) {
    wait_until("the idle pump to fall asleep", || {
        pump.handle().is_sleeping()
    });
    let before = pump.stats().wakeups;
    run_one(pump);
    assert!(
        pump.stats().wakeups > before,
        "the post did not wake the pump"
    );
}

#[test]
fn an_adaptive_spin_grows_to_cover_work_that_came_back_within_its_max() {
    let pump =
        EventPump::with_config(PumpConfig::default().with_spin_range(Duration::ZERO, LONG_SPIN))
            .unwrap();
    assert_eq!(pump.stats().spin, Duration::ZERO);
    run_one(&pump);
    wait_until("the idle pump to fall asleep", || {
        pump.handle().is_sleeping()
    });
    // The post comes within the max after the pump went idle: a spin of the max would have
    // caught it, so the spin becomes the max.
    run_one(&pump);
    let spin = pump.stats().spin;
    assert!(
        spin >= IDLE && spin <= LONG_SPIN,
        "after a post into its sleep the pump spins {spin:?}"
    );
    assert_eq!(spin, LONG_SPIN);
}

#[test]
fn an_adaptive_spin_shrinks_when_the_pump_stays_idle_past_its_max() {
    let max = Duration::from_millis(5);
    let pump =
        EventPump::with_config(PumpConfig::default().with_spin_range(Duration::ZERO, max)).unwrap();
    run_one(&pump);
    // Grow the spin: a post soon after the pump fell asleep. On a loaded machine the post may
    // come later than `max`, which does not grow it, so try until one comes in time.
    let deadline = Instant::now() + PATIENCE;
    while pump.stats().spin.is_zero() {
        assert!(Instant::now() < deadline, "the spin never grew");
        wake_with_one(&pump);
    }
    let grown = pump.stats().spin;
    assert!(grown <= max, "the spin grew past its max: {grown:?}");
    // Idle past the max: a task on the pump reads the spin and sets a timer four maxes off, and
    // the timer's task reads it again. Between the two the pump only waits for the timer (no
    // post, no I/O), and spinning would not have paid, so the spin halves.
    let (tx, rx) = flume::bounded(1);
    let handle = pump.handle().clone();
    pump.handle()
        .post_fn("set the timer", move |_cx| {
            let before = handle.stats().spin;
            let after = handle.clone();
            handle
                .post_after(
                    max * 4,
                    OnceTask::new("read the spin", move |_cx| {
                        tx.send((before, after.stats().spin)).unwrap()
                    }),
                )
                .unwrap();
        })
        .unwrap();
    let (before, after) = recv(&rx, "the timer");
    assert!(!before.is_zero(), "the grown spin had shrunk to nothing");
    assert_eq!(after, before / 2);
}

#[test]
fn a_fixed_spin_does_not_adapt() {
    let spin = Duration::from_micros(20);
    let pump = spinning_pump(spin);
    assert_eq!(pump.stats().spin, spin);
    run_one(&pump);
    wake_with_one(&pump);
    wake_with_one(&pump);
    assert_eq!(pump.stats().spin, spin);
}
