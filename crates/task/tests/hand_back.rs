//! `Outbox::set_hand_back`: with it off, small messages are copied into shared runs when pushed,
//! every frame still arrives whole and in order, nothing is handed back, and what is not written
//! still comes back (as equal copies); turned on again, copied messages come back as copies.

mod support;

use std::time::Duration;

use mixbus_task::pump::EventPump;
use mixbus_task::{Bytes, SendOptions, SendTask};

use support::{
    PATIENCE, SendEvent, pair, payload, read_frames, recv, send_events, stalled_outbox,
    until_finished,
};

/// Sizes around the copy threshold (512 bytes) and the short-copy classes, and empty ones.
fn size(i: u64) -> usize {
    [0, 1, 9, 16, 511, 512, 17, 600, 4096, 100, 32, 33, 64, 65][(i % 14) as usize]
}

#[test]
fn smoke() {
    let pump = EventPump::new().unwrap();
    let (client, mut peer) = pair();
    let (events, rx) = send_events();
    let outbox = SendTask::start(&pump, client, SendOptions::default(), None, events).unwrap();
    outbox.set_hand_back(false);
    assert!(!outbox.hands_back());
    outbox.push(Bytes::from_static(b"hi")).unwrap();
    let mut batch: std::collections::VecDeque<Bytes> =
        (0..3).map(|i| Bytes::from(format!("m{i}"))).collect();
    assert_eq!(outbox.push_all(&mut batch).unwrap(), 3);
    let got = read_frames(&mut peer, 4).unwrap();
    assert_eq!(got, ["hi", "m0", "m1", "m2"]);
    assert!(outbox.close(PATIENCE));
    let (sent, _, end) = until_finished(&rx);
    assert!(sent.is_empty(), "nothing is handed back: {sent:?}");
    assert_eq!(end.kind, "Flushed");
}

#[test]
fn mixed_sizes_arrive_whole_and_in_order() {
    const N: u64 = 20_000;
    let pump = EventPump::new().unwrap();
    let (client, mut peer) = pair();
    let (events, rx) = send_events();
    let outbox = SendTask::start(&pump, client, SendOptions::default(), None, events).unwrap();
    outbox.set_hand_back(false);
    let reader = std::thread::spawn(move || read_frames(&mut peer, N as usize).unwrap());
    let mut batch = std::collections::VecDeque::new();
    let mut i = 0;
    while i < N {
        // Alternate single pushes and batches of various lengths.
        if i % 3 == 0 {
            outbox.push(payload(i, size(i))).unwrap();
            i += 1;
            continue;
        }
        let n = (i % 50).min(N - i);
        batch.extend((i..i + n).map(|j| payload(j, size(j))));
        let taken = outbox.push_all(&mut batch).unwrap();
        assert_eq!(taken, n as usize);
        i += n;
    }
    let got = reader.join().unwrap();
    for (i, frame) in got.iter().enumerate() {
        support::check_payload(i as u64, size(i as u64), frame);
    }
    assert!(outbox.close(PATIENCE));
    let (sent, _, end) = until_finished(&rx);
    assert!(sent.is_empty());
    assert_eq!(end.kind, "Flushed");
}

#[test]
fn copied_messages_come_back_as_copies_once_hand_back_is_on_again() {
    let pump = EventPump::new().unwrap();
    let (client, mut peer) = pair();
    let (events, rx) = send_events();
    let outbox = SendTask::start(&pump, client, SendOptions::default(), None, events).unwrap();
    outbox.set_hand_back(false);
    // Hold the pump so that nothing is written before hand-back is on again.
    let (open_tx, open_rx) = flume::bounded::<()>(1);
    pump.post_fn("gate", move |_cx| {
        let _ = open_rx.recv_timeout(PATIENCE);
    })
    .unwrap();
    let pushed: Vec<Bytes> = (0..100).map(|i| payload(i, size(i))).collect();
    for msg in &pushed {
        outbox.push(msg.clone()).unwrap();
    }
    outbox.set_hand_back(true);
    open_tx.send(()).unwrap();
    let got = read_frames(&mut peer, pushed.len()).unwrap();
    assert_eq!(got, pushed);
    let mut sent = Vec::new();
    while sent.len() < pushed.len() {
        match recv(&rx, "the messages handed back") {
            SendEvent::Sent(msg) => sent.push(msg),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sent, pushed, "every message comes back, in order");
}

#[test]
fn unsent_copies_come_back_when_the_peer_stalls() {
    const WRITE_TIMEOUT: Duration = Duration::from_millis(300);
    let pump = EventPump::new().unwrap();
    let (outbox, rx, peer) = stalled_outbox(&pump, WRITE_TIMEOUT);
    outbox.set_hand_back(false);
    // Small messages (and a few large ones) up to the high water mark; the peer never reads.
    let mut pushed: Vec<Bytes> = (0..16_000)
        .map(|i| payload(i, 2 * size(i) / 3 + 300))
        .collect();
    let mut batch: std::collections::VecDeque<Bytes> = pushed.iter().cloned().collect();
    let taken = outbox.push_all(&mut batch).unwrap();
    assert!(taken > 1000, "only {taken} queued");
    pushed.truncate(taken);
    let (sent, _, end) = until_finished(&rx);
    assert_eq!(end.kind, "Failed", "{end:?}");
    assert!(sent.is_empty());
    assert!(!end.unsent.is_empty(), "the stalled messages come back");
    // What was not written is the tail of what was pushed, equal message for message.
    let tail = &pushed[pushed.len() - end.unsent.len()..];
    assert_eq!(end.unsent, tail);
    drop(peer);
    assert_eq!(pump.stats().panics, 0);
}

#[test]
fn pushes_from_another_pump_are_written_in_place_while_the_owner_sleeps() {
    use mixbus_task::pump::PumpHandle;
    let owner = EventPump::new().unwrap();
    let other = EventPump::new().unwrap();
    let (client, mut peer) = pair();
    let (events, rx) = send_events();
    let outbox = SendTask::start(&owner, client, SendOptions::default(), None, events).unwrap();
    outbox.set_hand_back(false);
    outbox.set_write_in_place(true);
    let handle = owner.handle();
    support::wait_until("the owning pump sleeps", || handle.is_sleeping());
    let before = owner.stats().wakeups;
    // Pushed from a thread of another pump: written there, with no wake-up of the owner.
    let (done, written) = flume::bounded(1);
    let (o, h) = (outbox.clone(), handle.clone());
    other
        .handle()
        .post_fn("push", move |_cx: &mut _| {
            assert!(PumpHandle::on_any_pump_thread() && !h.is_pump_thread());
            o.push(Bytes::from_static(b"in place")).unwrap();
            let mut batch: std::collections::VecDeque<Bytes> =
                (0..3).map(|i| Bytes::from(format!("m{i}"))).collect();
            o.push_all(&mut batch).unwrap();
            let _ = done.send(o.queued_bytes());
        })
        .unwrap();
    assert_eq!(
        recv(&written, "the pushes"),
        0,
        "all written before the task returned"
    );
    assert_eq!(
        read_frames(&mut peer, 4).unwrap(),
        ["in place", "m0", "m1", "m2"]
    );
    assert_eq!(
        owner.stats().wakeups,
        before,
        "the owning pump was not woken"
    );
    // From a thread that is no pump's, the owner writes, as always.
    outbox.push(Bytes::from_static(b"posted")).unwrap();
    assert_eq!(read_frames(&mut peer, 1).unwrap(), ["posted"]);
    assert!(owner.stats().wakeups > before);
    assert!(outbox.close(PATIENCE));
    let (sent, _, end) = until_finished(&rx);
    assert!(sent.is_empty(), "nothing is handed back: {sent:?}");
    assert_eq!(end.kind, "Flushed");
}
