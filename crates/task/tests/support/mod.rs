//! Helpers shared by the task layer's integration tests: loopback pairs, bounded waits, a seeded
//! RNG, frame payloads and event collectors that forward what the pump thread sees.
#![allow(dead_code)]

use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mixbus_task::pump::eventq::net::TcpStream;
use mixbus_task::pump::{Context, PumpHandle};
use mixbus_task::{
    Bytes, BytesMut, Flow, FrameDecoder, ReceiveEvents, ReceiveOutcome, SendEvents, SendOutcome,
    encode,
};

/// How long any test waits for something that should happen soon.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// Slack for "not late" assertions: generous, since CI machines may be slow and have few cores.
pub(crate) const SLACK: Duration = Duration::from_secs(3);

/// Receives one message or panics after [`PATIENCE`], naming what was awaited.
pub(crate) fn recv<T>(rx: &flume::Receiver<T>, what: &str) -> T {
    rx.recv_timeout(PATIENCE)
        .unwrap_or_else(|err| panic!("waiting for {what}: {err}"))
}

/// Waits until `cond` holds, checking in bounded rounds, or panics after [`PATIENCE`].
pub(crate) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {PATIENCE:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until every task posted to `pump` before this call has run (posts run in FIFO order).
pub(crate) fn barrier(pump: &PumpHandle) {
    let (tx, rx) = flume::bounded(1);
    pump.post_fn("barrier", move |_cx| {
        let _ = tx.send(());
    })
    .expect("pump is running");
    recv(&rx, "the pump barrier");
}

/// A connected loopback pair: (non-blocking client for the tasks, blocking std peer).
pub(crate) fn pair() -> (TcpStream, std::net::TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (peer, _) = listener.accept().unwrap();
    (TcpStream::from_std(client).unwrap(), peer)
}

/// A local address nothing listens on (bound once, then released).
pub(crate) fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

// Not every test file uses every helper.
#[allow(unused_imports)]
pub(crate) use mixbus_testkit::{Rng, Seed, seed};

/// The payload of frame `index`: `len` bytes derived from the index, so it can be checked.
/// Frames of 8 bytes or more start with the index (little-endian).
pub(crate) fn payload(index: u64, len: usize) -> Bytes {
    let mut buf = vec![0u8; len];
    fill_payload(index, &mut buf);
    Bytes::from(buf)
}

fn fill_payload(index: u64, buf: &mut [u8]) {
    let mut x = index.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    if buf.len() >= 8 {
        buf[..8].copy_from_slice(&index.to_le_bytes());
    }
}

/// Panics unless `frame` is exactly frame `index` of `len` bytes.
pub(crate) fn check_payload(index: u64, len: usize, frame: &[u8]) {
    assert_eq!(frame.len(), len, "frame {index}: length");
    let mut expected = vec![0u8; len];
    fill_payload(index, &mut expected);
    assert!(frame == &expected[..], "frame {index}: payload corrupted");
}

/// The wire bytes of `payloads`, framed.
pub(crate) fn frames(payloads: &[&[u8]]) -> BytesMut {
    let mut wire = BytesMut::new();
    for p in payloads {
        encode(p, &mut wire);
    }
    wire
}

/// Reads `n` frames from a blocking reader, `piece` bytes at most per read.
pub(crate) fn read_frames(r: &mut impl Read, n: usize) -> io::Result<Vec<Bytes>> {
    let mut decoder = FrameDecoder::default();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        while let Some(frame) = decoder.decode().map_err(io::Error::other)? {
            out.push(frame);
        }
        if out.len() == n {
            break;
        }
        if decoder.read_from(r, 256 * 1024)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(out)
}

/// How a send side ended, as seen on the pump thread (the outcome itself is only lent).
#[derive(Debug)]
pub(crate) struct SendEnd {
    /// `Flushed`, `LingerExpired`, `Failed` or `Aborted`.
    pub(crate) kind: &'static str,
    /// The failure's kind and message, for `Failed`.
    pub(crate) reason: Option<(io::ErrorKind, String)>,
    pub(crate) unsent: Vec<Bytes>,
}

impl SendEnd {
    pub(crate) fn of(outcome: &SendOutcome) -> SendEnd {
        let (kind, reason) = match outcome {
            SendOutcome::Flushed => ("Flushed", None),
            SendOutcome::LingerExpired { .. } => ("LingerExpired", None),
            SendOutcome::Failed { reason, .. } => {
                ("Failed", Some((reason.kind(), reason.to_string())))
            }
            SendOutcome::Aborted { .. } => ("Aborted", None),
            _ => ("unknown", None),
        };
        SendEnd {
            kind,
            reason,
            unsent: outcome.unsent().to_vec(),
        }
    }
}

/// What a send side reported.
#[derive(Debug)]
pub(crate) enum SendEvent {
    Sent(Bytes),
    Drained,
    Finished(SendEnd),
}

/// [`SendEvents`] that forwards everything into a channel.
#[derive(Debug)]
pub(crate) struct ForwardSend(pub(crate) flume::Sender<SendEvent>);

impl SendEvents for ForwardSend {
    fn sent(&mut self, msg: Bytes, _cx: &mut Context<'_>) {
        let _ = self.0.send(SendEvent::Sent(msg));
    }

    fn drained(&mut self, _cx: &mut Context<'_>) {
        let _ = self.0.send(SendEvent::Drained);
    }

    fn finished(&mut self, outcome: &SendOutcome, _cx: &mut Context<'_>) {
        let _ = self.0.send(SendEvent::Finished(SendEnd::of(outcome)));
    }
}

/// A forwarding send collector and the receiver of its events.
pub(crate) fn send_events() -> (ForwardSend, flume::Receiver<SendEvent>) {
    let (tx, rx) = flume::unbounded();
    (ForwardSend(tx), rx)
}

/// An outbox whose peer never reads: a 4 KiB send buffer and `write_timeout`, with its events and
/// the peer (drop it to end the stall).
pub(crate) fn stalled_outbox(
    pump: &mixbus_task::pump::EventPump,
    write_timeout: Duration,
) -> (
    mixbus_task::Outbox,
    flume::Receiver<SendEvent>,
    std::net::TcpStream,
) {
    let (client, peer) = pair();
    client.set_send_buffer_size(4096).unwrap();
    let (events, rx) = send_events();
    let options = mixbus_task::SendOptions::default().with_write_timeout(write_timeout);
    let outbox = mixbus_task::SendTask::start(pump, client, options, None, events).unwrap();
    (outbox, rx, peer)
}

/// Collects send events until `Finished`: (messages sent, in order; drained count; the end).
pub(crate) fn until_finished(rx: &flume::Receiver<SendEvent>) -> (Vec<Bytes>, usize, SendEnd) {
    let mut sent = Vec::new();
    let mut drained = 0;
    loop {
        match recv(rx, "the send side to finish") {
            SendEvent::Sent(msg) => sent.push(msg),
            SendEvent::Drained => drained += 1,
            SendEvent::Finished(end) => return (sent, drained, end),
        }
    }
}

/// Whether two messages are the same one (same bytes in the same place).
pub(crate) fn same(a: &Bytes, b: &Bytes) -> bool {
    a.len() == b.len() && (a.is_empty() || a.as_ptr() == b.as_ptr())
}

/// What a receive side reported.
#[derive(Debug)]
pub(crate) enum RecvEvent {
    Frame(Bytes),
    Finished(ReceiveOutcome),
}

/// [`ReceiveEvents`] that forwards everything into a channel.
#[derive(Debug)]
pub(crate) struct ForwardReceive(pub(crate) flume::Sender<RecvEvent>);

impl ReceiveEvents for ForwardReceive {
    fn received(&mut self, frame: Bytes, _cx: &mut Context<'_>) -> Flow {
        let _ = self.0.send(RecvEvent::Frame(frame));
        Flow::Continue
    }

    fn finished(&mut self, outcome: ReceiveOutcome, _cx: &mut Context<'_>) {
        let _ = self.0.send(RecvEvent::Finished(outcome));
    }
}

/// A forwarding receive collector and the receiver of its events.
pub(crate) fn receive_events() -> (ForwardReceive, flume::Receiver<RecvEvent>) {
    let (tx, rx) = flume::unbounded();
    (ForwardReceive(tx), rx)
}

/// Collects frames until `Finished`: (frames in order, the outcome).
pub(crate) fn frames_until_finished(
    rx: &flume::Receiver<RecvEvent>,
) -> (Vec<Bytes>, ReceiveOutcome) {
    let mut frames = Vec::new();
    loop {
        match recv(rx, "the receive side to finish") {
            RecvEvent::Frame(frame) => frames.push(frame),
            RecvEvent::Finished(outcome) => return (frames, outcome),
        }
    }
}
