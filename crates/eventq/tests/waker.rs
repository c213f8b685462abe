//! A `Waker` ends a blocked poll from another thread; many wakes cost one wake-up.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use mixbus_eventq::{Events, Poll, Token, Waker};
use support::PATIENCE;

#[test]
fn smoke() {
    let mut poll = Poll::new().unwrap();
    let waker = Waker::new(&poll.registry(), Token(42)).unwrap();
    waker.wake().unwrap();
    let mut events = Events::with_capacity(4);
    poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
    let tokens: Vec<Token> = events.iter().map(|e| e.token()).collect();
    assert_eq!(tokens, vec![Token(42)]);
}

#[test]
fn wake_from_another_thread_ends_a_blocked_poll() {
    let mut poll = Poll::new().unwrap();
    let waker = Waker::new(&poll.registry(), Token(1)).unwrap();
    let polling = Arc::new(AtomicBool::new(false));
    let flag = polling.clone();
    let waking = thread::spawn(move || {
        // Wake only once the main thread is (about to be) blocked; the wake is kept either way.
        while !flag.load(Ordering::Acquire) {
            thread::yield_now();
        }
        waker.wake().unwrap();
        waker
    });
    polling.store(true, Ordering::Release);
    let mut events = Events::with_capacity(4);
    // No timeout: without the wake this would block forever (the test harness would hang).
    poll.poll(&mut events, None).unwrap();
    assert_eq!(events.iter().next().map(|e| e.token()), Some(Token(1)));
    waking.join().unwrap();
}

#[test]
fn many_wakes_before_a_poll_are_one_event() {
    let mut poll = Poll::new().unwrap();
    let waker = Waker::new(&poll.registry(), Token(5)).unwrap();
    for _ in 0..1000 {
        waker.wake().unwrap();
    }
    let mut events = Events::with_capacity(16);
    poll.poll(&mut events, Some(PATIENCE)).unwrap();
    assert_eq!(events.len(), 1);
    // Nothing is left over for the next poll.
    poll.poll(&mut events, Some(Duration::from_millis(50)))
        .unwrap();
    assert!(events.is_empty(), "got {events:?}");
}

#[test]
fn two_wakers_each_report_their_token() {
    let mut poll = Poll::new().unwrap();
    let a = Waker::new(&poll.registry(), Token(1)).unwrap();
    let b = Waker::new(&poll.registry(), Token(2)).unwrap();
    a.wake().unwrap();
    b.wake().unwrap();
    let mut events = Events::with_capacity(16);
    poll.poll(&mut events, Some(PATIENCE)).unwrap();
    let mut tokens: Vec<usize> = events.iter().map(|e| e.token().0).collect();
    tokens.sort();
    assert_eq!(tokens, vec![1, 2]);
}

#[test]
fn a_wake_from_a_waker_dropped_right_after_is_still_reported() {
    // Regression: dropping the waker used to forget its pending wake, so a poll that ran after
    // the waking thread had finished returned with no event.
    let mut poll = Poll::new().unwrap();
    let waker = Waker::new(&poll.registry(), Token(9)).unwrap();
    thread::spawn(move || {
        waker.wake().unwrap();
        drop(waker);
    })
    .join()
    .unwrap();
    let mut events = Events::with_capacity(4);
    poll.poll(&mut events, Some(PATIENCE)).unwrap();
    assert_eq!(events.iter().next().map(|e| e.token()), Some(Token(9)));
    // Reported once, then forgotten.
    poll.poll(&mut events, Some(Duration::from_millis(20)))
        .unwrap();
    assert!(events.is_empty(), "got {events:?}");
}

#[test]
fn every_wake_after_a_poll_ends_the_next_blocked_poll() {
    // Each wake must reach a poll that blocks after the previous wake was taken: on Linux the
    // wakers share an edge-triggered eventfd, so this checks that taking a wake re-arms it.
    let mut poll = Poll::new().unwrap();
    let waker = Waker::new(&poll.registry(), Token(9)).unwrap();
    let (go, next) = std::sync::mpsc::channel::<()>();
    let waking = thread::spawn(move || {
        while next.recv().is_ok() {
            waker.wake().unwrap();
        }
    });
    let mut events = Events::with_capacity(4);
    for round in 0..200 {
        go.send(()).unwrap();
        poll.poll(&mut events, Some(PATIENCE)).unwrap();
        let tokens: Vec<Token> = events.iter().map(|e| e.token()).collect();
        assert_eq!(tokens, vec![Token(9)], "round {round}");
    }
    drop(go);
    waking.join().unwrap();
}
