//! Helpers shared by the queue layer's integration tests: pumps and brokers, loopback queue pairs,
//! bounded waits, a seeded RNG, checkable payloads and listeners that forward what the pump sees.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mixbus_queue::task::Bytes;
use mixbus_queue::task::pump::EventPump;
use mixbus_queue::{CloseInfo, MessageQueue, QueueBroker, QueueConfig, QueueListener, SendError};

/// How long any test waits for something that should happen soon.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// Slack for "not late" assertions: generous, since CI machines may be slow and have few cores.
pub(crate) const SLACK: Duration = Duration::from_secs(3);

/// Receives one message or panics after [`PATIENCE`], naming what was awaited.
pub(crate) fn recv<T>(rx: &flume::Receiver<T>, what: &str) -> T {
    rx.recv_timeout(PATIENCE)
        .unwrap_or_else(|err| panic!("waiting for {what}: {err}"))
}

/// Waits until `cond` holds, checking in bounded rounds, or panics after `limit`.
pub(crate) fn wait_until_within(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until `cond` holds, checking in bounded rounds, or panics after [`PATIENCE`].
pub(crate) fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_until_within(PATIENCE, what, cond);
}

/// A pump and a broker on it.
pub(crate) fn broker(config: QueueConfig) -> (EventPump, QueueBroker) {
    let pump = EventPump::new().expect("a pump");
    let broker = QueueBroker::new(pump.handle(), config);
    (pump, broker)
}

/// Binds `127.0.0.1:0` and hands every accepted queue (without a listener) to the receiver.
pub(crate) fn bind_channel(broker: &QueueBroker) -> (SocketAddr, flume::Receiver<MessageQueue>) {
    let (tx, rx) = flume::unbounded();
    let addr = broker
        .bind(any_port(), move |queue: MessageQueue| {
            let _ = tx.send(queue);
        })
        .expect("bind");
    (addr, rx)
}

/// Binds `127.0.0.1:0` with a server that echoes every message.
pub(crate) fn echo_server(broker: &QueueBroker) -> SocketAddr {
    broker
        .bind(any_port(), |queue: MessageQueue| {
            queue
                .set_listener(Echo::new())
                .expect("set the echo listener");
        })
        .expect("bind")
}

/// `127.0.0.1:0`.
pub(crate) fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A local address nothing listens on (bound once, then released).
pub(crate) fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A connected pair on one broker: (client, server), neither with a listener yet.
pub(crate) fn pair(broker: &QueueBroker) -> (MessageQueue, MessageQueue) {
    let (addr, accepted) = bind_channel(broker);
    let client = broker.connect_blocking(addr).expect("connect");
    let server = recv(&accepted, "the accepted queue");
    broker.unbind(addr).expect("unbind");
    (client, server)
}

/// Echoes every message back, in order; what a full queue refuses waits in a backlog until
/// `writable`.
#[derive(Debug, Default)]
pub(crate) struct Echo {
    backlog: std::collections::VecDeque<Bytes>,
}

impl Echo {
    pub(crate) fn new() -> Echo {
        Echo::default()
    }

    fn flush(&mut self, queue: &MessageQueue) {
        while let Some(msg) = self.backlog.pop_front() {
            match queue.send(msg) {
                Ok(()) => {}
                Err(SendError::Full { msg, .. }) => {
                    self.backlog.push_front(msg);
                    return;
                }
                // The queue is closing: the echo is moot.
                Err(SendError::Closed(_)) => return self.backlog.clear(),
                Err(err) => panic!("echo send: {err}"),
            }
        }
    }
}

impl QueueListener for Echo {
    fn received(&mut self, queue: &MessageQueue, msg: Bytes) {
        self.backlog.push_back(msg);
        self.flush(queue);
    }

    fn writable(&mut self, queue: &MessageQueue) {
        self.flush(queue);
    }
}

/// One callback a [`Forward`] listener saw.
#[derive(Debug)]
pub(crate) enum Ev {
    Received(Bytes),
    Sent(Bytes),
    Writable,
    Closed(CloseInfo),
}

/// Forwards every callback into a channel. It holds the only sender: once `closed` ran and the
/// queue dropped the listener, the channel disconnects, so "no callback after `closed`" is
/// checked by the receiver seeing the disconnect (not a timeout) right after the `Closed` event.
#[derive(Debug)]
pub(crate) struct Forward {
    tx: flume::Sender<Ev>,
    closed: bool,
}

impl Forward {
    pub(crate) fn new() -> (Forward, flume::Receiver<Ev>) {
        let (tx, rx) = flume::unbounded();
        (Forward { tx, closed: false }, rx)
    }

    fn emit(&mut self, ev: Ev) {
        assert!(!self.closed, "a callback ran after `closed`: {ev:?}");
        let _ = self.tx.send(ev);
    }
}

impl QueueListener for Forward {
    fn received(&mut self, _queue: &MessageQueue, msg: Bytes) {
        self.emit(Ev::Received(msg));
    }
    fn sent(&mut self, _queue: &MessageQueue, msg: Bytes) {
        self.emit(Ev::Sent(msg));
    }
    fn writable(&mut self, _queue: &MessageQueue) {
        self.emit(Ev::Writable);
    }
    fn closed(&mut self, _queue: &MessageQueue, info: CloseInfo) {
        self.emit(Ev::Closed(info));
        self.closed = true;
    }
}

/// Everything a [`Forward`] listener saw up to and including `closed`.
#[derive(Debug)]
pub(crate) struct Seen {
    pub(crate) received: Vec<Bytes>,
    pub(crate) sent: Vec<Bytes>,
    pub(crate) writable: usize,
    pub(crate) closed: CloseInfo,
}

/// Collects events until `closed` (within `limit`), then checks that no callback follows it: the
/// listener must be dropped, which disconnects the channel.
pub(crate) fn until_closed_within(rx: &flume::Receiver<Ev>, limit: Duration, who: &str) -> Seen {
    let deadline = Instant::now() + limit;
    let mut received = Vec::new();
    let mut sent = Vec::new();
    let mut writable = 0;
    loop {
        match rx.recv_deadline(deadline) {
            Ok(Ev::Received(msg)) => received.push(msg),
            Ok(Ev::Sent(msg)) => sent.push(msg),
            Ok(Ev::Writable) => writable += 1,
            Ok(Ev::Closed(closed)) => {
                match rx.recv_timeout(PATIENCE) {
                    Err(flume::RecvTimeoutError::Disconnected) => {}
                    Ok(ev) => panic!("{who}: a callback after `closed`: {ev:?}"),
                    Err(err) => panic!("{who}: listener not dropped after `closed`: {err}"),
                }
                return Seen {
                    received,
                    sent,
                    writable,
                    closed,
                };
            }
            Err(err) => panic!(
                "{who}: no `closed` within {limit:?} ({err}; {} received, {} sent so far)",
                received.len(),
                sent.len()
            ),
        }
    }
}

/// [`until_closed_within`] with [`PATIENCE`].
pub(crate) fn until_closed(rx: &flume::Receiver<Ev>, who: &str) -> Seen {
    until_closed_within(rx, PATIENCE, who)
}

// Not every test file uses every helper.
#[allow(unused_imports)]
pub(crate) use mixbus_testkit::{Rng, Seed, seed};

/// The payload of message `index` of stream `stream`: `len` bytes derived from both, so the
/// receiver can check it whole. Messages of 8 bytes or more start with the index (little-endian).
pub(crate) fn payload(stream: u64, index: u64, len: usize) -> Bytes {
    let mut buf = vec![0u8; len];
    let mut x = word(stream, index);
    for chunk in buf.chunks_mut(8) {
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    }
    if len >= 8 {
        buf[..8].copy_from_slice(&index.to_le_bytes());
    }
    Bytes::from(buf)
}

fn word(stream: u64, index: u64) -> u64 {
    let mut z = stream
        .wrapping_mul(0xbf58_476d_1ce4_e5b9)
        .wrapping_add(index.wrapping_mul(0x94d0_49bb_1331_11eb))
        .wrapping_add(1);
    z ^= z >> 31;
    z
}

/// Messages `from..from + n` of `stream`, their sizes taken from `sizes` in turn.
pub(crate) fn payloads(stream: u64, from: u64, n: u64, sizes: &[usize]) -> Vec<Bytes> {
    (from..from + n)
        .map(|i| payload(stream, i, sizes[(i % sizes.len() as u64) as usize]))
        .collect()
}

/// A listener that takes nothing back and says (on its channel) when there is room again.
pub(crate) struct RoomSignal(pub(crate) flume::Sender<()>);

impl QueueListener for RoomSignal {
    fn received(&mut self, _queue: &MessageQueue, _msg: Bytes) {}
    fn writable(&mut self, _queue: &MessageQueue) {
        let _ = self.0.try_send(());
    }
}

/// Receives `n` messages on a [`Forward`] listener's channel, passing over `sent` and `writable`
/// notices; `closed` first is a failure.
pub(crate) fn receive(rx: &flume::Receiver<Ev>, n: usize) -> Vec<Bytes> {
    let mut got = Vec::new();
    while got.len() < n {
        match recv(rx, "the messages") {
            Ev::Received(msg) => got.push(msg),
            Ev::Sent(_) | Ev::Writable => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    got
}

/// The index a payload of 8 bytes or more carries.
pub(crate) fn index_of(msg: &[u8]) -> Option<u64> {
    msg.get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
}

/// Whether `msg` is exactly message `index` of `stream`, `len` bytes long (every byte checked).
pub(crate) fn is_payload(stream: u64, index: u64, len: usize, msg: &[u8]) -> bool {
    if msg.len() != len {
        return false;
    }
    if len >= 8 && index_of(msg) != Some(index) {
        return false;
    }
    let mut x = word(stream, index);
    for (i, chunk) in msg.chunks(8).enumerate() {
        let want = x.to_le_bytes();
        if (i > 0 || len < 8) && chunk != &want[..chunk.len()] {
            return false;
        }
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    }
    true
}

/// Counts this process's open file descriptors.
pub(crate) fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

/// The soft limit on open descriptors, from `/proc/self/limits`.
pub(crate) fn fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}
