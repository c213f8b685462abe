//! A poll with a timeout returns after about the timeout and never earlier.

use std::time::{Duration, Instant};

use mixbus_eventq::{Events, Poll};

#[test]
fn smoke() {
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(4);
    let start = Instant::now();
    poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
    assert!(events.is_empty());
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn timeout_is_never_early_and_not_much_late() {
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(4);
    for ms in [10u64, 50, 120] {
        let want = Duration::from_millis(ms);
        let start = Instant::now();
        poll.poll(&mut events, Some(want)).unwrap();
        let took = start.elapsed();
        assert!(events.is_empty());
        assert!(
            took >= want,
            "returned after {took:?}, before the {want:?} timeout"
        );
        // "Not late" is generous: CI machines are slow and shared.
        assert!(
            took < want + Duration::from_secs(2),
            "took {took:?} for {want:?}"
        );
    }
}
