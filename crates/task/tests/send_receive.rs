//! `SendTask` and `ReceiveTask` together: every frame arrives intact and in order, `sent` hands
//! every message back in order, partial writes to a slow reader resume exactly, and the outbox
//! pushes back past its high water mark until `drained`.

mod support;

use std::io::{self, Read};
use std::time::Duration;

use mixbus_task::pump::eventq::net::TcpStream;
use mixbus_task::pump::{Context, EventPump};
use mixbus_task::{
    Bytes, FrameDecoder, Outbox, PushError, ReceiveOutcome, ReceiveTask, SendEvents, SendOptions,
    SendOutcome, SendTask, TaskEvent,
};

use support::{
    PATIENCE, Rng, SendEnd, SendEvent, check_payload, frames_until_finished, pair, payload,
    receive_events, recv, seed, send_events, until_finished,
};

/// The index a payload carries in its first 8 bytes, if it is that long.
fn index_of(msg: &[u8]) -> Option<u64> {
    msg.get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
}

/// Sends `true` when drained, and a light summary of each sent message (length and index), so
/// that the test does not keep every payload alive.
struct Split {
    sent: flume::Sender<Result<(usize, Option<u64>), SendEnd>>,
    drained: flume::Sender<()>,
}

impl SendEvents for Split {
    fn sent(&mut self, msg: Bytes, _cx: &mut Context<'_>) {
        let _ = self.sent.send(Ok((msg.len(), index_of(&msg))));
    }

    fn drained(&mut self, _cx: &mut Context<'_>) {
        let _ = self.drained.send(());
    }

    fn finished(&mut self, outcome: &SendOutcome, _cx: &mut Context<'_>) {
        let _ = self.sent.send(Err(SendEnd::of(outcome)));
    }
}

/// Pushes `msg`, waiting for `drained` each time the outbox is full.
fn push_with_backpressure(outbox: &Outbox, drained: &flume::Receiver<()>, mut msg: Bytes) {
    loop {
        match outbox.push(msg) {
            Ok(()) => return,
            Err(PushError::Full { msg: back, .. }) => {
                msg = back;
                recv(drained, "drained after a full outbox");
            }
            Err(err) => panic!("push refused: {err}"),
        }
    }
}

#[test]
fn smoke() {
    // An echo over one connection, each end with a send and a receive task on one pump: the read
    // half is a clone of the stream, the write half the original.
    let pump = EventPump::new().unwrap();
    let (client, peer) = pair();
    let peer = TcpStream::from_std(peer).unwrap();

    let (peer_events, _peer_sent) = send_events();
    let peer_reader = peer.try_clone().unwrap();
    let peer_outbox =
        SendTask::start(&pump, peer, SendOptions::default(), None, peer_events).unwrap();
    struct Echo(Outbox);
    impl mixbus_task::ReceiveEvents for Echo {
        fn received(&mut self, frame: Bytes, _cx: &mut Context<'_>) -> mixbus_task::Flow {
            self.0.push(frame).unwrap();
            mixbus_task::Flow::Continue
        }
        fn finished(&mut self, _outcome: ReceiveOutcome, _cx: &mut Context<'_>) {
            self.0.close(Duration::from_secs(5));
        }
    }
    ReceiveTask::new(&pump, peer_reader, 1024, Echo(peer_outbox))
        .unwrap()
        .post(&pump)
        .unwrap();

    let (events, sent) = send_events();
    let (collector, received) = receive_events();
    let reader = client.try_clone().unwrap();
    let outbox = SendTask::start(&pump, client, SendOptions::default(), None, events).unwrap();
    ReceiveTask::new(&pump, reader, 1024, collector)
        .unwrap()
        .post(&pump)
        .unwrap();
    outbox.push(Bytes::from_static(b"ping")).unwrap();
    outbox.close(Duration::from_secs(5));
    let (frames, outcome) = frames_until_finished(&received);
    assert_eq!(frames, [Bytes::from_static(b"ping")]);
    assert!(matches!(outcome, ReceiveOutcome::Eof), "{outcome:?}");
    let (sent, _, end) = until_finished(&sent);
    assert_eq!(sent, [Bytes::from_static(b"ping")]);
    assert_eq!(end.kind, "Flushed");
    assert_eq!(pump.stats().panics, 0);
}

#[test]
fn ten_thousand_frames_arrive_intact_and_in_order() {
    const FRAMES: usize = 10_000;
    let seed = seed();
    let mut rng = Rng::new(seed.0);
    let mut sizes: Vec<usize> = (0..FRAMES)
        .map(|_| rng.below(64 * 1024 + 1) as usize)
        .collect();
    sizes[0] = 0;
    sizes[1] = 64 * 1024;
    sizes[2] = 1;

    let sender = EventPump::new().unwrap();
    let receiver = EventPump::new().unwrap();
    let (client, peer) = pair();
    let (sent_tx, sent_rx) = flume::unbounded();
    let (drained_tx, drained_rx) = flume::unbounded();
    let split = Split {
        sent: sent_tx,
        drained: drained_tx,
    };
    let outbox = SendTask::start(&sender, client, SendOptions::default(), None, split).unwrap();
    let (collector, received) = receive_events();
    ReceiveTask::new(
        &receiver,
        TcpStream::from_std(peer).unwrap(),
        64 * 1024,
        collector,
    )
    .unwrap()
    .post(&receiver)
    .unwrap();

    let producer = {
        let outbox = outbox.clone();
        let sizes = sizes.clone();
        std::thread::spawn(move || {
            for (i, &len) in sizes.iter().enumerate() {
                push_with_backpressure(&outbox, &drained_rx, payload(i as u64, len));
            }
            assert!(outbox.close(PATIENCE));
        })
    };

    for (i, &len) in sizes.iter().enumerate() {
        match recv(&received, &format!("frame {i}")) {
            support::RecvEvent::Frame(frame) => check_payload(i as u64, len, &frame),
            support::RecvEvent::Finished(outcome) => panic!("ended early at {i}: {outcome:?}"),
        }
    }
    match recv(&received, "end of stream") {
        support::RecvEvent::Finished(ReceiveOutcome::Eof) => {}
        other => panic!("expected Eof after the last frame, got {other:?}"),
    }
    producer.join().unwrap();

    for (i, &len) in sizes.iter().enumerate() {
        match recv(&sent_rx, &format!("sent {i}")) {
            Ok((got_len, index)) => {
                assert_eq!(got_len, len, "sent {i}: length");
                assert_eq!(
                    index,
                    (len >= 8).then_some(i as u64),
                    "sent {i}: out of order"
                );
            }
            Err(end) => panic!("send side ended at {i}: {end:?}"),
        }
    }
    match recv(&sent_rx, "the send side to finish") {
        Err(end) => assert_eq!(end.kind, "Flushed", "{end:?}"),
        Ok(other) => panic!("sent more than pushed: {other:?}"),
    }
    assert_eq!(sender.stats().panics, 0);
    assert_eq!(receiver.stats().panics, 0);
}

#[test]
fn partial_writes_to_a_slow_reader_resume_exactly() {
    const FRAMES: usize = 300;
    let seed = seed();
    let mut rng = Rng::new(seed.0);
    let sizes: Vec<usize> = (0..FRAMES)
        .map(|_| rng.below(64 * 1024 + 1) as usize)
        .collect();

    let pump = EventPump::new().unwrap();
    let (client, mut peer) = pair();
    // A tiny send buffer: almost every vectored write is partial, cutting frames (and headers)
    // at arbitrary points.
    client.set_send_buffer_size(4096).unwrap();
    peer.set_read_timeout(Some(PATIENCE)).unwrap();
    let (events, sent) = send_events();
    let options = SendOptions::default().with_water_marks(64 << 20, 32 << 20);
    let outbox = SendTask::start(&pump, client, options, None, events).unwrap();
    let pushed: Vec<Bytes> = sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| payload(i as u64, len))
        .collect();
    for msg in &pushed {
        outbox.push(msg.clone()).unwrap();
    }
    assert!(outbox.close(PATIENCE));

    // A plain blocking reader that reads small pieces and pauses now and then, so the kernel
    // buffers fill up and the sender has to wait for room.
    let mut decoder = FrameDecoder::default();
    let mut piece = vec![0u8; 4096];
    let mut got = 0;
    let mut reads = 0u64;
    loop {
        let want = 1 + rng.below(piece.len() as u64) as usize;
        let n = match peer.read(&mut piece[..want]) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => panic!("read failed after {got} frames: {err}"),
        };
        if n == 0 {
            break;
        }
        decoder.extend_from_slice(&piece[..n]);
        while let Some(frame) = decoder.decode().unwrap() {
            assert!(got < FRAMES, "more frames than sent");
            check_payload(got as u64, sizes[got], &frame);
            got += 1;
        }
        reads += 1;
        if reads.is_multiple_of(64) {
            // Slowness being simulated, not a wait for a condition.
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(got, FRAMES, "every frame, then end of stream");
    assert_eq!(
        decoder.buffered(),
        0,
        "end of stream right after the last frame"
    );

    let (sent, _, end) = until_finished(&sent);
    assert_eq!(end.kind, "Flushed", "{end:?}");
    assert_eq!(sent.len(), FRAMES);
    for (i, (a, b)) in sent.iter().zip(&pushed).enumerate() {
        assert!(support::same(a, b), "sent {i} out of order");
    }
    assert_eq!(pump.stats().panics, 0);
}

#[test]
fn a_full_outbox_pushes_back_until_drained() {
    const HIGH: usize = 256 * 1024;
    const LOW: usize = 64 * 1024;
    const FRAME: usize = 16 * 1024;
    let pump = EventPump::new().unwrap();
    let (client, mut peer) = pair();
    client.set_send_buffer_size(4096).unwrap();
    peer.set_read_timeout(Some(PATIENCE)).unwrap();
    let (events, events_rx) = send_events();
    let options = SendOptions::default().with_water_marks(HIGH, LOW);
    let outbox = SendTask::start(&pump, client, options, None, events).unwrap();

    // The peer reads nothing: the kernel buffers fill, then the queue, then pushes are refused.
    // Pushes can outrun the writer (on a loaded machine it may not yet have filled the kernel
    // buffers when the queue reaches the mark): push until refused, let the writer run, and go
    // on until it can write no more.
    let mut accepted = 0u64;
    let refused = loop {
        let back = loop {
            assert!(accepted < 10_000, "never refused");
            let msg = payload(accepted, FRAME);
            match outbox.push(msg.clone()) {
                Ok(()) => accepted += 1,
                Err(PushError::Full {
                    msg: back,
                    queued,
                    high_water,
                }) => {
                    assert!(support::same(&back, &msg), "the refused message comes back");
                    assert_eq!(high_water, HIGH);
                    assert!(
                        queued + 4 + FRAME > HIGH,
                        "refused below the mark: {queued}"
                    );
                    break back;
                }
                Err(err) => panic!("unexpected refusal: {err}"),
            }
        };
        let before = outbox.queued_bytes();
        support::barrier(&pump.handle());
        if outbox.queued_bytes() == before {
            break back;
        }
    };
    assert!(outbox.queued_bytes() <= HIGH, "{}", outbox.queued_bytes());
    for _ in 0..100 {
        let err = outbox.push(refused.clone()).unwrap_err();
        assert!(matches!(err, PushError::Full { .. }), "{err}");
        assert!(outbox.queued_bytes() <= HIGH, "{}", outbox.queued_bytes());
    }

    // The peer reads again: everything queued arrives, and `drained` says there is room.
    let frames = support::read_frames(&mut peer, accepted as usize).unwrap();
    for (i, frame) in frames.iter().enumerate() {
        check_payload(i as u64, FRAME, frame);
    }
    let mut sent = 0u64;
    loop {
        match recv(&events_rx, "drained") {
            SendEvent::Sent(_) => sent += 1,
            SendEvent::Drained => break,
            SendEvent::Finished(end) => panic!("ended: {end:?}"),
        }
    }
    assert!(outbox.queued_bytes() <= LOW);
    outbox.push(refused).unwrap();
    let last = support::read_frames(&mut peer, 1).unwrap();
    check_payload(accepted, FRAME, &last[0]);
    outbox.close(PATIENCE);
    let (rest, _, end) = until_finished(&events_rx);
    assert_eq!(
        sent + rest.len() as u64,
        accepted + 1,
        "every message handed back"
    );
    assert_eq!(end.kind, "Flushed", "{end:?}");
    assert_eq!(pump.stats().panics, 0);
}
