//! `send_parts`: one message gathered from several buffers arrives whole, in order among other
//! sends, through partial writes; it goes back (and is reported unsent) as its joined bytes.
mod support;

use std::time::Duration;

use mixbus_queue::task::{Bytes, MAX_PARTS};
use mixbus_queue::{MessageQueue, QueueConfig, SendError};
use support::{Forward, RoomSignal, broker, pair, payload, payloads, receive, until_closed};

/// Message `index` cut into parts of the sizes in `cuts` (cycled; the last part takes the rest):
/// small parts are copied by the writer, large ones written in place, empty ones skipped.
fn cut(msg: &Bytes, index: u64) -> Vec<Bytes> {
    const CUTS: [usize; 7] = [0, 3, 511, 512, 4096, 70_000, 1];
    let mut parts = Vec::new();
    let mut at = 0;
    let mut k = index as usize;
    while at < msg.len() {
        let n = CUTS[k % CUTS.len()].min(msg.len() - at);
        parts.push(msg.slice(at..at + n));
        at += n;
        k += 1;
    }
    parts
}

/// Messages of stream 11: sizes from empty to several 64 KiB runs.
fn messages(n: u64) -> Vec<Bytes> {
    const SIZES: [usize; 6] = [0, 16, 600, 5000, 80_000, 300_000];
    payloads(11, 0, n, &SIZES)
}

/// Sends `msgs` in turn, every third one with `send`, the others cut into parts; waits on
/// `room` when the queue is full.
fn send_mixed(queue: &MessageQueue, msgs: &[Bytes], room: &flume::Receiver<()>) {
    for (i, msg) in msgs.iter().enumerate() {
        loop {
            let sent = if i % 3 == 0 {
                queue.send(msg.clone())
            } else {
                queue.send_parts(cut(msg, i as u64))
            };
            match sent {
                Ok(()) => break,
                Err(SendError::Full { msg: joined, .. }) => {
                    assert_eq!(&joined, msg, "a refusal hands back the joined bytes");
                    room.recv_timeout(Duration::from_secs(10))
                        .expect("writable");
                }
                Err(err) => panic!("send {i}: {err}"),
            }
        }
    }
}

#[test]
fn parts_arrive_as_one_message_in_order_through_partial_writes() {
    // Water marks small enough that the queue fills and writes are cut short.
    let config = QueueConfig::default().with_water_marks(512 << 10, 128 << 10);
    let (_pump, broker) = broker(config);
    let (client, server) = pair(&broker);
    let (room_tx, room) = flume::bounded(1);
    client.set_listener(RoomSignal(room_tx)).unwrap();
    let (server_l, server_rx) = Forward::new();
    server.set_listener(server_l).unwrap();
    let msgs = messages(600);
    send_mixed(&client, &msgs, &room);
    assert_eq!(receive(&server_rx, msgs.len()), msgs);
}

#[test]
fn a_listener_that_takes_messages_back_gets_the_joined_bytes() {
    let (_pump, broker) = broker(QueueConfig::default());
    let (client, server) = pair(&broker);
    let (client_l, client_rx) = Forward::new();
    client.set_listener(client_l).unwrap();
    let (server_l, server_rx) = Forward::new();
    server.set_listener(server_l).unwrap();
    let msgs: Vec<Bytes> = messages(60);
    for (i, msg) in msgs.iter().enumerate() {
        client.send_parts(cut(msg, i as u64)).expect("send_parts");
    }
    // More parts than one write gathers for a frame: joined when queued, the same bytes.
    let many: Vec<Bytes> = (0..MAX_PARTS as u64 + 10)
        .map(|i| payload(12, i, 700))
        .collect();
    let joined: Bytes = many.iter().flat_map(|p| p.iter().copied()).collect();
    client.send_parts(many).expect("send_parts");
    assert!(client.close());
    let mut expected = msgs.clone();
    expected.push(joined);
    let seen = until_closed(&client_rx, "client");
    assert_eq!(seen.sent, expected);
    assert_eq!(until_closed(&server_rx, "server").received, expected);
}

#[test]
fn refusals_hand_back_the_joined_bytes() {
    let (_pump, broker) = broker(QueueConfig::default().with_max_frame_len(1000));
    let (client, _server) = pair(&broker);
    let parts = vec![Bytes::from(vec![1u8; 600]), Bytes::from(vec![2u8; 600])];
    let joined: Bytes = parts.iter().flat_map(|p| p.iter().copied()).collect();
    match client.send_parts(parts.clone()) {
        Err(SendError::TooLarge { msg, len, max }) => {
            assert_eq!((msg, len, max), (joined.clone(), 1200, 1000));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(client.close());
    let small = vec![Bytes::from_static(b"head:"), Bytes::from(vec![3u8; 600])];
    match client.send_parts(small) {
        Err(SendError::Closed(msg)) => {
            assert_eq!(&msg[..5], b"head:");
            assert_eq!(msg.len(), 605);
        }
        other => panic!("expected Closed, got {other:?}"),
    }
}
