//! Event queue benches: a `Waker` wake plus `poll` round trip between two threads, and a `poll` over
//! 1,000 idle registered sockets. Run with `cargo bench --bench eventq`.
//!
//! Baselines in the same group: the same ping-pong over two `flume` bounded(1) channels
//! (`eventq/flume_round_trip`), and a `poll` over a single idle socket (`eventq/poll_idle/1`).

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use mixbus::eventq::net::{TcpListener, TcpStream};
use mixbus::eventq::{Events, Interest, Poll, Registration, Token, Waker};

/// Samples per case (kept small: the bench machine has 2 shared cores).
const SAMPLES: usize = 20;
/// Measurement time per case.
const MEASURE: Duration = Duration::from_secs(3);
/// Warm-up time per case.
const WARM_UP: Duration = Duration::from_secs(1);
/// Idle registered sockets polled by `poll_idle`: the case and its baseline.
const IDLE_SOCKETS: [usize; 2] = [1000, 1];

const PING: Token = Token(0);
const PONG: Token = Token(1);

/// Thread B of the ping-pong: waits in its own `Poll`, wakes thread A's `Poll` back.
struct WakePong {
    /// Wakes B's poll.
    wake_b: Waker,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl WakePong {
    fn start(registry_a: &mixbus::eventq::Registry) -> WakePong {
        let wake_a = Waker::new(registry_a, PONG).expect("waker for A");
        let mut poll_b = Poll::new().expect("poll for B");
        let wake_b = Waker::new(&poll_b.registry(), PING).expect("waker for B");
        let stop = Arc::new(AtomicBool::new(false));
        let stop_b = stop.clone();
        let thread = thread::Builder::new()
            .name("eventq-bench-pong".into())
            .spawn(move || {
                let mut events = Events::with_capacity(8);
                loop {
                    poll_b.poll(&mut events, None).expect("poll B");
                    if stop_b.load(Ordering::Acquire) {
                        return;
                    }
                    wake_a.wake().expect("wake A");
                }
            })
            .expect("spawn the pong thread");
        WakePong {
            wake_b,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for WakePong {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.wake_b.wake().expect("wake B to stop");
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the pong thread panicked");
        }
    }
}

/// Thread B of the flume ping-pong: echoes every message until the sender is dropped.
fn flume_pong() -> (flume::Sender<()>, flume::Receiver<()>, JoinHandle<()>) {
    let (to_b, from_a) = flume::bounded::<()>(1);
    let (to_a, from_b) = flume::bounded::<()>(1);
    let thread = thread::Builder::new()
        .name("flume-bench-pong".into())
        .spawn(move || {
            for () in from_a.iter() {
                if to_a.send(()).is_err() {
                    return;
                }
            }
        })
        .expect("spawn the pong thread");
    (to_b, from_b, thread)
}

fn round_trips(c: &mut Criterion) {
    let mut group = c.benchmark_group("eventq");
    group
        .sample_size(SAMPLES)
        .measurement_time(MEASURE)
        .warm_up_time(WARM_UP);

    let mut poll_a = Poll::new().expect("poll for A");
    let pong = WakePong::start(&poll_a.registry());
    let mut events = Events::with_capacity(8);
    group.bench_function("wake_poll_round_trip", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                pong.wake_b.wake().expect("wake B");
                poll_a.poll(&mut events, None).expect("poll A");
                debug_assert_eq!(events.iter().next().map(|e| e.token()), Some(PONG));
            }
            start.elapsed()
        });
    });
    drop(pong);

    let (to_b, from_b, thread) = flume_pong();
    group.bench_function("flume_round_trip", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                to_b.send(()).expect("send to B");
                from_b.recv().expect("receive from B");
            }
            start.elapsed()
        });
    });
    drop(to_b);
    thread.join().expect("the pong thread panicked");

    group.finish();
}

/// `n` connected loopback pairs with the accepting side registered for reading; nothing is sent.
fn idle_sockets(poll: &Poll, n: usize) -> (Vec<Registration<TcpStream>>, Vec<std::net::TcpStream>) {
    let listener = std::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .expect("bind the loopback listener");
    let addr = listener.local_addr().expect("listener address");
    let listener = TcpListener::from_std(listener).expect("wrap the listener");
    let registry = poll.registry();
    let mut servers = Vec::with_capacity(n);
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        clients.push(std::net::TcpStream::connect(addr).expect("connect on loopback"));
        let server = loop {
            match listener.accept() {
                Ok((server, _)) => break server,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => thread::yield_now(),
                Err(err) => panic!("accept failed: {err}"),
            }
        };
        servers.push(
            registry
                .register(server, Token(i), Interest::READABLE)
                .expect("register the socket"),
        );
    }
    (servers, clients)
}

fn poll_idle(c: &mut Criterion) {
    let mut group = c.benchmark_group("eventq");
    group
        .sample_size(SAMPLES)
        .measurement_time(MEASURE)
        .warm_up_time(WARM_UP);
    for n in IDLE_SOCKETS {
        let mut poll = Poll::new().expect("poll");
        let _sockets = idle_sockets(&poll, n);
        let mut events = Events::with_capacity(1024);
        poll.poll(&mut events, Some(Duration::ZERO))
            .expect("first poll");
        assert!(events.is_empty(), "idle sockets reported {events:?}");
        group.bench_with_input(BenchmarkId::new("poll_idle", n), &n, |b, _| {
            b.iter(|| {
                poll.poll(&mut events, Some(Duration::ZERO)).expect("poll");
                black_box(events.len())
            });
        });
        assert!(events.is_empty(), "idle sockets reported {events:?}");
    }
    group.finish();
}

// A hand-written `main` instead of `criterion_group!`, whose generated `pub fn` has no docs.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    round_trips(&mut c);
    poll_idle(&mut c);
    c.final_summary();
}
