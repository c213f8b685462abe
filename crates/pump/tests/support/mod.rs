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

// Not every test file uses every helper.
#[allow(unused_imports)]
pub(crate) use mixbus_testkit::{Rng, Seed, seed};
