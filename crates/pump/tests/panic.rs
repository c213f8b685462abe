//! Panics: a panicking task or offloaded closure is counted, and the pump keeps working.

mod support;

use mixbus_pump::EventPump;
use support::{recv, wait_until};

#[test]
fn smoke() {
    let pump = EventPump::new().unwrap();
    let (tx, rx) = flume::unbounded();
    pump.post_fn("fine", move |_cx| tx.send(()).unwrap())
        .unwrap();
    recv(&rx, "a task");
    assert_eq!(pump.stats().panics, 0);
}

#[test]
fn a_panicking_task_does_not_stop_the_pump() {
    let pump = EventPump::new().unwrap();
    let (tx, rx) = flume::unbounded();
    pump.post_fn("boom", |_cx| panic!("boom on purpose"))
        .unwrap();
    pump.post_fn("after", move |_cx| tx.send(()).unwrap())
        .unwrap();
    recv(&rx, "the task after the panic");
    assert_eq!(pump.stats().panics, 1);
}

#[test]
fn a_panicking_offload_is_counted_and_the_pump_goes_on() {
    let pump = EventPump::new().unwrap();
    let (tx, rx) = flume::unbounded();
    let never = tx.clone();
    pump.offload(
        "boom",
        || -> u32 { panic!("offload boom on purpose") },
        move |_v, _cx| never.send("continuation").unwrap(),
    )
    .unwrap();
    wait_until("the worker's panic to be counted", || {
        pump.stats().panics == 1
    });
    // Workers and pump still work.
    for _ in 0..3 {
        let tx = tx.clone();
        pump.offload(
            "ok",
            || 2 + 2,
            move |v, _cx| tx.send(if v == 4 { "ok" } else { "wrong" }).unwrap(),
        )
        .unwrap();
    }
    let tx2 = tx.clone();
    pump.post_fn("after", move |_cx| tx2.send("after").unwrap())
        .unwrap();
    let mut got: Vec<_> = (0..4).map(|_| recv(&rx, "work after the panic")).collect();
    got.sort_unstable();
    assert_eq!(got, ["after", "ok", "ok", "ok"]);
    assert_eq!(pump.stats().panics, 1);
}
