//! Closing: what was sent before `close` arrives before the peer's `closed`, `closed` fires once on
//! each side with nothing after it, `send` after close hands the message back, and both sides
//! closing at the same moment finishes on both sides.
mod support;

use std::sync::{Arc, Barrier};

use mixbus_queue::task::Bytes;
use mixbus_queue::{CloseReason, MessageQueue, QueueConfig, SendError};
use support::{Forward, bind_channel, broker, index_of, pair, payload, recv, until_closed};

#[test]
fn smoke() {
    let (_pump, broker) = broker(QueueConfig::default());
    let (client, server) = pair(&broker);
    let (client_l, client_rx) = Forward::new();
    let (server_l, server_rx) = Forward::new();
    client.set_listener(client_l).unwrap();
    server.set_listener(server_l).unwrap();
    client.send("last words").unwrap();
    assert!(client.close());
    let server_seen = until_closed(&server_rx, "server");
    assert_eq!(server_seen.received, ["last words"]);
    assert!(matches!(server_seen.closed.reason, CloseReason::PeerClosed));
    let client_seen = until_closed(&client_rx, "client");
    assert!(matches!(client_seen.closed.reason, CloseReason::Local));
    assert!(client_seen.closed.unsent.is_empty());
    assert!(client.is_closed() && server.is_closed());
}

#[test]
fn everything_sent_before_close_arrives_before_the_peers_closed() {
    const N: u64 = 20_000;
    let (_pump, broker) = broker(QueueConfig::default());
    let (client, server) = pair(&broker);
    let (client_l, client_rx) = Forward::new();
    let (server_l, server_rx) = Forward::new();
    client.set_listener(client_l).unwrap();
    server.set_listener(server_l).unwrap();
    let sender = client.clone();
    std::thread::spawn(move || {
        for i in 0..N {
            let mut msg = payload(1, i, 8 + (i % 300) as usize);
            // The default water marks (8 MiB) leave room for all of it: no `Full` here.
            while let Err(err) = sender.send(msg) {
                assert!(matches!(err, SendError::Full { .. }), "{err}");
                msg = err.into_msg();
                std::thread::yield_now();
            }
        }
        assert!(sender.close());
    })
    .join()
    .unwrap();
    let server_seen = until_closed(&server_rx, "server");
    let got: Vec<u64> = server_seen
        .received
        .iter()
        .map(|m| index_of(m).unwrap())
        .collect();
    assert_eq!(got, (0..N).collect::<Vec<_>>());
    assert!(matches!(server_seen.closed.reason, CloseReason::PeerClosed));
    let client_seen = until_closed(&client_rx, "client");
    assert_eq!(
        client_seen.sent.len() as u64,
        N,
        "every message handed back"
    );
    assert!(client_seen.closed.unsent.is_empty());
}

#[test]
fn send_after_close_hands_the_message_back() {
    let (_pump, broker) = broker(QueueConfig::default());
    let (client, server) = pair(&broker);
    let (client_l, client_rx) = Forward::new();
    client.set_listener(client_l).unwrap();
    server.set_listener(support::Echo::new()).unwrap();
    assert!(client.close());
    assert!(
        !client.close(),
        "a second close reports it was already closing"
    );
    match client.send("too late") {
        Err(SendError::Closed(msg)) => assert_eq!(msg, "too late"),
        other => panic!("expected Closed, got {other:?}"),
    }
    until_closed(&client_rx, "client");
    match client.send(Bytes::from_static(b"later still")) {
        Err(SendError::Closed(msg)) => assert_eq!(msg, "later still"),
        other => panic!("expected Closed, got {other:?}"),
    }
}

/// The accepted queue's only handle is dropped in `accepted` (the usual server pattern): its
/// `closed` must still fire when the peer closes.
#[test]
fn closed_fires_on_a_queue_nobody_holds() {
    let (_pump, broker) = broker(QueueConfig::default());
    let (tx, server_rx) = flume::unbounded();
    let addr = broker
        .bind(support::any_port(), move |queue: MessageQueue| {
            let (l, rx) = Forward::new();
            queue.set_listener(l).unwrap();
            let _ = tx.send(rx);
        })
        .unwrap();
    let client = broker.connect_blocking(addr).unwrap();
    let (client_l, client_rx) = Forward::new();
    client.set_listener(client_l).unwrap();
    client.send("hello").unwrap();
    let server_events = recv(&server_rx, "the accepted queue");
    client.close();
    let server_seen = until_closed(&server_events, "server");
    assert_eq!(server_seen.received, ["hello"]);
    assert!(matches!(server_seen.closed.reason, CloseReason::PeerClosed));
    until_closed(&client_rx, "client");
}

#[test]
fn both_sides_closing_at_once_finish_on_both_sides() {
    const ROUNDS: usize = 200;
    let (_pump, broker) = broker(QueueConfig::default());
    let (addr, accepted) = bind_channel(&broker);
    for round in 0..ROUNDS {
        let client = broker.connect_blocking(addr).unwrap();
        let server = recv(&accepted, "the accepted queue");
        let (client_l, client_rx) = Forward::new();
        let (server_l, server_rx) = Forward::new();
        client.set_listener(client_l).unwrap();
        server.set_listener(server_l).unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let closers: Vec<_> = [(client.clone(), 0u64), (server.clone(), 1u64)]
            .into_iter()
            .map(|(queue, stream)| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    for i in 0..3 {
                        queue.send(payload(stream, i, 16)).unwrap();
                    }
                    barrier.wait();
                    // False when the peer's close got here first: the queue was already closing.
                    queue.close();
                })
            })
            .collect();
        for closer in closers {
            closer.join().unwrap();
        }
        for (rx, who, peer_stream) in [(&client_rx, "client", 1u64), (&server_rx, "server", 0)] {
            let seen = until_closed(rx, &format!("{who} in round {round}"));
            assert_eq!(seen.received.len(), 3, "{who} in round {round}");
            for (i, msg) in seen.received.iter().enumerate() {
                assert!(support::is_payload(peer_stream, i as u64, 16, msg));
            }
            assert!(seen.closed.unsent.is_empty(), "{who} in round {round}");
            assert!(
                matches!(
                    seen.closed.reason,
                    CloseReason::Local | CloseReason::PeerClosed
                ),
                "{who} in round {round}: {}",
                seen.closed.reason
            );
        }
        assert!(accepted.is_empty());
    }
}
