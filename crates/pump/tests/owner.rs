//! Owners: killing one cancels its queued posts and timers and refuses later posts; other work runs.

mod support;

use std::time::Duration;

use mixbus_pump::{EventPump, OnceTask, PostError};
use support::{Gate, PATIENCE, recv};

#[test]
fn smoke() {
    let pump = EventPump::new().unwrap();
    let owner = pump.owner("conn-1");
    let (tx, rx) = flume::unbounded();
    pump.post_owned(
        &owner,
        OnceTask::new("owned", move |cx| {
            tx.send(cx.owner().map(|o| o.name().to_owned())).unwrap()
        }),
    )
    .unwrap();
    assert_eq!(recv(&rx, "the owned task").as_deref(), Some("conn-1"));
}

#[test]
fn killing_an_owner_cancels_its_work_and_refuses_new_posts() {
    let pump = EventPump::new().unwrap();
    let owner = pump.owner("doomed");
    let (owned_tx, owned_rx) = flume::unbounded::<&'static str>();
    let (free_tx, free_rx) = flume::unbounded::<&'static str>();
    let (started_tx, started_rx) = flume::bounded(1);
    // Hold the pump (bounded) so that the owned posts are still queued when the owner dies.
    let gate = Gate::new();
    let g = gate.clone();
    pump.post_fn("gate", move |_cx| {
        started_tx.send(()).unwrap();
        assert!(g.spin(PATIENCE));
    })
    .unwrap();
    recv(&started_rx, "the gate task");
    for _ in 0..5 {
        let tx = owned_tx.clone();
        pump.post_owned(
            &owner,
            OnceTask::new("owned", move |_cx| tx.send("post").unwrap()),
        )
        .unwrap();
    }
    let tx = owned_tx.clone();
    let timer = pump
        .post_after_owned(
            &owner,
            Duration::from_millis(10),
            OnceTask::new("owned-timer", move |_cx| tx.send("timer").unwrap()),
        )
        .unwrap();
    let tx = free_tx.clone();
    pump.post_fn("free", move |_cx| tx.send("free").unwrap())
        .unwrap();
    assert!(pump.kill(&owner), "the first kill kills");
    assert!(!pump.kill(&owner), "a second kill reports it was dead");
    assert!(owner.is_killed());
    gate.open();

    assert_eq!(recv(&free_rx, "unowned work"), "free");
    // An unowned timer due after the owned one: once it ran, the owned one would have too.
    let tx = free_tx.clone();
    pump.post_after(
        Duration::from_millis(40),
        OnceTask::new("free-timer", move |_cx| tx.send("free-timer").unwrap()),
    )
    .unwrap();
    assert_eq!(recv(&free_rx, "the unowned timer"), "free-timer");
    assert!(owned_rx.try_recv().is_err(), "work of a killed owner ran");
    assert!(!timer.has_fired());
    assert!(pump.stats().cancelled >= 6, "stats: {:?}", pump.stats());

    match pump.post_owned(&owner, OnceTask::new("late", |_cx| {})) {
        Err(PostError::Killed(task)) => assert!(task.into_inner().is_some()),
        other => panic!("posting for a killed owner gave {other:?}"),
    }
    assert!(matches!(
        pump.post_after_owned(&owner, Duration::ZERO, OnceTask::new("late", |_cx| {})),
        Err(PostError::Killed(_))
    ));
}
