//! `send_copied`: copies of borrowed payloads, whole and in order, with or without handing back,
//! bounded by the high water mark, and refusals that name the first message refused.
mod support;

use std::time::{Duration, Instant};

use mixbus_queue::task::Bytes;
use mixbus_queue::{MessageQueue, QueueConfig, SendError};
use support::{Ev, Forward, RoomSignal, broker, pair, payloads, receive, recv, until_closed};

/// Messages `from..from + n` of stream 9, sizes from empty to past one 64 KiB run.
fn messages(from: u64, n: u64) -> Vec<Bytes> {
    payloads(9, from, n, &[16, 0, 127, 128, 4096, 65_532, 70_000])
}

/// Sends all of `msgs` with `send_copied` from borrowed slices, waiting on `room` when full.
fn send_copied_all(queue: &MessageQueue, msgs: &[Bytes], room: Option<&flume::Receiver<()>>) {
    let slices: Vec<&[u8]> = msgs.iter().map(|m| &m[..]).collect();
    let mut at = 0;
    while at < slices.len() {
        let taken = queue.send_copied(&slices[at..]).expect("send_copied");
        at += taken;
        if at < slices.len() {
            let room = room.expect("a queue this size never fills");
            room.recv_timeout(Duration::from_secs(10))
                .expect("writable");
        }
    }
}

/// How a test sends a batch of messages it keeps.
type SendAll = fn(&MessageQueue, &[Bytes], Option<&flume::Receiver<()>>);

/// Without hand-back, what `send` copied arrives whole and in order.
fn copies_arrive_whole_and_in_order(send: SendAll) {
    let (_pump, broker) = broker(QueueConfig::default());
    let (client, server) = pair(&broker);
    let (room_tx, room) = flume::bounded(1);
    client.set_listener(RoomSignal(room_tx)).unwrap();
    let (server_l, server_rx) = Forward::new();
    server.set_listener(server_l).unwrap();
    let msgs = messages(0, 3000);
    send(&client, &msgs, Some(&room));
    assert_eq!(receive(&server_rx, msgs.len()), msgs);
}

/// A listener that takes messages back gets copies equal to what `send` sent.
fn copies_come_back_equal(send: SendAll) {
    let (_pump, broker) = broker(QueueConfig::default());
    let (client, server) = pair(&broker);
    let (client_l, client_rx) = Forward::new();
    client.set_listener(client_l).unwrap();
    let (server_l, server_rx) = Forward::new();
    server.set_listener(server_l).unwrap();
    let msgs = messages(0, 200);
    // The originals are reused buffers in an application; here they are dropped right away.
    send(&client, &msgs, None);
    assert!(client.close());
    let seen = until_closed(&client_rx, "client");
    assert_eq!(seen.sent, msgs);
    assert_eq!(until_closed(&server_rx, "server").received, msgs);
}

#[test]
fn copies_arrive_whole_and_in_order_without_hand_back() {
    copies_arrive_whole_and_in_order(send_copied_all);
}

#[test]
fn a_listener_that_takes_messages_back_gets_equal_copies() {
    copies_come_back_equal(send_copied_all);
}

#[test]
fn a_full_queue_takes_part_and_the_rest_follows_once_writable() {
    const HIGH: usize = 256 << 10;
    const LOW: usize = 64 << 10;
    let (_pump, broker) = broker(QueueConfig::default().with_water_marks(HIGH, LOW));
    // The server sets no listener yet: nothing reads its socket.
    let (client, server) = pair(&broker);
    let (room_tx, room) = flume::bounded(1);
    client.set_listener(RoomSignal(room_tx)).unwrap();
    let msg = [0x5au8; 1000];
    let batch = vec![&msg[..]; 1000];
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0u64;
    // Until a call takes none (the kernel's buffers are full too), every call stops at the mark.
    loop {
        assert!(
            Instant::now() < deadline,
            "send_copied never stopped taking"
        );
        let taken = client.send_copied(&batch).unwrap();
        assert!(
            client.queued_bytes() <= HIGH + 1004,
            "{} queued",
            client.queued_bytes()
        );
        sent += taken as u64;
        if taken == 0 {
            break;
        }
        if taken < batch.len() {
            // Wait for the writer to drain below the low water mark, or give up waiting.
            let _ = room.recv_timeout(Duration::from_millis(200));
        }
    }
    let (server_l, server_rx) = Forward::new();
    server.set_listener(server_l).unwrap();
    room.recv_timeout(Duration::from_secs(10))
        .expect("writable once the peer reads");
    let mut got = 0u64;
    while got < sent {
        if let Ev::Received(m) = recv(&server_rx, "the messages") {
            assert_eq!(m, &msg[..]);
            got += 1;
        }
    }
    assert!(
        server_rx.try_recv().is_err(),
        "no more than was taken arrives"
    );
}

#[test]
fn refusals_name_the_first_message_refused() {
    let max = 1024;
    let (_pump, broker) = broker(QueueConfig::default().with_max_frame_len(max));
    let (client, server) = pair(&broker);
    let (server_l, server_rx) = Forward::new();
    server.set_listener(server_l).unwrap();
    let (room_tx, _room) = flume::bounded(1);
    client.set_listener(RoomSignal(room_tx)).unwrap();
    let big = vec![1u8; max + 1];
    let batch: [&[u8]; 4] = [b"a", b"b", &big, b"c"];
    // The two before the oversized one are taken; the next call starts at it and is refused.
    assert_eq!(client.send_copied(&batch).unwrap(), 2);
    match client.send_copied(&batch[2..]) {
        Err(SendError::TooLarge { len, max: m, msg }) => {
            assert_eq!((len, m), (max + 1, max));
            assert_eq!(msg, big);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(client.send_copied(&batch[3..]).unwrap(), 1);
    assert_eq!(receive(&server_rx, 3), ["a", "b", "c"]);
    assert!(client.close());
    match client.send_copied(&[b"late"]) {
        Err(SendError::Closed(msg)) => assert_eq!(msg, "late"),
        other => panic!("expected Closed, got {other:?}"),
    }
    let empty: [&[u8]; 0] = [];
    assert_eq!(client.send_copied(&empty).unwrap(), 0);
}

/// Sends each of `msgs` with `send_copy_gathered`, split into three parts at different places,
/// waiting on `room` when full.
fn send_gathered_all(queue: &MessageQueue, msgs: &[Bytes], room: Option<&flume::Receiver<()>>) {
    for (i, msg) in msgs.iter().enumerate() {
        let a = (i * 7) % (msg.len() + 1);
        let b = a + (msg.len() - a) / 2;
        let parts = [&msg[..a], &msg[a..b], &msg[b..]];
        loop {
            match queue.send_copy_gathered(&parts) {
                Ok(()) => break,
                Err(SendError::Full { msg: refused, .. }) => {
                    assert_eq!(refused, msg, "the refusal holds the joined message");
                    let room = room.expect("a queue this size never fills");
                    room.recv_timeout(Duration::from_secs(10))
                        .expect("writable");
                }
                Err(err) => panic!("send_copy_gathered: {err}"),
            }
        }
    }
}

#[test]
fn gathered_copies_arrive_joined_whole_and_in_order() {
    copies_arrive_whole_and_in_order(send_gathered_all);
}

#[test]
fn gathered_copies_are_handed_back_joined() {
    copies_come_back_equal(send_gathered_all);
}

#[test]
fn a_gathered_message_over_the_frame_limit_is_refused_whole() {
    let max = 1024;
    let (_pump, broker) = broker(QueueConfig::default().with_max_frame_len(max));
    let (client, _server) = pair(&broker);
    let head = [1u8; 24];
    let body = [2u8; 1001];
    match client.send_copy_gathered(&[&head, &body]) {
        Err(SendError::TooLarge { msg, len, max: m }) => {
            assert_eq!((len, m), (1025, max));
            assert_eq!(&msg[..24], &head[..]);
            assert_eq!(&msg[24..], &body[..]);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    client
        .send_copy_gathered(&[&head, &body[..1000]])
        .expect("one byte less fits");
}
