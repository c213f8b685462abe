//! Helpers shared by the bus integration tests: bounded waits, tracing, a recording listener.
#![allow(dead_code)]

pub(crate) mod suite;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use mixbus_bus::{
    BrokerListener, DeliveryId, DropReason, InMemoryBroker, InMemoryConfig, Message,
    SubscriptionInfo,
};

/// How long a test waits for something that should happen at once.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// Installs a test-writer tracing subscriber once (`RUST_LOG` picks the level).
pub(crate) fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    });
}

/// A broker with `threads` dispatch threads.
pub(crate) fn broker(threads: usize) -> InMemoryBroker {
    init_tracing();
    InMemoryBroker::with_config(InMemoryConfig::default().with_dispatch_threads(threads))
        .expect("start broker")
}

/// Waits until `cond` holds, checking often, for at most `WAIT`; panics with `what` otherwise.
pub(crate) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// A listener that records the events tests look at.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pub(crate) published: AtomicU64,
    pub(crate) dispatched: AtomicU64,
    pub(crate) processed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) subscribed: AtomicU64,
    pub(crate) unsubscribed: AtomicU64,
    pub(crate) ack_unknown: Mutex<Vec<DeliveryId>>,
    pub(crate) errors: Mutex<Vec<String>>,
}

impl Recorder {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub(crate) fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::SeqCst)
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::SeqCst);
}

impl BrokerListener for Recorder {
    fn published(&self, _m: &Message) {
        bump(&self.published);
    }
    fn dispatched(&self, _m: &Message, _s: &SubscriptionInfo) {
        bump(&self.dispatched);
    }
    fn processed(&self, _m: &Message, _s: &SubscriptionInfo) {
        bump(&self.processed);
    }
    fn failed(&self, _m: &Message, _s: &SubscriptionInfo, error: &str) {
        self.errors.lock().unwrap().push(error.to_owned());
        bump(&self.failed);
    }
    fn acked(&self, _m: &Message, _s: &SubscriptionInfo) {
        bump(&self.acked);
    }
    fn ack_unknown(&self, delivery: DeliveryId) {
        self.ack_unknown.lock().unwrap().push(delivery);
    }
    fn redelivered(&self, _m: &Message, _s: &SubscriptionInfo, _r: &str) {
        bump(&self.redelivered);
    }
    fn dead_lettered(&self, _m: &Message, _s: &SubscriptionInfo, _t: &str) {
        bump(&self.dead_lettered);
    }
    fn dropped(&self, _m: &Message, _r: &DropReason) {
        bump(&self.dropped);
    }
    fn subscribed(&self, _s: &SubscriptionInfo) {
        bump(&self.subscribed);
    }
    fn unsubscribed(&self, _s: &SubscriptionInfo) {
        bump(&self.unsubscribed);
    }
}

/// A handler that sends every message it gets into a channel, with the receiver.
pub(crate) fn collector() -> (mixbus_bus::Handler, flume::Receiver<Message>) {
    let (tx, rx) = flume::unbounded();
    let handler = mixbus_bus::Handler::new(move |m: &Message| {
        tx.send(m.clone())?;
        Ok(())
    });
    (handler, rx)
}

/// Receives one message or panics after `WAIT`.
pub(crate) fn recv(rx: &flume::Receiver<Message>) -> Message {
    rx.recv_timeout(WAIT).expect("a message within the wait")
}

/// A bus server on a free loopback port, with `threads` dispatch threads.
pub(crate) fn server(threads: usize) -> mixbus_bus::BusServer {
    server_with(mixbus_bus::ServerConfig::default(), threads)
}

/// A bus server with the given configuration on a free loopback port.
pub(crate) fn server_with(
    config: mixbus_bus::ServerConfig,
    threads: usize,
) -> mixbus_bus::BusServer {
    init_tracing();
    let config = config.with_inner(InMemoryConfig::default().with_dispatch_threads(threads));
    mixbus_bus::BusServer::bind("127.0.0.1:0".parse().unwrap(), config).expect("start server")
}

/// A client of `server`.
pub(crate) fn remote(server: &mixbus_bus::BusServer) -> mixbus_bus::RemoteBroker {
    mixbus_bus::RemoteBroker::connect(server.local_addr(), mixbus_bus::RemoteConfig::default())
        .expect("connect to server")
}
