//! The blocking face: `send_timeout` and `recv_timeout` between a thread and an event-driven peer,
//! timeouts that are not early, and the messages left after the peer closed, then `Closed`.
mod support;

use std::time::{Duration, Instant};

use mixbus_queue::task::Bytes;
use mixbus_queue::{CloseReason, QueueConfig, RecvTimeoutError, SendError, SendTimeoutError};
use support::{Echo, SLACK, broker, echo_server, index_of, pair, payload};

const WAIT: Duration = Duration::from_secs(10);

#[test]
fn smoke() {
    let (_pump, broker) = broker(QueueConfig::default());
    let addr = echo_server(&broker);
    let client = broker
        .connect_blocking(addr)
        .unwrap()
        .into_blocking()
        .unwrap();
    client.send_timeout("ping", WAIT).unwrap();
    assert_eq!(client.recv_timeout(WAIT).unwrap(), "ping");
    assert!(client.close());
    let info = client.wait_closed(WAIT).expect("closed");
    assert!(matches!(info.reason, CloseReason::Local));
}

#[test]
fn a_thread_and_an_event_driven_peer_exchange_in_order() {
    const N: u64 = 5_000;
    // Small water marks so `send_timeout` really waits for room now and then.
    let config = QueueConfig::default().with_water_marks(64 << 10, 16 << 10);
    let (_pump, broker) = broker(config);
    let (client, server) = pair(&broker);
    server.set_listener(Echo::new()).unwrap();
    let client = client.into_blocking().unwrap();
    let client = std::sync::Arc::new(client);
    let sender = client.clone();
    let send = std::thread::spawn(move || {
        for i in 0..N {
            sender
                .send_timeout(payload(7, i, 8 + (i % 200) as usize), WAIT)
                .unwrap();
        }
    });
    for i in 0..N {
        let msg = client.recv_timeout(WAIT).unwrap();
        assert!(
            support::is_payload(7, i, 8 + (i % 200) as usize, &msg),
            "message {i}"
        );
    }
    send.join().unwrap();
    assert_eq!(client.try_recv(), None);
}

#[test]
fn recv_timeout_times_out_and_not_early() {
    let (_pump, broker) = broker(QueueConfig::default());
    let (client, server) = pair(&broker);
    server.set_listener(Echo::new()).unwrap();
    let client = client.into_blocking().unwrap();
    for timeout in [Duration::from_millis(50), Duration::from_millis(300)] {
        let start = Instant::now();
        assert_eq!(client.recv_timeout(timeout), Err(RecvTimeoutError::Timeout));
        let took = start.elapsed();
        assert!(
            took >= timeout,
            "returned after {took:?}, before {timeout:?}"
        );
        assert!(took < timeout + SLACK, "returned late: {took:?}");
    }
    // Still usable after a timeout.
    client.send_timeout("after", WAIT).unwrap();
    assert_eq!(client.recv_timeout(WAIT).unwrap(), "after");
}

#[test]
fn after_the_peer_closes_the_rest_then_closed() {
    let (_pump, broker) = broker(QueueConfig::default());
    let (client, server) = pair(&broker);
    let client = client.into_blocking().unwrap();
    server.set_listener(Echo::new()).unwrap();
    for i in 0..5 {
        server.send(payload(3, i, 32)).unwrap();
    }
    assert!(server.close());
    // Waiting for the close must not eat the messages that arrived before it.
    let info = client.wait_closed(WAIT).expect("the client closed");
    assert!(
        matches!(info.reason, CloseReason::PeerClosed),
        "{}",
        info.reason
    );
    for i in 0..5 {
        let msg = client.recv_timeout(WAIT).unwrap();
        assert_eq!(index_of(&msg), Some(i));
    }
    assert_eq!(client.recv_timeout(WAIT), Err(RecvTimeoutError::Closed));
    assert_eq!(client.try_recv(), None);
    match client.send_timeout("late", WAIT) {
        Err(SendTimeoutError::Refused(SendError::Closed(msg))) => assert_eq!(msg, "late"),
        other => panic!("expected Refused(Closed), got {other:?}"),
    }
}

#[test]
fn recv_timeout_returns_the_rest_then_closed_without_wait_closed() {
    let (_pump, broker) = broker(QueueConfig::default());
    let (client, server) = pair(&broker);
    let client = client.into_blocking().unwrap();
    server.set_listener(Echo::new()).unwrap();
    for i in 0..5 {
        server.send(payload(4, i, 32)).unwrap();
    }
    server.close();
    for i in 0..5 {
        assert_eq!(index_of(&client.recv_timeout(WAIT).unwrap()), Some(i));
    }
    assert_eq!(client.recv_timeout(WAIT), Err(RecvTimeoutError::Closed));
}

#[test]
fn send_timeout_to_a_peer_that_never_reads_times_out_and_not_early() {
    let config = QueueConfig::default().with_water_marks(256 << 10, 128 << 10);
    let (_pump, broker) = broker(config);
    // The server never sets a listener: nothing reads its socket.
    let (client, _server) = pair(&broker);
    let client = client.into_blocking().unwrap();
    let chunk = Bytes::from(vec![7u8; 64 << 10]);
    let timeout = Duration::from_millis(200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "the queue never filled up");
        let start = Instant::now();
        match client.send_timeout(chunk.clone(), timeout) {
            Ok(()) => continue,
            Err(SendTimeoutError::Timeout(msg)) => {
                let took = start.elapsed();
                assert!(
                    took >= timeout,
                    "gave up after {took:?}, before {timeout:?}"
                );
                assert!(took < timeout + SLACK, "gave up late: {took:?}");
                assert_eq!(msg, chunk, "the message is handed back");
                break;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(client.queue().queued_bytes() <= (256 << 10) + chunk.len() + 4);
}
