//! `send_all`: many messages under one lock, stopping at the high water mark, refusing bad ones.

mod support;

use std::collections::VecDeque;

use mixbus_queue::task::Bytes;
use mixbus_queue::task::Frames;
use mixbus_queue::{MessageQueue, QueueConfig, QueueListener, SendError};
use support::{Ev, Forward, broker, pair, recv};

#[test]
fn smoke() {
    let (_pump, broker) = broker(QueueConfig::default());
    let (client, server) = pair(&broker);
    let (fwd, rx) = Forward::new();
    server.set_listener(fwd).unwrap();
    let mut msgs: VecDeque<Bytes> = ["a", "b", "c"].into_iter().map(Bytes::from).collect();
    assert_eq!(client.send_all(&mut msgs).unwrap(), 3);
    assert!(msgs.is_empty());
    for want in ["a", "b", "c"] {
        match recv(&rx, "a message") {
            Ev::Received(msg) => assert_eq!(msg, want),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn stops_at_the_high_water_mark_and_everything_arrives_in_order() {
    // A small high water mark so that the batch stops many times.
    let config = QueueConfig::default().with_water_marks(64 * 1024, 16 * 1024);
    let (_pump, broker) = broker(config);
    let (client, server) = pair(&broker);
    let (fwd, rx) = Forward::new();
    server.set_listener(fwd).unwrap();
    let (room_fwd, room) = Forward::new();
    client.set_listener(room_fwd).unwrap();

    const N: u64 = 100_000;
    let mut msgs: VecDeque<Bytes> = (0..N)
        .map(|i| Bytes::from(i.to_be_bytes().to_vec()))
        .collect();
    let mut stops = 0;
    while !msgs.is_empty() {
        let before = msgs.len();
        let taken = client.send_all(&mut msgs).unwrap();
        assert_eq!(before - taken, msgs.len(), "taken messages leave the deque");
        assert!(
            client.queued_bytes() <= 64 * 1024 + 12,
            "bounded: {}",
            client.queued_bytes()
        );
        if !msgs.is_empty() {
            stops += 1;
            // Wait for the writable notice (the `sent` events in between are ignored).
            loop {
                match recv(&room, "writable") {
                    Ev::Writable => break,
                    Ev::Sent(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }
    assert!(stops > 0, "the high water mark never stopped the batch");
    for i in 0..N {
        match recv(&rx, "every message") {
            Ev::Received(msg) => assert_eq!(&msg[..], &i.to_be_bytes()[..], "message {i}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn a_too_large_message_is_handed_back_and_the_rest_stays() {
    let config = QueueConfig::default().with_max_frame_len(8);
    let (_pump, broker) = broker(config);
    let (client, server) = pair(&broker);
    let (fwd, rx) = Forward::new();
    server.set_listener(fwd).unwrap();
    let mut msgs: VecDeque<Bytes> = ["ok", "far too large", "after"]
        .into_iter()
        .map(Bytes::from)
        .collect();
    match client.send_all(&mut msgs) {
        Err(SendError::TooLarge { msg, len, max }) => {
            assert_eq!(msg, "far too large");
            assert_eq!((len, max), (13, 8));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(msgs, VecDeque::from([Bytes::from("after")]));
    match recv(&rx, "the first message") {
        Ev::Received(msg) => assert_eq!(msg, "ok"),
        other => panic!("unexpected {other:?}"),
    }
    client.close();
    let mut rest: VecDeque<Bytes> = VecDeque::from([Bytes::from("late")]);
    match client.send_all(&mut rest) {
        Err(SendError::Closed(msg)) => assert_eq!(msg, "late"),
        other => panic!("expected Closed, got {other:?}"),
    }
}

/// Reads each received batch in place and forwards (batch size, payloads) to the test.
struct InPlace(flume::Sender<(usize, Vec<u64>)>);

impl QueueListener for InPlace {
    fn received(&mut self, _queue: &MessageQueue, _msg: Bytes) {
        panic!("received_frames is overridden: received must not be called");
    }

    fn received_frames(&mut self, _queue: &MessageQueue, frames: &Frames) {
        let seqs = frames
            .iter()
            .map(|f| u64::from_be_bytes(f.try_into().expect("8-byte payload")))
            .collect();
        let _ = self.0.send((frames.len(), seqs));
    }
}

#[test]
fn batches_read_in_place_hold_every_message_once_in_order() {
    let (_pump, broker) = broker(QueueConfig::default());
    let (client, server) = pair(&broker);
    let (tx, rx) = flume::unbounded();
    server.set_listener(InPlace(tx)).unwrap();

    const N: u64 = 200_000;
    let mut msgs: VecDeque<Bytes> = (0..N)
        .map(|i| Bytes::from(i.to_be_bytes().to_vec()))
        .collect();
    assert_eq!(client.send_all(&mut msgs).unwrap(), N as usize);
    let mut next = 0;
    let mut largest = 0;
    while next < N {
        let (len, seqs) = rx
            .recv_timeout(support::PATIENCE)
            .expect("a batch within the patience");
        assert_eq!(len, seqs.len());
        largest = largest.max(len);
        for seq in seqs {
            assert_eq!(seq, next, "in order, exactly once");
            next += 1;
        }
    }
    assert!(largest > 1, "a stream of small messages arrives in batches");
    client.close();
}
