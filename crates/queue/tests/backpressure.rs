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
    // Send until ten sends in a row are refused. While the kernel's buffers still take data the
    // writer may drain the queue below the low water mark after a refusal, and a later send is
    // taken again; once they are full (the peer reads nothing) every send is refused.
    let mut in_a_row = 0;
    let refused = loop {
        assert!(Instant::now() < deadline, "send never refused ten in a row");
        match client.send(payload(5, next, SIZE)) {
            Ok(()) => {
                next += 1;
                in_a_row = 0;
            }
            Err(SendError::Full {
                msg,
                queued,
                high_water,
            }) => {
                assert_eq!(high_water, HIGH);
                assert!(queued <= bound, "{queued} queued bytes");
                // The refused message is handed back whole.
                assert_eq!(index_of(&msg), Some(next));
                in_a_row += 1;
                if in_a_row == 10 {
                    break msg;
                }
            }
            Err(err) => panic!("{err}"),
        }
        let queued = client.queued_bytes();
        assert!(
            queued <= bound,
            "{queued} queued bytes past the bound {bound}"
        );
    };
    // The peer reads again: the writer drains, `writable` follows, and the refused message is
    // taken. (A `writable` from a drain before the kernel filled may come first: then the send is
    // refused again and the next `writable` is awaited.)
    let (server_l, server_rx) = Forward::new();
    server.set_listener(server_l).unwrap();
    let mut sent = 0u64;
    let mut await_writable = || loop {
        match client_rx
            .recv_timeout(WAIT)
            .expect("writable after the peer resumed")
        {
            Ev::Writable => break,
            Ev::Sent(msg) => {
                assert_eq!(index_of(&msg), Some(sent));
                sent += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(client.queued_bytes() <= bound);
    };
    let mut writable = 0;
    while let Err(err) = client.send(refused.clone()) {
        assert!(matches!(err, SendError::Full { .. }), "{err}");
        await_writable();
        writable += 1;
    }
    if writable == 0 {
        // Taken at once (the writer had drained already): the notice owed to the refusals
        // still comes.
        await_writable();
    }
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

/// Receives like [`Forward`], holding reading while `held` is set.
struct Holding {
    inner: Forward,
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl mixbus_queue::QueueListener for Holding {
    fn received(&mut self, queue: &mixbus_queue::MessageQueue, msg: mixbus_queue::task::Bytes) {
        self.inner.received(queue, msg);
    }
    fn hold_receiving(&mut self, _queue: &mixbus_queue::MessageQueue) -> bool {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn closed(&mut self, queue: &mixbus_queue::MessageQueue, info: mixbus_queue::CloseInfo) {
        self.inner.closed(queue, info);
    }
}

#[test]
fn a_receiver_that_holds_reading_backs_the_sender_up_then_gets_everything() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const SIZE: usize = 16 << 10;
    let (_pump, broker) = broker(QueueConfig::default().with_water_marks(HIGH, LOW));
    let (client, server) = pair(&broker);
    let held = Arc::new(AtomicBool::new(true));
    let (inner, server_rx) = Forward::new();
    server
        .set_listener(Holding {
            inner,
            held: held.clone(),
        })
        .unwrap();
    // Send until ten sends in a row are refused: the receiver reads nothing while it holds.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut next, mut in_a_row) = (0u64, 0);
    while in_a_row < 10 {
        assert!(Instant::now() < deadline, "send never refused ten in a row");
        match client.send(payload(6, next, SIZE)) {
            Ok(()) => {
                next += 1;
                in_a_row = 0;
            }
            Err(SendError::Full { .. }) => {
                in_a_row += 1;
                // Room comes only from the kernel taking more: let the writer run.
                std::thread::yield_now();
            }
            Err(err) => panic!("{err}"),
        }
    }
    assert!(client.queued_bytes() <= HIGH + SIZE + 4);
    assert!(
        server_rx.try_recv().is_err(),
        "nothing is delivered while the receiver holds"
    );
    held.store(false, Ordering::SeqCst);
    for i in 0..next {
        match server_rx.recv_timeout(WAIT).expect("every message arrives") {
            Ev::Received(msg) => assert!(support::is_payload(6, i, SIZE, &msg), "message {i}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
