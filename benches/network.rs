//! network benches: the bus through a `BusServer` over loopback, beside a raw one-hop TCP baseline.
//!
//! Run with `cargo bench --bench network`. Ids read `network_throughput/<case>/<size>` (one
//! publisher to one subscriber, cases `bus`, `bus_inline` (an inline handler), `bus_2pumps`
//! (a server on two pumps) and `raw_tcp`), `network_fanout/<case>/<size>` (to 4 subscribers,
//! cases `bus`, `bus_inline` and `bus_2pumps`), `network_group/<case>/<size>` (a group of 2
//! members acking by hand, cases `bus_manual_ack`, `bus_inline_manual_ack` and
//! `bus_2pumps_manual_ack`) and `network_latency/<case>/<size>` (cases `bus_request_reply`,
//! `bus_request_reply_inline`, `bus_request_reply_2pumps`, `bus_request_reply_spin` and
//! `bus_request_reply_inline_spin` (a server on one pump, it and its clients spinning 150 µs
//! before they sleep),
//! `bus_publish_confirm`, `raw_tcp`).
//! With `MIXBUS_NATS_ADDR=127.0.0.1:4222` set, the same throughput, fan-out, group and
//! request/reply cases also run against that nats-server (`network_throughput/nats/<size>`,
//! `network_fanout/nats/256`, `network_group/nats_queue_group/256` (no acks: NATS has none),
//! `network_latency/nats_request_reply/64`).
use std::hint::black_box;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use mixbus::bus::{
    Broker, BusServer, Bytes, Handler, InMemoryConfig, Message, RemoteBroker, RemoteConfig,
    ServerConfig, SubscribeOptions, Subscription,
};

/// Message sizes of the throughput group.
const SIZES: [usize; 3] = [16, 256, 4096];
/// Message size of the fan-out and group cases.
const FAN_SIZE: usize = 256;
/// Message sizes of the fan-out cases: small, and large enough that the server shares the
/// payload among the subscribers' frames instead of copying it.
const FAN_SIZES: [usize; 2] = [FAN_SIZE, 4096];
/// Subscribers of the fan-out case.
const FAN_OUT: usize = 4;
/// Message size of the latency group.
const PING: usize = 64;
/// Samples per case.
const SAMPLES: usize = 10;
/// Measurement time per case.
const MEASURE: Duration = Duration::from_secs(2);
/// How long a batch may take before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(60);

fn server() -> BusServer {
    server_on(1)
}

/// A server whose connections are spread over `pumps` event pumps.
fn server_on(pumps: usize) -> BusServer {
    server_with(ServerConfig::default().with_pumps(pumps))
}

/// A server on one pump that spins for [`SPIN`] before it sleeps (its clients spin as long).
fn spinning_server() -> BusServer {
    server_with(ServerConfig::default().with_pumps(1).with_spin(SPIN))
}

/// The idle spin of the `_spin` latency cases' server and clients.
const SPIN: Duration = Duration::from_micros(150);

fn server_with(config: ServerConfig) -> BusServer {
    let config = config
        .with_max_outbound_bytes(512 << 20)
        .with_inner(InMemoryConfig::default().with_dispatch_threads(2));
    BusServer::bind("127.0.0.1:0".parse().unwrap(), config).expect("server")
}

fn client(server: &BusServer, confirm: bool) -> RemoteBroker {
    client_with(server, RemoteConfig::default().with_confirm(confirm))
}

fn client_with(server: &BusServer, config: RemoteConfig) -> RemoteBroker {
    RemoteBroker::connect(server.local_addr(), config.with_publish_timeout(PATIENCE))
        .expect("client")
}

/// A counter that receivers bump, with a bounded, blocking wait for a target: the waiting bench
/// thread sleeps instead of spinning on `yield_now`, which took a core from the threads under
/// test on this 2-core machine (a fifth of all samples in a profile of the bus case).
struct Count {
    n: AtomicU64,
    /// The count a waiter wants; a bump that reaches it signals `reached`.
    target: AtomicU64,
    reached: (flume::Sender<()>, flume::Receiver<()>),
}

impl Default for Count {
    fn default() -> Self {
        Count {
            n: AtomicU64::new(0),
            target: AtomicU64::new(u64::MAX),
            reached: flume::unbounded(),
        }
    }
}

impl Count {
    fn handler(self: &Arc<Self>) -> Handler {
        let me = self.clone();
        Handler::new(move |m| {
            black_box(m.payload());
            me.bump();
            Ok(())
        })
    }

    fn bump(&self) {
        let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.target.load(Ordering::SeqCst) {
            let _ = self.reached.0.send(());
        }
    }

    fn get(&self) -> u64 {
        self.n.load(Ordering::SeqCst)
    }

    fn wait_for(&self, target: u64) {
        while self.reached.1.try_recv().is_ok() {}
        // SeqCst on both sides: either the bump that reaches the target sees it, or this load
        // sees the bump. A late signal for an earlier target only costs one more look.
        self.target.store(target, Ordering::SeqCst);
        while self.get() < target {
            self.reached
                .1
                .recv_timeout(PATIENCE)
                .expect("bench batch stalled");
        }
    }
}

/// Publishes `n` messages as a program would: a small payload copied from its buffer
/// (`publish_slice`, no message built), a large one shared (`publish` of a message holding the
/// payload's `Bytes`, which is sent without a copy).
fn publish_batch(publisher: &RemoteBroker, topic: &str, payload: &Bytes, n: u64) {
    if payload.len() < 1024 {
        for _ in 0..n {
            publisher.publish_slice(topic, payload).expect("publish");
        }
        return;
    }
    let topic: Arc<str> = Arc::from(topic);
    for _ in 0..n {
        publisher
            .publish(Message::new(topic.clone(), payload.clone()))
            .expect("publish");
    }
}

/// Messages a paced publisher lets run ahead of its consumers: below the server's group
/// capacity (65 536), past which an unconfirmed publish fails on the server unseen.
const WINDOW: u64 = 16_384;

/// Publishes `n` messages, never more than `WINDOW` ahead of `count` (which starts at `base`).
fn publish_paced(
    publisher: &RemoteBroker,
    topic: &str,
    payload: &Bytes,
    n: u64,
    count: &Count,
    base: u64,
) {
    let mut sent = 0;
    while sent < n {
        let chunk = (n - sent).min(WINDOW / 2);
        publish_batch(publisher, topic, payload, chunk);
        sent += chunk;
        count.wait_for((base + sent).saturating_sub(WINDOW / 2));
    }
}

/// Raw baseline receiver: counts length-prefixed frames and reports the running count.
fn raw_sink() -> (std::net::SocketAddr, Arc<Count>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(Count::default());
    let c = count.clone();
    thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_nodelay(true).unwrap();
        let mut r = BufReader::with_capacity(256 << 10, stream);
        let mut len = [0u8; 4];
        let mut buf = Vec::new();
        while r.read_exact(&mut len).is_ok() {
            buf.resize(u32::from_be_bytes(len) as usize, 0);
            if r.read_exact(&mut buf).is_err() {
                break;
            }
            black_box(&buf);
            c.bump();
        }
    });
    (addr, count)
}

fn throughput(c: &mut Criterion) {
    let mut g = c.benchmark_group("network_throughput");
    g.sample_size(SAMPLES).measurement_time(MEASURE);
    let server = server();
    let publisher = client(&server, false);
    let subscriber = client(&server, true);
    // A server on two pumps: the publisher's connection on one, the subscriber's on the other.
    let server2 = server_on(2);
    let publisher2 = client(&server2, false);
    let subscriber2 = client(&server2, true);
    for size in SIZES {
        g.throughput(Throughput::Elements(1));
        let payload = Bytes::from(vec![7u8; size]);
        let topic = format!("tp.{size}");
        let count = Arc::new(Count::default());
        // Then the same with an inline handler: run on the subscriber's I/O thread, as the NATS
        // case's handler runs on its reader thread; then the default handler on two pumps.
        for (case, inline, two) in [
            ("bus", false, false),
            ("bus_inline", true, false),
            ("bus_2pumps", false, true),
        ] {
            let (publisher, subscriber) = if two {
                (&publisher2, &subscriber2)
            } else {
                (&publisher, &subscriber)
            };
            let h = count.handler();
            let h = if inline { h.inline() } else { h };
            let _sub = subscriber
                .subscribe(&topic, SubscribeOptions::default(), h)
                .unwrap();
            g.bench_with_input(BenchmarkId::new(case, size), &size, |b, _| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    let target = count.get() + iters;
                    publish_batch(publisher, &topic, &payload, iters);
                    count.wait_for(target);
                    start.elapsed()
                })
            });
        }
        let (addr, received) = raw_sink();
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut w = BufWriter::with_capacity(256 << 10, stream);
        let len = (size as u32).to_be_bytes();
        g.bench_with_input(BenchmarkId::new("raw_tcp", size), &size, |b, _| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let target = received.get() + iters;
                for _ in 0..iters {
                    w.write_all(&len).unwrap();
                    w.write_all(&payload).unwrap();
                }
                w.flush().unwrap();
                received.wait_for(target);
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn fanout_and_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("network_fanout");
    g.sample_size(SAMPLES).measurement_time(MEASURE);
    g.throughput(Throughput::Elements(1));
    let server = server();
    let publisher = client(&server, false);
    let server2 = server_on(2);
    let publisher2 = client(&server2, false);
    for size in FAN_SIZES {
        let payload = Bytes::from(vec![7u8; size]);
        for (case, inline, two) in [
            ("bus", false, false),
            ("bus_inline", true, false),
            ("bus_2pumps", false, true),
        ] {
            let (server, publisher) = if two {
                (&server2, &publisher2)
            } else {
                (&server, &publisher)
            };
            let count = Arc::new(Count::default());
            let subscribers: Vec<(RemoteBroker, Subscription)> = (0..FAN_OUT)
                .map(|_| {
                    let s = client(server, true);
                    let h = count.handler();
                    let h = if inline { h.inline() } else { h };
                    let sub = s.subscribe("fan", SubscribeOptions::default(), h).unwrap();
                    (s, sub)
                })
                .collect();
            g.bench_with_input(BenchmarkId::new(case, size), &size, |b, _| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    let target = count.get() + iters * FAN_OUT as u64;
                    publish_batch(publisher, "fan", &payload, iters);
                    count.wait_for(target);
                    start.elapsed()
                })
            });
            drop(subscribers);
        }
    }
    g.finish();
    let payload = Bytes::from(vec![7u8; FAN_SIZE]);

    let mut g = c.benchmark_group("network_group");
    g.sample_size(SAMPLES).measurement_time(MEASURE);
    g.throughput(Throughput::Elements(1));
    for (case, inline, two) in [
        ("bus_manual_ack", false, false),
        ("bus_inline_manual_ack", true, false),
        ("bus_2pumps_manual_ack", false, true),
    ] {
        let (server, publisher) = if two {
            (&server2, &publisher2)
        } else {
            (&server, &publisher)
        };
        let count = Arc::new(Count::default());
        let members: Vec<(Arc<RemoteBroker>, Subscription)> = (0..2)
            .map(|_| {
                let me: Arc<OnceLock<Weak<RemoteBroker>>> = Arc::new(OnceLock::new());
                let m = me.clone();
                let counter = count.clone();
                let handler = Handler::new(move |msg| {
                    if let Some(broker) = m.get().and_then(Weak::upgrade) {
                        broker.ack(msg.delivery_id().unwrap())?;
                    }
                    counter.bump();
                    Ok(())
                });
                let handler = if inline { handler.inline() } else { handler };
                let s = Arc::new(client(server, true));
                let _ = me.set(Arc::downgrade(&s));
                let opts = SubscribeOptions::group("g").manual_ack();
                let sub = s.subscribe("work", opts, handler).unwrap();
                (s, sub)
            })
            .collect();
        g.bench_with_input(BenchmarkId::new(case, FAN_SIZE), &FAN_SIZE, |b, _| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let base = count.get();
                let target = base + iters;
                publish_paced(publisher, "work", &payload, iters, &count, base);
                count.wait_for(target);
                start.elapsed()
            })
        });
        drop(members);
    }
    g.finish();
}

fn latency(c: &mut Criterion) {
    let mut g = c.benchmark_group("network_latency");
    g.sample_size(SAMPLES).measurement_time(MEASURE);
    let server = server();
    let payload = Bytes::from(vec![7u8; PING]);

    // Request/reply: the requester publishes on `req`, a responder answers on `rep`; then the
    // same with inline handlers on both sides (`req.inline`, `rep.inline`); then the default
    // handlers through a server on two pumps (the requester's connection on one, the
    // responder's on the other); then both kinds of handler through a server on one pump whose
    // pump and clients' pumps spin for `SPIN` before they sleep (`ServerConfig::with_spin`,
    // `RemoteConfig::with_spin`).
    let server2 = server_on(2);
    let server_spin = spinning_server();
    let default_spin = RemoteConfig::default().spin;
    let clients = [
        (&server, default_spin),
        (&server2, default_spin),
        (&server_spin, SPIN),
    ]
    .map(|(s, spin)| {
        let config = RemoteConfig::default().with_confirm(false).with_spin(spin);
        (
            client_with(s, config.clone()),
            Arc::new(client_with(s, config)),
        )
    });
    for (case, inline, which) in [
        ("bus_request_reply", false, 0),
        ("bus_request_reply_inline", true, 0),
        ("bus_request_reply_2pumps", false, 1),
        ("bus_request_reply_spin", false, 2),
        ("bus_request_reply_inline_spin", true, 2),
    ] {
        let (requester, responder) = &clients[which];
        let (req, rep) = if inline {
            ("req.inline", "rep.inline")
        } else {
            ("req", "rep")
        };
        let set = |h: Handler| if inline { h.inline() } else { h };
        let r = Arc::downgrade(responder);
        let _answer = responder
            .subscribe(
                req,
                SubscribeOptions::default(),
                set(Handler::new(move |msg| {
                    if let Some(r) = r.upgrade() {
                        r.publish(Message::new(rep, msg.payload().clone()))?;
                    }
                    Ok(())
                })),
            )
            .unwrap();
        let (tx, rx) = flume::unbounded();
        let tx = Mutex::new(tx);
        let _replies = requester
            .subscribe(
                rep,
                SubscribeOptions::default(),
                set(Handler::new(move |_| {
                    tx.lock().unwrap().send(())?;
                    Ok(())
                })),
            )
            .unwrap();
        g.bench_with_input(BenchmarkId::new(case, PING), &PING, |b, _| {
            b.iter(|| {
                requester
                    .publish(Message::new(req, payload.clone()))
                    .unwrap();
                rx.recv_timeout(PATIENCE).expect("reply");
            })
        });
    }

    let confirmer = client(&server, true);
    g.bench_with_input(
        BenchmarkId::new("bus_publish_confirm", PING),
        &PING,
        |b, _| {
            b.iter(|| {
                black_box(
                    confirmer
                        .publish(Message::new("nobody", payload.clone()))
                        .unwrap(),
                )
            })
        },
    );

    // Raw baseline: a frame to an echo thread and back.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = vec![0u8; 4 + PING];
        while s.read_exact(&mut buf).is_ok() {
            if s.write_all(&buf).is_err() {
                break;
            }
        }
    });
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut frame = (PING as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    let mut back = vec![0u8; 4 + PING];
    g.bench_with_input(BenchmarkId::new("raw_tcp", PING), &PING, |b, _| {
        b.iter(|| {
            s.write_all(&frame).unwrap();
            s.read_exact(&mut back).unwrap();
        })
    });
    g.finish();
}

/// Connects to a nats-server and starts a reader thread that answers server PINGs (only when
/// asked: its writes would interleave with another thread's), reports
/// PONGs on the returned channel and hands each MSG payload to `on_msg` with a writer.
fn nats_connect(
    addr: &str,
    answer_pings: bool,
    mut on_msg: impl FnMut(&mut TcpStream, &[u8]) + Send + 'static,
) -> (TcpStream, flume::Receiver<()>) {
    use std::io::BufRead;
    let mut stream = TcpStream::connect(addr).expect("nats connect");
    stream.set_nodelay(true).unwrap();
    stream
        .write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
        .unwrap();
    let (pong_tx, pong_rx) = flume::unbounded();
    let mut writer = stream.try_clone().unwrap();
    let reader = stream.try_clone().unwrap();
    thread::spawn(move || {
        let mut r = BufReader::with_capacity(256 << 10, reader);
        let mut line = String::new();
        let mut body = Vec::new();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            if let Some(rest) = line.strip_prefix("MSG ") {
                let len: usize = rest.split_whitespace().last().unwrap().parse().unwrap();
                body.resize(len + 2, 0);
                if r.read_exact(&mut body).is_err() {
                    break;
                }
                on_msg(&mut writer, &body[..len]);
            } else if answer_pings && line.starts_with("PING") {
                let _ = writer.write_all(b"PONG\r\n");
            } else if line.starts_with("PONG") {
                let _ = pong_tx.send(());
            }
        }
    });
    (stream, pong_rx)
}

/// Subscribes (in queue group `queue`, if any) and waits until the server has registered the
/// subscription (a PING round trip).
fn nats_sub(
    stream: &mut TcpStream,
    pongs: &flume::Receiver<()>,
    subject: &str,
    queue: Option<&str>,
) {
    match queue {
        Some(q) => write!(stream, "SUB {subject} {q} 1\r\nPING\r\n").unwrap(),
        None => write!(stream, "SUB {subject} 1\r\nPING\r\n").unwrap(),
    }
    pongs.recv_timeout(PATIENCE).expect("nats PONG");
}

/// Publishes `iters` messages of `size` bytes on `subject` through `w` and waits until `count`
/// has grown by `per_msg` for each (the subscribers it reaches); returns the time taken.
fn nats_publish(
    w: &mut BufWriter<TcpStream>,
    subject: &str,
    size: usize,
    iters: u64,
    count: &Count,
    per_msg: u64,
) -> Duration {
    let payload = vec![7u8; size];
    let head = format!("PUB {subject} {size}\r\n");
    // NATS cuts a subscriber more than 64 MiB behind: keep at most 4 MiB in flight.
    let window = ((4u64 << 20) / size as u64).max(1024);
    let start = Instant::now();
    let base = count.get();
    for i in 1..=iters {
        w.write_all(head.as_bytes()).unwrap();
        w.write_all(&payload).unwrap();
        w.write_all(b"\r\n").unwrap();
        if i % window == 0 {
            w.flush().unwrap();
            count.wait_for(base + (i - window) * per_msg);
        }
    }
    w.flush().unwrap();
    count.wait_for(base + iters * per_msg);
    start.elapsed()
}

/// The same throughput and request/reply cases against a nats-server, when `MIXBUS_NATS_ADDR`
/// names one (for example `127.0.0.1:4222`), spoken in NATS's text protocol over std sockets.
fn nats(c: &mut Criterion) {
    let Ok(addr) = std::env::var("MIXBUS_NATS_ADDR") else {
        return;
    };
    let mut g = c.benchmark_group("network_throughput");
    g.sample_size(SAMPLES).measurement_time(MEASURE);
    g.throughput(Throughput::Elements(1));
    let count = Arc::new(Count::default());
    let c2 = count.clone();
    let (mut sub, pongs) = nats_connect(&addr, true, move |_, body| {
        black_box(body);
        c2.bump();
    });
    nats_sub(&mut sub, &pongs, "tp.*", None);
    let (publisher, _) = nats_connect(&addr, false, |_, _| {});
    let mut w = BufWriter::with_capacity(256 << 10, publisher);
    for size in SIZES {
        let subject = format!("tp.{size}");
        g.bench_with_input(BenchmarkId::new("nats", size), &size, |b, _| {
            b.iter_custom(|iters| nats_publish(&mut w, &subject, size, iters, &count, 1))
        });
    }
    g.finish();

    // Fan-out to 4 subscriber connections, and a queue group of 2 (NATS's consumer groups,
    // which have no acks), beside the bus's `network_fanout` and `network_group` cases.
    let mut g = c.benchmark_group("network_fanout");
    g.sample_size(SAMPLES).measurement_time(MEASURE);
    g.throughput(Throughput::Elements(1));
    let count = Arc::new(Count::default());
    let fans: Vec<TcpStream> = (0..FAN_OUT)
        .map(|_| {
            let c = count.clone();
            let (mut s, pongs) = nats_connect(&addr, true, move |_, body| {
                black_box(body);
                c.bump();
            });
            nats_sub(&mut s, &pongs, "fan", None);
            s
        })
        .collect();
    for size in FAN_SIZES {
        g.bench_with_input(BenchmarkId::new("nats", size), &size, |b, _| {
            b.iter_custom(|iters| nats_publish(&mut w, "fan", size, iters, &count, FAN_OUT as u64))
        });
    }
    g.finish();
    drop(fans);

    let mut g = c.benchmark_group("network_group");
    g.sample_size(SAMPLES).measurement_time(MEASURE);
    g.throughput(Throughput::Elements(1));
    let count = Arc::new(Count::default());
    let members: Vec<TcpStream> = (0..2)
        .map(|_| {
            let c = count.clone();
            let (mut s, pongs) = nats_connect(&addr, true, move |_, body| {
                black_box(body);
                c.bump();
            });
            nats_sub(&mut s, &pongs, "work", Some("g"));
            s
        })
        .collect();
    g.bench_with_input(
        BenchmarkId::new("nats_queue_group", FAN_SIZE),
        &FAN_SIZE,
        |b, _| b.iter_custom(|iters| nats_publish(&mut w, "work", FAN_SIZE, iters, &count, 1)),
    );
    g.finish();
    drop(members);

    let mut g = c.benchmark_group("network_latency");
    g.sample_size(SAMPLES).measurement_time(MEASURE);
    let (mut responder, pongs) = nats_connect(&addr, true, move |w, body| {
        let _ = write!(w, "PUB rep {}\r\n", body.len());
        let _ = w.write_all(body);
        let _ = w.write_all(b"\r\n");
    });
    nats_sub(&mut responder, &pongs, "req", None);
    let (tx, rx) = flume::unbounded();
    let (mut requester, pongs) = nats_connect(&addr, false, move |_, _| {
        let _ = tx.send(());
    });
    nats_sub(&mut requester, &pongs, "rep", None);
    let mut frame = format!("PUB req {PING}\r\n").into_bytes();
    frame.extend_from_slice(&[7u8; PING]);
    frame.extend_from_slice(b"\r\n");
    g.bench_with_input(
        BenchmarkId::new("nats_request_reply", PING),
        &PING,
        |b, _| {
            b.iter(|| {
                requester.write_all(&frame).unwrap();
                rx.recv_timeout(PATIENCE).expect("nats reply");
            })
        },
    );
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    throughput(&mut c);
    fanout_and_group(&mut c);
    latency(&mut c);
    nats(&mut c);
    c.final_summary();
}
