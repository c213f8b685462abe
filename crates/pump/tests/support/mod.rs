//! Helpers shared by the pump's integration tests: bounded waits, gates, busy work and a seeded RNG.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mixbus_pump::eventq::net::TcpStream;

/// How long any test waits for something that should happen at once.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// Slack for "not late" assertions: generous, since CI machines may be slow and have few cores.
pub(crate) const SLACK: Duration = Duration::from_secs(2);

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
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Spins for `d` (busy work that really uses the pump thread's time).
pub(crate) fn busy(d: Duration) {
    let start = Instant::now();
    while start.elapsed() < d {
        std::hint::spin_loop();
    }
}

/// A flag a test sets to release a task that spins on the pump thread.
#[derive(Clone, Debug, Default)]
pub(crate) struct Gate(Arc<AtomicBool>);

impl Gate {
    pub(crate) fn new() -> Gate {
        Gate::default()
    }

    /// Releases every spinner.
    pub(crate) fn open(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub(crate) fn is_open(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Spins until the gate opens or `limit` passes (never blocks the pump for ever); returns
    /// whether it opened.
    pub(crate) fn spin(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while !self.is_open() {
            if Instant::now() >= deadline {
                return false;
            }
            std::hint::spin_loop();
        }
        true
    }
}

/// A connected pair of non-blocking loopback streams: (client, server).
pub(crate) fn loopback_pair() -> (TcpStream, TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (
        TcpStream::from_std(client).unwrap(),
        TcpStream::from_std(server).unwrap(),
    )
}

/// A tiny xorshift64* generator for seeded, reproducible random tests.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator seeded from `MIXBUS_SEED` if set, else from the clock.
    pub(crate) fn from_env() -> Rng {
        let seed = std::env::var("MIXBUS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        Rng::new(seed)
    }

    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub(crate) fn seed(&self) -> u64 {
        self.0
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Prints the seed if the test fails while this guard lives.
#[derive(Debug)]
pub(crate) struct SeedGuard(pub(crate) u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "test failed with seed {0}; rerun with MIXBUS_SEED={0}",
                self.0
            );
        }
    }
}
