//! A peer that vanishes (its socket reset mid-stream) closes the queue with a failure, and the
//! sender learns which messages were never written: `sent` then `unsent` is every message, in order.
mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use mixbus_queue::task::pump::eventq::net::TcpStream;
use mixbus_queue::{CloseReason, QueueConfig, SendError};
use support::{Forward, bind_channel, broker, index_of, payload, recv, until_closed};

/// A raw client (blocking std stream) connected to `addr`.
fn raw_client(addr: SocketAddr) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Resets the connection: `SO_LINGER` of zero, then close.
fn reset(stream: std::net::TcpStream) {
    let stream = TcpStream::from_std(stream).unwrap();
    stream.set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
}

#[test]
fn smoke() {
    let (_pump, broker) = broker(QueueConfig::default());
    let (addr, accepted) = bind_channel(&broker);
    let raw = raw_client(addr);
    let server = recv(&accepted, "the accepted queue");
    let (l, rx) = Forward::new();
    server.set_listener(l).unwrap();
    reset(raw);
    let seen = until_closed(&rx, "server");
    assert!(
        matches!(seen.closed.reason, CloseReason::Failed(_)),
        "{}",
        seen.closed.reason
    );
    assert!(seen.closed.unsent.is_empty());
    assert!(server.is_closed());
}

#[test]
fn a_reset_mid_stream_reports_what_was_never_written() {
    let (_pump, broker) = broker(QueueConfig::default().with_water_marks(4 << 20, 2 << 20));
    let (addr, accepted) = bind_channel(&broker);
    let mut raw = raw_client(addr);
    let server = recv(&accepted, "the accepted queue");
    let (l, rx) = Forward::new();
    server.set_listener(l).unwrap();
    // Queue messages until the queue is full: the socket buffers fill, the rest waits.
    let mut accepted_count = 0u64;
    loop {
        match server.send(payload(9, accepted_count, 16 << 10)) {
            Ok(()) => accepted_count += 1,
            Err(SendError::Full { .. }) => break,
            Err(err) => panic!("{err}"),
        }
        assert!(accepted_count < 100_000, "the queue never filled up");
    }
    // The peer reads a little, mid-stream, then vanishes.
    let mut some = vec![0u8; 100_000];
    raw.read_exact(&mut some).unwrap();
    reset(raw);
    let seen = until_closed(&rx, "server");
    assert!(
        matches!(seen.closed.reason, CloseReason::Failed(_)),
        "{}",
        seen.closed.reason
    );
    assert!(
        !seen.closed.unsent.is_empty(),
        "some messages were never written"
    );
    let order: Vec<u64> = seen
        .sent
        .iter()
        .chain(&seen.closed.unsent)
        .map(|m| index_of(m).unwrap())
        .collect();
    assert_eq!(
        order,
        (0..accepted_count).collect::<Vec<_>>(),
        "sent ({}) then unsent ({}) is every message, in order",
        seen.sent.len(),
        seen.closed.unsent.len()
    );
    match server.send("after") {
        Err(SendError::Closed(msg)) => assert_eq!(msg, "after"),
        other => panic!("expected Closed, got {other:?}"),
    }
}

#[test]
fn a_reset_of_an_idle_queue_closes_it_with_the_reason() {
    // The queue is the connecting side this time; the raw peer is accepted by a std listener.
    let (_pump, broker) = broker(QueueConfig::default());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = broker
        .connect_blocking(listener.local_addr().unwrap())
        .unwrap();
    let (raw, _) = listener.accept().unwrap();
    let (l, rx) = Forward::new();
    client.set_listener(l).unwrap();
    client.send("one").unwrap();
    reset(raw);
    let seen = until_closed(&rx, "client");
    assert!(
        matches!(seen.closed.reason, CloseReason::Failed(_)),
        "{}",
        seen.closed.reason
    );
    assert_eq!(seen.sent.len() + seen.closed.unsent.len(), 1);
}
