//! `CloseTask`: flushes what is queued then ends the stream, notifies exactly once, refuses
//! pushes afterwards, and reports `LingerExpired` with the unsent messages when the peer stalls.

mod support;

use std::io::Read;
use std::time::{Duration, Instant};

use mixbus_task::pump::EventPump;
use mixbus_task::{Bytes, CloseTask, FrameDecoder, PushError, SendOptions, SendTask, TaskEvent};

use support::{
    PATIENCE, Rng, SLACK, SendEnd, barrier, check_payload, pair, payload, recv, same, seed,
    send_events, until_finished,
};

/// Posts a close of `outbox`; its callback reports to the returned channel.
fn close(
    pump: &EventPump,
    outbox: &mixbus_task::Outbox,
    linger: Duration,
) -> flume::Receiver<SendEnd> {
    let (tx, rx) = flume::unbounded();
    CloseTask::new(outbox.clone(), linger, move |outcome, _cx| {
        tx.send(SendEnd::of(outcome)).unwrap();
    })
    .post(pump)
    .unwrap();
    rx
}

#[test]
fn smoke() {
    let pump = EventPump::new().unwrap();
    let (client, mut peer) = pair();
    let (events, _rx) = send_events();
    let outbox = SendTask::start(&pump, client, SendOptions::default(), None, events).unwrap();
    // Closing an idle outbox flushes nothing and ends the stream.
    let closed = close(&pump, &outbox, PATIENCE);
    assert_eq!(recv(&closed, "the close").kind, "Flushed");
    let mut rest = Vec::new();
    peer.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn close_flushes_everything_then_ends_the_stream_and_notifies_once() {
    const FRAMES: usize = 1000;
    let seed = seed();
    let mut rng = Rng::new(seed.0);
    let sizes: Vec<usize> = (0..FRAMES).map(|_| rng.below(2048) as usize).collect();
    let pump = EventPump::new().unwrap();
    let (client, mut peer) = pair();
    peer.set_read_timeout(Some(PATIENCE)).unwrap();
    let (events, events_rx) = send_events();
    let outbox = SendTask::start(&pump, client, SendOptions::default(), None, events).unwrap();
    for (i, &len) in sizes.iter().enumerate() {
        outbox.push(payload(i as u64, len)).unwrap();
    }
    let closed = close(&pump, &outbox, PATIENCE);
    // A second close of the same outbox does nothing: its callback never runs.
    let second = close(&pump, &outbox, PATIENCE);

    // Every frame, then end of stream right after the last one.
    let mut wire = Vec::new();
    peer.read_to_end(&mut wire).unwrap();
    let mut decoder = FrameDecoder::default();
    decoder.extend_from_slice(&wire);
    for (i, &len) in sizes.iter().enumerate() {
        let frame = decoder
            .decode()
            .unwrap()
            .unwrap_or_else(|| panic!("stream ended before frame {i}"));
        check_payload(i as u64, len, &frame);
    }
    assert_eq!(decoder.buffered(), 0, "nothing after the last frame");

    let end = recv(&closed, "the close callback");
    assert_eq!(end.kind, "Flushed", "{end:?}");
    assert!(end.unsent.is_empty());
    let (sent, _, finished) = until_finished(&events_rx);
    assert_eq!(sent.len(), FRAMES);
    assert_eq!(finished.kind, "Flushed");

    // Every close task has run by now: the first reported once, the second not at all.
    barrier(&pump);
    assert!(closed.try_recv().is_err(), "the close callback ran twice");
    assert!(second.try_recv().is_err(), "the second close reported");
    // A close after the end does nothing either.
    let third = close(&pump, &outbox, PATIENCE);
    barrier(&pump);
    assert!(third.try_recv().is_err(), "a close after the end reported");

    let late = Bytes::from_static(b"too late");
    match outbox.push(late.clone()) {
        Err(PushError::Closed(back)) => assert!(same(&back, &late)),
        other => panic!("push after close: {other:?}"),
    }
    assert_eq!(pump.stats().panics, 0);
}

#[test]
fn an_unbounded_linger_flushes() {
    let pump = EventPump::new().unwrap();
    let (client, mut peer) = pair();
    let (events, _rx) = send_events();
    let outbox = SendTask::start(&pump, client, SendOptions::default(), None, events).unwrap();
    outbox.push(Bytes::from_static(b"no hurry")).unwrap();
    let closed = close(&pump, &outbox, Duration::MAX);
    assert_eq!(recv(&closed, "the close").kind, "Flushed");
    let mut wire = Vec::new();
    peer.read_to_end(&mut wire).unwrap();
    assert_eq!(wire, b"\0\0\0\x08no hurry");
    assert_eq!(pump.stats().panics, 0);
}

#[test]
fn push_after_close_is_refused_with_the_message() {
    let pump = EventPump::new().unwrap();
    let (client, _peer) = pair();
    let (events, _rx) = send_events();
    let outbox = SendTask::start(&pump, client, SendOptions::default(), None, events).unwrap();
    let closed = close(&pump, &outbox, PATIENCE);
    barrier(&pump);
    assert!(!outbox.is_open());
    let msg = Bytes::from_static(b"after close");
    match outbox.push(msg.clone()) {
        Err(PushError::Closed(back)) => assert!(same(&back, &msg)),
        other => panic!("push after close: {other:?}"),
    }
    assert_eq!(recv(&closed, "the close").kind, "Flushed");
}

#[test]
fn linger_expiry_reports_the_unsent_messages() {
    const LINGER: Duration = Duration::from_millis(300);
    let pump = EventPump::new().unwrap();
    let (client, peer) = pair();
    client.set_send_buffer_size(4096).unwrap();
    let (events, events_rx) = send_events();
    // The default write timeout (30 s) is far longer than the linger: the linger must end it.
    let outbox = SendTask::start(&pump, client, SendOptions::default(), None, events).unwrap();
    let pushed: Vec<Bytes> = (0..32).map(|i| payload(i, 64 * 1024)).collect();
    for msg in &pushed {
        outbox.push(msg.clone()).unwrap();
    }
    // Let the send task fill the socket and park, waiting for room, before the close arrives:
    // wait (bounded) until it has written nothing for 100 ms.
    let mut sent = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        match events_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(support::SendEvent::Sent(msg)) => sent.push(msg),
            Ok(other) => panic!("unexpected: {other:?}"),
            Err(flume::RecvTimeoutError::Timeout) => break,
            Err(err) => panic!("{err}"),
        }
        assert!(
            Instant::now() < deadline,
            "the peer never stopped taking data"
        );
    }
    assert!(
        sent.len() < pushed.len(),
        "everything fit in the socket buffers"
    );
    let start = Instant::now();
    let closed = close(&pump, &outbox, LINGER);
    let end = recv(&closed, "the linger to expire");
    let elapsed = start.elapsed();
    assert_eq!(end.kind, "LingerExpired", "{end:?}");
    assert!(elapsed >= LINGER, "gave up before the linger: {elapsed:?}");
    assert!(elapsed < LINGER + SLACK, "gave up too late: {elapsed:?}");
    let (more, _, finished) = until_finished(&events_rx);
    sent.extend(more);
    assert_eq!(finished.kind, "LingerExpired");
    assert!(!end.unsent.is_empty(), "the peer read nothing");
    assert_eq!(sent.len() + end.unsent.len(), pushed.len());
    for (i, (a, b)) in sent.iter().chain(&end.unsent).zip(&pushed).enumerate() {
        assert!(same(a, b), "message {i} out of order");
    }
    drop(peer);
    assert_eq!(pump.stats().panics, 0);
}
