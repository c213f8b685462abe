//! `SendTask` failures: a peer that stalls past the write timeout, and a peer that resets the
//! connection, both end with `Failed` and hand back every message not written, in order.

mod support;

use std::io;
use std::time::{Duration, Instant};

use mixbus_task::pump::EventPump;
use mixbus_task::pump::eventq::net::TcpStream;
use mixbus_task::{Bytes, PushError, SendOptions, SendTask};

use support::{
    PATIENCE, SLACK, SendEvent, pair, payload, same, send_events, stalled_outbox, until_finished,
};

/// Panics unless `sent` then `unsent` are exactly `pushed`, in order.
fn check_accounting(pushed: &[Bytes], sent: &[Bytes], unsent: &[Bytes]) {
    assert_eq!(
        sent.len() + unsent.len(),
        pushed.len(),
        "sent {} + unsent {} != pushed {}",
        sent.len(),
        unsent.len(),
        pushed.len()
    );
    for (i, (a, b)) in sent.iter().chain(unsent).zip(pushed).enumerate() {
        assert!(same(a, b), "message {i} out of order");
    }
}

#[test]
fn smoke() {
    let pump = EventPump::new().unwrap();
    let (client, peer) = pair();
    let (events, rx) = send_events();
    let outbox = SendTask::start(&pump, client, SendOptions::default(), None, events).unwrap();
    drop(peer);
    let msg = Bytes::from_static(b"into the void");
    // Until the reset is seen, pushes are accepted; once it is, the send side has failed.
    let deadline = Instant::now() + PATIENCE;
    while outbox.push(msg.clone()).is_ok() {
        assert!(Instant::now() < deadline, "no write ever failed");
        std::thread::sleep(Duration::from_millis(2));
    }
    let (_, _, end) = until_finished(&rx);
    assert_eq!(end.kind, "Failed", "{end:?}");
    assert_eq!(pump.stats().panics, 0);
}

#[test]
fn a_peer_that_stalls_past_the_write_timeout_fails_the_send_side() {
    const WRITE_TIMEOUT: Duration = Duration::from_millis(300);
    let pump = EventPump::new().unwrap();
    let (outbox, rx, peer) = stalled_outbox(&pump, WRITE_TIMEOUT);

    // A few MiB queued; the peer never reads.
    let start = Instant::now();
    let pushed: Vec<Bytes> = (0..64).map(|i| payload(i, 64 * 1024)).collect();
    for msg in &pushed {
        outbox.push(msg.clone()).unwrap();
    }
    let (sent, _, end) = until_finished(&rx);
    let elapsed = start.elapsed();
    assert_eq!(end.kind, "Failed", "{end:?}");
    let (kind, why) = end.reason.as_ref().unwrap();
    assert_eq!(*kind, io::ErrorKind::TimedOut, "{why}");
    assert!(
        elapsed >= WRITE_TIMEOUT,
        "failed before the timeout: {elapsed:?}"
    );
    assert!(
        elapsed < WRITE_TIMEOUT + SLACK,
        "failed too late: {elapsed:?}"
    );
    assert!(!end.unsent.is_empty(), "the stalled messages come back");
    check_accounting(&pushed, &sent, &end.unsent);

    let late = Bytes::from_static(b"late");
    match outbox.push(late.clone()) {
        Err(PushError::Closed(back)) => assert!(same(&back, &late)),
        other => panic!("push after failure: {other:?}"),
    }
    drop(peer);
    assert_eq!(pump.stats().panics, 0);
}

#[test]
fn a_peer_that_resets_fails_the_send_side_with_the_unsent_messages() {
    let pump = EventPump::new().unwrap();
    let (client, peer) = pair();
    let peer = TcpStream::from_std(peer).unwrap();
    let (events, rx) = send_events();
    let outbox = SendTask::start(&pump, client, SendOptions::default(), None, events).unwrap();

    // Some frames reach the peer, which reads none of them.
    let mut pushed: Vec<Bytes> = (0..8).map(|i| payload(i, 1024)).collect();
    for msg in &pushed {
        outbox.push(msg.clone()).unwrap();
    }
    let mut sent = Vec::new();
    while sent.len() < pushed.len() {
        match support::recv(&rx, "the first frames written") {
            SendEvent::Sent(msg) => sent.push(msg),
            other => panic!("unexpected: {other:?}"),
        }
    }
    // Closing with unread data (and a zero linger) resets the connection.
    peer.set_linger(Some(Duration::ZERO)).unwrap();
    drop(peer);

    // The sender keeps pushing until a write fails and the send side refuses more.
    let deadline = Instant::now() + PATIENCE;
    let mut i = pushed.len() as u64;
    loop {
        let msg = payload(i, 64 * 1024);
        match outbox.push(msg.clone()) {
            Ok(()) => pushed.push(msg),
            Err(PushError::Full { .. }) => {}
            Err(PushError::Closed(back)) => {
                assert!(same(&back, &msg));
                break;
            }
            Err(err) => panic!("unexpected refusal: {err}"),
        }
        i += 1;
        assert!(Instant::now() < deadline, "no write ever failed");
        std::thread::sleep(Duration::from_millis(1));
    }
    let (more, _, end) = until_finished(&rx);
    sent.extend(more);
    assert_eq!(end.kind, "Failed", "{end:?}");
    let (kind, why) = end.reason.as_ref().unwrap();
    assert!(
        matches!(
            kind,
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ),
        "{kind:?}: {why}"
    );
    check_accounting(&pushed, &sent, &end.unsent);
    assert_eq!(pump.stats().panics, 0);
}
