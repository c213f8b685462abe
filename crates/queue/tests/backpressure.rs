//! Backpressure: a peer that stops reading makes `send` hand the message back past the high water
//! mark, queued bytes stay bounded, and once the peer reads again everything arrives and
//! `writable` has fired.
mod support;

use std::time::{Duration, Instant};

use mixbus_queue::{QueueConfig, SendError};
use support::{Ev, Forward, broker, index_of, pair, payload};

const HIGH: usize = 256 << 10;
const LOW: usize = 64 << 10;
const WAIT: Duration = Duration::from_secs(10);

#[test]
fn smoke() {
    let (_pump, broker) = broker(QueueConfig::default().with_water_marks(HIGH, LOW));
    let (client, server) = pair(&broker);
    let (l, rx) = Forward::new();
    client.set_listener(l).unwrap();
    server.set_listener(support::Echo::new()).unwrap();
    client.send("small").unwrap();
    loop {
        match rx.recv_timeout(WAIT).unwrap() {
            Ev::Received(msg) => break assert_eq!(msg, "small"),
            Ev::Sent(msg) => assert_eq!(msg, "small"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(client.queued_bytes(), 0);
}

#[test]
fn a_peer_that_stops_reading_gets_backpressure_then_everything() {
    const SIZE: usize = 32 << 10;
    let (_pump, broker) = broker(QueueConfig::default().with_water_marks(HIGH, LOW));
    // The server sets no listener yet: nothing reads its socket.
    let (client, server) = pair(&broker);
    let (client_l, client_rx) = Forward::new();
    client.set_listener(client_l).unwrap();
    let bound = HIGH + SIZE + 4;
    let mut next = 0u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    let refused = loop {
        assert!(Instant::now() < deadline, "send never refused a message");
        match client.send(payload(5, next, SIZE)) {
            Ok(()) => next += 1,
            Err(SendError::Full {
                msg,
                queued,
                high_water,
            }) => {
                assert_eq!(high_water, HIGH);
                assert!(queued <= bound, "{queued} queued bytes");
                break msg;
            }
            Err(err) => panic!("{err}"),
        }
        let queued = client.queued_bytes();
        assert!(
            queued <= bound,
            "{queued} queued bytes past the bound {bound}"
        );
    };
    // The refused message is handed back whole, and the next sends are refused too while the
    // peer still does not read.
    assert_eq!(index_of(&refused), Some(next));
    for _ in 0..10 {
        match client.send(refused.clone()) {
            Err(SendError::Full { msg, .. }) => assert_eq!(msg, refused),
            other => panic!("expected Full, got {other:?}"),
        }
        assert!(client.queued_bytes() <= bound);
    }
    // The peer reads again.
    let (server_l, server_rx) = Forward::new();
    server.set_listener(server_l).unwrap();
    let mut writable = false;
    let mut sent = 0u64;
    while !writable {
        match client_rx
            .recv_timeout(WAIT)
            .expect("writable after the peer resumed")
        {
            Ev::Writable => writable = true,
            Ev::Sent(msg) => {
                assert_eq!(index_of(&msg), Some(sent));
                sent += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(client.queued_bytes() <= bound);
    }
    client.send(refused).expect("room again after writable");
    let total = next + 1;
    let mut received = 0u64;
    while received < total {
        match server_rx.recv_timeout(WAIT).expect("every message arrives") {
            Ev::Received(msg) => {
                assert!(
                    support::is_payload(5, received, SIZE, &msg),
                    "message {received}"
                );
                received += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    client.close();
    let seen = support::until_closed(&client_rx, "client");
    assert_eq!(
        sent + seen.sent.len() as u64,
        total,
        "every message handed back"
    );
    assert!(seen.closed.unsent.is_empty());
}
