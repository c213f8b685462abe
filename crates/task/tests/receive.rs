//! `ReceiveTask` against a raw peer: frames above the maximum are a protocol error, end of stream
//! is `Eof` between frames and `Truncated` inside one, and random bytes never panic.

mod support;

use std::io::Write;
use std::net::Shutdown;

use mixbus_task::pump::EventPump;
use mixbus_task::{
    Bytes, DEFAULT_MAX_FRAME_LEN, FrameError, ReceiveOutcome, ReceiveTask, TaskEvent, encode_header,
};

use support::{Rng, frames, frames_until_finished, pair, receive_events, seed};

/// Starts a receive task on the client end; returns the raw peer and the events.
fn receiving(
    pump: &EventPump,
    max: usize,
) -> (std::net::TcpStream, flume::Receiver<support::RecvEvent>) {
    let (client, peer) = pair();
    let (collector, events) = receive_events();
    ReceiveTask::new(pump, client, max, collector)
        .unwrap()
        .post(pump)
        .unwrap();
    (peer, events)
}

#[test]
fn smoke() {
    let pump = EventPump::new().unwrap();
    let (mut peer, events) = receiving(&pump, DEFAULT_MAX_FRAME_LEN);
    peer.write_all(&frames(&[b"one", b"", b"three"])).unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    let (got, outcome) = frames_until_finished(&events);
    assert_eq!(got, [&b"one"[..], b"", b"three"].map(Bytes::from_static));
    assert!(matches!(outcome, ReceiveOutcome::Eof), "{outcome:?}");
    assert_eq!(pump.stats().panics, 0);
}

#[test]
fn a_frame_above_the_maximum_is_a_protocol_error() {
    let pump = EventPump::new().unwrap();
    let (mut peer, events) = receiving(&pump, DEFAULT_MAX_FRAME_LEN);
    let mut wire = frames(&[b"before", b"also before"]);
    wire.extend_from_slice(&encode_header(20 * 1024 * 1024));
    wire.extend_from_slice(&[0xee; 1024]); // The start of a payload that must not be waited for.
    peer.write_all(&wire).unwrap();
    // The peer keeps the connection open: the error comes from the header alone.
    let (got, outcome) = frames_until_finished(&events);
    assert_eq!(
        got,
        [&b"before"[..], b"also before"].map(Bytes::from_static)
    );
    match outcome {
        ReceiveOutcome::Protocol(FrameError::TooLarge { len, max }) => {
            assert_eq!(len, 20 * 1024 * 1024);
            assert_eq!(max, DEFAULT_MAX_FRAME_LEN);
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert_eq!(pump.stats().panics, 0);
}

#[test]
fn end_of_stream_between_frames_is_eof() {
    let pump = EventPump::new().unwrap();
    let (mut peer, events) = receiving(&pump, 1024);
    let big = vec![7u8; 1024];
    peer.write_all(&frames(&[&big, b"x"])).unwrap();
    drop(peer);
    let (got, outcome) = frames_until_finished(&events);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], big);
    assert_eq!(got[1], &b"x"[..]);
    assert!(matches!(outcome, ReceiveOutcome::Eof), "{outcome:?}");
}

#[test]
fn end_of_stream_inside_a_frame_is_truncated() {
    for cut in [1, 3, 4, 5, 9] {
        let pump = EventPump::new().unwrap();
        let (mut peer, events) = receiving(&pump, 1024);
        let whole = frames(&[b"whole"]);
        let partial = frames(&[b"partial!"]); // 4 + 8 bytes; cut somewhere inside.
        peer.write_all(&whole).unwrap();
        peer.write_all(&partial[..cut]).unwrap();
        peer.shutdown(Shutdown::Write).unwrap();
        let (got, outcome) = frames_until_finished(&events);
        assert_eq!(got, [Bytes::from_static(b"whole")], "cut at {cut}");
        match outcome {
            ReceiveOutcome::Truncated { buffered } => assert_eq!(buffered, cut),
            other => panic!("cut at {cut}: expected Truncated, got {other:?}"),
        }
        assert_eq!(pump.stats().panics, 0);
    }
}

#[test]
fn random_bytes_never_panic() {
    let seed = seed();
    let mut rng = Rng::new(seed.0);
    let pump = EventPump::new().unwrap();
    for round in 0..40 {
        let max = 1usize << rng.below(25);
        let (mut peer, events) = receiving(&pump, max);
        // Garbage mixed with plausible frames, so that decoding gets somewhere before it fails.
        let mut wire = Vec::new();
        for _ in 0..1 + rng.below(20) {
            if rng.below(2) == 0 {
                let len = rng.below(2 * max as u64 + 2) as usize;
                wire.extend_from_slice(&(len as u32).to_be_bytes());
                let mut body = vec![0u8; len.min(4096)];
                rng.fill(&mut body);
                wire.extend_from_slice(&body);
            } else {
                let mut junk = vec![0u8; rng.below(4096) as usize];
                rng.fill(&mut junk);
                wire.extend_from_slice(&junk);
            }
        }
        // The task may close its end early (on a protocol error): write errors are expected.
        let _ = peer.write_all(&wire);
        if rng.below(2) == 0 {
            let _ = peer.shutdown(Shutdown::Write);
        } else {
            drop(peer);
        }
        let (_frames, outcome) = frames_until_finished(&events);
        assert!(
            !matches!(outcome, ReceiveOutcome::Stopped),
            "round {round}: {outcome:?}"
        );
    }
    assert_eq!(pump.stats().panics, 0);
}
