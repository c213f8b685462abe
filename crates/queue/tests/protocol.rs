//! Protocol errors: a peer announcing a frame above the maximum is disconnected with a protocol
//! error while the broker keeps serving its other queues, a `send` above it is refused, and random
//! bytes from a raw socket (seeded) never panic anything.
mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mixbus_queue::task::{Bytes, FrameError};
use mixbus_queue::{CloseInfo, CloseReason, MessageQueue, QueueConfig, QueueListener, SendError};
use support::{Echo, Rng, broker, recv, seed};

const MAX: usize = 64 << 10;
const WAIT: Duration = Duration::from_secs(10);

/// Echoes, and reports how each server queue closed.
struct Watched {
    echo: Echo,
    closed: flume::Sender<CloseInfo>,
}

impl QueueListener for Watched {
    fn received(&mut self, queue: &MessageQueue, msg: Bytes) {
        self.echo.received(queue, msg);
    }
    fn writable(&mut self, queue: &MessageQueue) {
        self.echo.writable(queue);
    }
    fn closed(&mut self, _queue: &MessageQueue, info: CloseInfo) {
        let _ = self.closed.send(info);
    }
}

fn watched_server(
    broker: &mixbus_queue::QueueBroker,
) -> (SocketAddr, flume::Receiver<CloseInfo>, Arc<AtomicUsize>) {
    let (tx, rx) = flume::unbounded();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let addr = broker
        .bind(support::any_port(), move |q: MessageQueue| {
            count.fetch_add(1, Ordering::SeqCst);
            q.set_listener(Watched {
                echo: Echo::new(),
                closed: tx.clone(),
            })
            .unwrap();
        })
        .unwrap();
    (addr, rx, accepted)
}

fn echo_check(broker: &mixbus_queue::QueueBroker, addr: SocketAddr, text: &str) {
    let client = broker
        .connect_blocking(addr)
        .unwrap()
        .into_blocking()
        .unwrap();
    client.send_timeout(text.to_owned(), WAIT).unwrap();
    assert_eq!(client.recv_timeout(WAIT).unwrap(), text);
    client.close();
    assert!(client.wait_closed(WAIT).is_some());
}

#[test]
fn smoke() {
    let (_pump, broker) = broker(QueueConfig::default().with_max_frame_len(MAX));
    let (addr, _closed, _) = watched_server(&broker);
    echo_check(&broker, addr, "fine");
}

#[test]
fn an_oversized_frame_disconnects_with_a_protocol_error() {
    let (pump, broker) = broker(QueueConfig::default().with_max_frame_len(MAX));
    let (addr, closed, _) = watched_server(&broker);
    // Another client, already open on the same address, before the bad one.
    let other = broker
        .connect_blocking(addr)
        .unwrap()
        .into_blocking()
        .unwrap();
    let mut raw = std::net::TcpStream::connect(addr).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let announced = MAX + 1;
    raw.write_all(&(announced as u32).to_be_bytes()).unwrap();
    raw.write_all(&[0u8; 100]).unwrap();
    let info = recv(&closed, "the bad queue's close");
    match info.reason {
        CloseReason::Protocol(FrameError::TooLarge { len, max }) => {
            assert_eq!((len, max), (announced, MAX));
        }
        other => panic!("expected a protocol error, got {other}"),
    }
    // The raw peer is disconnected: end of stream or a reset, not a timeout.
    let mut rest = Vec::new();
    if let Err(err) = raw.read_to_end(&mut rest) {
        assert_ne!(
            err.kind(),
            std::io::ErrorKind::WouldBlock,
            "not disconnected"
        );
        assert_ne!(err.kind(), std::io::ErrorKind::TimedOut, "not disconnected");
    }
    // The broker keeps serving: the open queue and a new one.
    other.send_timeout("still", WAIT).unwrap();
    assert_eq!(other.recv_timeout(WAIT).unwrap(), "still");
    echo_check(&broker, addr, "new one");
    assert_eq!(pump.stats().panics, 0);
}

/// Says why in one last message when the peer breaks the framing.
struct Farewell;

impl QueueListener for Farewell {
    fn received(&mut self, _queue: &MessageQueue, _msg: Bytes) {}
    fn protocol_error(&mut self, queue: &MessageQueue, err: &FrameError) {
        queue.send(format!("bye: {err}")).unwrap();
    }
}

#[test]
fn a_listener_may_say_why_before_a_protocol_error_closes_the_queue() {
    let (_pump, broker) = broker(QueueConfig::default().with_max_frame_len(MAX));
    let addr = broker
        .bind(support::any_port(), |q: MessageQueue| {
            q.set_listener(Farewell).unwrap()
        })
        .unwrap();
    let mut raw = std::net::TcpStream::connect(addr).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    // Only the header: nothing is left unread when the server closes (which would reset the
    // connection instead of ending it).
    raw.write_all(&((MAX + 1) as u32).to_be_bytes()).unwrap();
    let mut rest = Vec::new();
    raw.read_to_end(&mut rest)
        .expect("a farewell, then the end of the stream");
    let expected = format!(
        "bye: frame of {} bytes exceeds the {MAX}-byte limit",
        MAX + 1
    );
    let mut frame = (expected.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(expected.as_bytes());
    assert_eq!(rest, frame);
}

#[test]
fn a_send_above_the_maximum_is_refused() {
    let (_pump, broker) = broker(QueueConfig::default().with_max_frame_len(MAX));
    let addr = support::echo_server(&broker);
    let client = broker.connect_blocking(addr).unwrap();
    let big = Bytes::from(vec![1u8; MAX + 1]);
    match client.send(big.clone()) {
        Err(SendError::TooLarge { msg, len, max }) => {
            assert_eq!((msg, len, max), (big, MAX + 1, MAX));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // Exactly the maximum goes through.
    let client = client.into_blocking().unwrap();
    let max = Bytes::from(vec![2u8; MAX]);
    client.send_timeout(max.clone(), WAIT).unwrap();
    assert_eq!(client.recv_timeout(WAIT).unwrap(), max);
}

#[test]
fn random_bytes_never_panic_and_others_keep_working() {
    const ROUNDS: u64 = 50;
    let seed = seed();
    let mut rng = Rng::new(seed.0);
    let (pump, broker) = broker(QueueConfig::default().with_max_frame_len(MAX));
    let (addr, closed, accepted) = watched_server(&broker);
    let other = broker
        .connect_blocking(addr)
        .unwrap()
        .into_blocking()
        .unwrap();
    for round in 0..ROUNDS {
        let mut raw = std::net::TcpStream::connect(addr).unwrap();
        let mut junk = vec![0u8; rng.below(4096) as usize];
        rng.fill(&mut junk);
        // Now and then a plausible header first, so the decoder also sees frames that fit.
        if rng.below(3) == 0 && junk.len() >= 4 {
            let len = rng.below(junk.len() as u64) as u32;
            junk[..4].copy_from_slice(&len.to_be_bytes());
        }
        // The peer may have disconnected us already; a failed write is part of the game.
        let _ = raw.write_all(&junk);
        if rng.below(2) == 0 {
            let raw = mixbus_queue::task::pump::eventq::net::TcpStream::from_std(raw).unwrap();
            raw.set_linger(Some(Duration::ZERO)).unwrap();
        }
        if round % 10 == 9 {
            other.send_timeout(format!("round {round}"), WAIT).unwrap();
            assert_eq!(other.recv_timeout(WAIT).unwrap(), format!("round {round}"));
        }
    }
    // A connection made after the junk is accepted after every junk connection still pending
    // (a junk connection reset before its accept is dropped by the system, never a queue).
    echo_check(&broker, addr, "after the junk");
    // Every queue but `other` ends: the junk ones and the one just checked.
    let deadline = std::time::Instant::now() + WAIT;
    while closed.len() + 1 != accepted.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "{} queues accepted, {} closed; all but one should have closed",
            accepted.load(Ordering::SeqCst),
            closed.len()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(accepted.load(Ordering::SeqCst) >= 2);
    assert_eq!(pump.stats().panics, 0, "nothing panicked on the pump");
    other.send_timeout("end", WAIT).unwrap();
    assert_eq!(other.recv_timeout(WAIT).unwrap(), "end");
}
