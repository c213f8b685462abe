//! queue benches: one-way throughput and round-trip latency between two pumps over loopback,
//! each against a raw blocking `std::net::TcpStream` baseline sending the same frames.
//!
//! Run with `cargo bench --bench queue`. Ids read `queue_throughput/<case>/<size>` and
//! `queue_latency/<case>/<size>`. Throughput cases: `queue` (one `send` per message from a
//! thread, one `Bytes` per message received), `queue_batched` (`send_all` from a thread, batches
//! read in place), `queue_on_pump` (`send_all` from a task on the sending pump, batches read in
//! place), `queue_copied` (`send_copied` of borrowed payloads from a task on the sending pump,
//! read in place) and `raw_tcp`; latency cases: `queue`, `queue_pumps` and `raw_tcp`.
use std::collections::VecDeque;
use std::hint::black_box;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use mixbus::pump::{Context, EventPump, FnTask, Next};
use mixbus::queue::task::{Bytes, Frames};
use mixbus::queue::{MessageQueue, QueueBroker, QueueConfig, QueueListener, SendError};

/// Message sizes of the throughput group.
const SIZES: [usize; 3] = [16, 256, 4096];
/// Message size of the latency group.
const PING: usize = 64;
/// Samples per case.
const SAMPLES: usize = 10;
/// Measurement time per case.
const MEASURE: Duration = Duration::from_secs(3);
/// How long a batch may take before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(60);

/// Messages per measured batch: about 50-200 ms of queue work at each size (the raw baseline
/// is faster at small sizes).
fn batch(size: usize) -> u64 {
    match size {
        0..=64 => 1_000_000,
        65..=1024 => 500_000,
        _ => 100_000,
    }
}

/// Distinct messages of one size to send in turn, as an application sends different messages:
/// each is its own buffer, so sending one touches its own reference count, not one shared by
/// every message (which two threads would fight over: the bench thread cloning, the writer
/// dropping).
#[derive(Clone)]
struct Messages(Vec<Bytes>);

impl Messages {
    /// How many distinct buffers (1,024 small ones fit in the caches, like a batch in flight).
    const COUNT: usize = 1024;

    fn new(msg: &Bytes) -> Messages {
        Messages(
            (0..Self::COUNT)
                .map(|_| Bytes::copy_from_slice(msg))
                .collect(),
        )
    }

    /// Message `i` (of any count), a zero-copy clone.
    fn get(&self, i: u64) -> Bytes {
        self.0[(i % Self::COUNT as u64) as usize].clone()
    }
}

/// Counts messages on the receiving pump and signals each completed batch.
struct Counter {
    count: u64,
    target: Arc<AtomicU64>,
    done: flume::Sender<()>,
    /// Read each batch in place (`received_frames`) instead of one `Bytes` per message.
    in_place: bool,
}

impl Counter {
    fn count(&mut self) {
        self.count += 1;
        if self.count == self.target.load(Ordering::Relaxed) {
            self.count = 0;
            let _ = self.done.send(());
        }
    }
}

impl QueueListener for Counter {
    fn received(&mut self, _queue: &MessageQueue, msg: Bytes) {
        black_box(msg);
        self.count();
    }

    fn received_frames(&mut self, queue: &MessageQueue, frames: &Frames) {
        if !self.in_place {
            for msg in frames.iter_bytes() {
                self.received(queue, msg);
            }
            return;
        }
        for msg in frames.iter() {
            black_box(msg);
            self.count();
        }
    }
}

/// Signals `writable` to the sending thread.
struct Room(flume::Sender<()>);

impl QueueListener for Room {
    fn received(&mut self, _queue: &MessageQueue, _msg: Bytes) {}
    fn writable(&mut self, _queue: &MessageQueue) {
        let _ = self.0.try_send(());
    }
}

/// Two pumps, two brokers, one connection: (pumps, sending queue, accepted queue).
fn queue_pair() -> ([EventPump; 2], MessageQueue, MessageQueue) {
    let server_pump = EventPump::new().expect("pump");
    let client_pump = EventPump::new().expect("pump");
    let server = QueueBroker::new(server_pump.handle(), QueueConfig::default());
    let client = QueueBroker::new(client_pump.handle(), QueueConfig::default());
    let (tx, rx) = flume::bounded(1);
    let addr = server
        .bind("127.0.0.1:0".parse().unwrap(), move |q: MessageQueue| {
            let _ = tx.send(q);
        })
        .expect("bind");
    let sender = client.connect_blocking(addr).expect("connect");
    let receiver = rx.recv_timeout(PATIENCE).expect("accepted");
    server.unbind(addr).expect("unbind");
    ([server_pump, client_pump], sender, receiver)
}

fn send_all(queue: &MessageQueue, room: &flume::Receiver<()>, msgs: &Messages, n: u64) {
    for i in 0..n {
        let mut m = msgs.get(i);
        loop {
            match queue.send(m) {
                Ok(()) => break,
                Err(SendError::Full { msg, .. }) => {
                    m = msg;
                    room.recv_timeout(PATIENCE).expect("writable");
                }
                Err(err) => panic!("send: {err}"),
            }
        }
    }
}

/// Sends `n` copies of `msg` with `send_all`, 1,024 at a time, waiting for room when the
/// outbound queue is full.
fn send_batched(sender: &MessageQueue, room: &flume::Receiver<()>, msgs: &Messages, n: u64) {
    let mut batch = std::collections::VecDeque::with_capacity(1024);
    let mut left = n;
    while left > 0 || !batch.is_empty() {
        while batch.len() < 1024 && left > 0 {
            batch.push_back(msgs.get(left));
            left -= 1;
        }
        sender.send_all(&mut batch).expect("send_all");
        if !batch.is_empty() {
            room.recv_timeout(PATIENCE).expect("room");
        }
    }
}

/// A raw reader thread: parses length-prefixed frames and signals every `n`.
fn raw_reader(stream: TcpStream, target: Arc<AtomicU64>, done: flume::Sender<()>) {
    thread::spawn(move || {
        let mut r = BufReader::with_capacity(256 << 10, stream);
        let mut buf = vec![0u8; 1 << 20];
        let mut count = 0u64;
        loop {
            let mut header = [0u8; 4];
            if r.read_exact(&mut header).is_err() {
                return;
            }
            let len = u32::from_be_bytes(header) as usize;
            if r.read_exact(&mut buf[..len]).is_err() {
                return;
            }
            black_box(&buf[..len]);
            count += 1;
            if count == target.load(Ordering::Relaxed) {
                count = 0;
                let _ = done.send(());
            }
        }
    });
}

fn raw_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
    let (b, _) = listener.accept().expect("accept");
    a.set_nodelay(true).unwrap();
    b.set_nodelay(true).unwrap();
    (a, b)
}

/// One-way throughput through a queue pair: `send` pushes `n` messages from this thread, a
/// counting listener on the other pump signals when all arrived.
fn bench_queue(
    b: &mut criterion::Bencher<'_>,
    msgs: &Messages,
    n: u64,
    send: fn(&MessageQueue, &flume::Receiver<()>, &Messages, u64),
    in_place: bool,
) {
    let (_pumps, sender, receiver) = queue_pair();
    let done = count_received(&receiver, n, in_place);
    let (room_tx, room) = flume::bounded(1);
    sender.set_listener(Room(room_tx)).expect("listener");
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let start = Instant::now();
            send(&sender, &room, msgs, n);
            done.recv_timeout(PATIENCE).expect("all received");
            total += start.elapsed();
        }
        total
    });
    sender.close();
}

/// Sets a [`Counter`] on `receiver`; the returned channel ticks once per `n` messages.
fn count_received(receiver: &MessageQueue, n: u64, in_place: bool) -> flume::Receiver<()> {
    let (done_tx, done) = flume::unbounded();
    receiver
        .set_listener(Counter {
            count: 0,
            target: Arc::new(AtomicU64::new(n)),
            done: done_tx,
            in_place,
        })
        .expect("listener");
    done
}

/// What the producing task on the sending pump has left to send.
struct Produce {
    queue: MessageQueue,
    msgs: Messages,
    left: u64,
    batch: VecDeque<Bytes>,
    /// Send with `send_copied` from the messages in place instead of `send_all` of handles.
    copied: bool,
    /// Where `send_copied` goes on in `msgs`.
    next: usize,
}

impl Produce {
    /// Sends with `send_copied` up to 1,024 messages from where the count left stands; returns
    /// false when the queue is full.
    fn send_copied(&mut self) -> bool {
        let all = &self.msgs.0;
        let from = self.next;
        let end = (from + self.left.min(1024) as usize).min(all.len());
        let taken = self
            .queue
            .send_copied(&all[from..end])
            .expect("send_copied");
        self.left -= taken as u64;
        self.next = (from + taken) % all.len();
        taken == end - from
    }
}

/// A task on the sending pump that sends what `state` has left with `send_all`, 1,024 at a time;
/// when the queue is full it ends, and the sender's `writable` notice posts it again.
fn produce(state: Arc<Mutex<Produce>>) -> FnTask<impl FnMut(&mut Context<'_>) -> Next + Send> {
    FnTask::new("produce", move |cx: &mut Context<'_>| {
        let mut guard = state.lock().expect("producer state");
        let p = &mut *guard;
        while p.copied {
            if p.left == 0 {
                return Next::Done;
            }
            if !p.send_copied() {
                return Next::Done; // Full: `writable` posts the next run.
            }
            if cx.should_yield() {
                return Next::Repost;
            }
        }
        loop {
            while p.batch.len() < 1024 && p.left > 0 {
                p.batch.push_back(p.msgs.get(p.left));
                p.left -= 1;
            }
            if p.batch.is_empty() {
                return Next::Done;
            }
            p.queue.send_all(&mut p.batch).expect("send_all");
            if !p.batch.is_empty() {
                return Next::Done; // Full: `writable` posts the next run.
            }
            if cx.should_yield() {
                return Next::Repost;
            }
        }
    })
}

/// Posts the producer again when the sending queue has room.
struct Resume(Arc<Mutex<Produce>>);

impl QueueListener for Resume {
    fn received(&mut self, _queue: &MessageQueue, _msg: Bytes) {}
    fn writable(&mut self, queue: &MessageQueue) {
        let _ = queue.pump().post(produce(self.0.clone()));
    }
}

/// One-way throughput with the producer on the sending pump itself (as an event-driven
/// application sends): two threads at work, like the raw baseline.
fn bench_on_pump(b: &mut criterion::Bencher<'_>, msgs: &Messages, n: u64, copied: bool) {
    let (_pumps, sender, receiver) = queue_pair();
    let done = count_received(&receiver, n, true);
    let state = Arc::new(Mutex::new(Produce {
        queue: sender.clone(),
        msgs: msgs.clone(),
        left: 0,
        batch: VecDeque::with_capacity(1024),
        copied,
        next: 0,
    }));
    sender
        .set_listener(Resume(state.clone()))
        .expect("listener");
    b.iter_custom(|iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let start = Instant::now();
            state.lock().expect("producer state").left = n;
            sender.pump().post(produce(state.clone())).expect("post");
            done.recv_timeout(PATIENCE).expect("all received");
            total += start.elapsed();
        }
        total
    });
    sender.close();
}

fn throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue_throughput");
    group.sample_size(SAMPLES).measurement_time(MEASURE);
    for size in SIZES {
        let n = batch(size);
        group.throughput(Throughput::Elements(n));
        let msg = Bytes::from(vec![0xa5u8; size]);
        let msgs = Messages::new(&msg);

        type Send = fn(&MessageQueue, &flume::Receiver<()>, &Messages, u64);
        // `queue`: one `send` and one `Bytes` per message; `queue_batched`: `send_all` and
        // reading each received batch in place.
        let cases: [(&str, Send, bool); 2] = [
            ("queue", send_all, false),
            ("queue_batched", send_batched, true),
        ];
        for (case, send, in_place) in cases {
            group.bench_function(BenchmarkId::new(case, size), |b| {
                bench_queue(b, &msgs, n, send, in_place)
            });
        }
        // `queue_on_pump`: `send_all` from a task on the sending pump, read in place;
        // `queue_copied`: the same with `send_copied` (no handle per message).
        for (case, copied) in [("queue_on_pump", false), ("queue_copied", true)] {
            group.bench_function(BenchmarkId::new(case, size), |b| {
                bench_on_pump(b, &msgs, n, copied)
            });
        }

        group.bench_function(BenchmarkId::new("raw_tcp", size), |b| {
            let (writer, reader) = raw_pair();
            let target = Arc::new(AtomicU64::new(n));
            let (done_tx, done) = flume::unbounded();
            raw_reader(reader, target, done_tx);
            let mut w = BufWriter::with_capacity(64 << 10, writer);
            let header = (size as u32).to_be_bytes();
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    for _ in 0..n {
                        w.write_all(&header).unwrap();
                        w.write_all(&msg).unwrap();
                    }
                    w.flush().unwrap();
                    done.recv_timeout(PATIENCE).expect("all received");
                    total += start.elapsed();
                }
                total
            });
        });
    }
    group.finish();
}

/// Forwards each message to the pinging thread.
struct Pong(flume::Sender<Bytes>);

impl QueueListener for Pong {
    fn received(&mut self, _queue: &MessageQueue, msg: Bytes) {
        let _ = self.0.send(msg);
    }
}

/// Echoes on its pump.
struct Echo;

impl QueueListener for Echo {
    fn received(&mut self, queue: &MessageQueue, msg: Bytes) {
        queue.send(msg).expect("echo");
    }
}

/// Plays ping-pong on its pump: each pong sends the next ping until the round is done, so a
/// round trip crosses only the two pumps (as the raw baseline crosses only its two threads).
struct Rally {
    left: Arc<AtomicU64>,
    done: flume::Sender<()>,
}

impl QueueListener for Rally {
    fn received(&mut self, queue: &MessageQueue, msg: Bytes) {
        if self.left.fetch_sub(1, Ordering::Relaxed) > 1 {
            queue.send(msg).expect("ping");
        } else {
            let _ = self.done.send(());
        }
    }
}

fn latency(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue_latency");
    group.sample_size(SAMPLES).measurement_time(MEASURE);
    let msg = Bytes::from(vec![0x5au8; PING]);

    group.bench_function(BenchmarkId::new("queue", PING), |b| {
        let (_pumps, pinger, echo) = queue_pair();
        echo.set_listener(Echo).expect("listener");
        let (tx, rx) = flume::unbounded();
        pinger.set_listener(Pong(tx)).expect("listener");
        b.iter(|| {
            pinger.send(msg.clone()).expect("send");
            black_box(rx.recv_timeout(PATIENCE).expect("pong"));
        });
        pinger.close();
    });

    group.bench_function(BenchmarkId::new("queue_pumps", PING), |b| {
        let (_pumps, pinger, echo) = queue_pair();
        echo.set_listener(Echo).expect("listener");
        let left = Arc::new(AtomicU64::new(0));
        let (tx, rx) = flume::unbounded();
        pinger
            .set_listener(Rally {
                left: left.clone(),
                done: tx,
            })
            .expect("listener");
        b.iter_custom(|iters| {
            left.store(iters, Ordering::Relaxed);
            let start = Instant::now();
            pinger.send(msg.clone()).expect("send");
            rx.recv_timeout(PATIENCE).expect("rally done");
            start.elapsed()
        });
        pinger.close();
    });

    group.bench_function(BenchmarkId::new("raw_tcp", PING), |b| {
        let (mut a, peer) = raw_pair();
        thread::spawn(move || {
            let mut peer = peer;
            let mut frame = [0u8; 4 + PING];
            while peer.read_exact(&mut frame).is_ok() {
                if peer.write_all(&frame).is_err() {
                    return;
                }
            }
        });
        let mut frame = [0x5au8; 4 + PING];
        frame[..4].copy_from_slice(&(PING as u32).to_be_bytes());
        let mut back = [0u8; 4 + PING];
        b.iter(|| {
            a.write_all(&frame).unwrap();
            a.read_exact(&mut back).unwrap();
            black_box(&back);
        });
    });
    group.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    throughput(&mut c);
    latency(&mut c);
    c.final_summary();
}
