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

/// Publishes `n` messages on `topic` whose payloads are their numbers, `0` to `n - 1`.
pub(crate) fn publish_numbered(publisher: &impl mixbus_bus::Broker, topic: &str, n: u64) {
    for i in 0..n {
        publisher
            .publish(Message::new(topic, i.to_string()))
            .expect("publish");
    }
}

/// A bus server on a free loopback port, with `threads` dispatch threads.
pub(crate) fn server(threads: usize) -> mixbus_bus::BusServer {
    server_with(mixbus_bus::ServerConfig::default(), threads)
}

/// Event pumps of the servers made here: `MIXBUS_TEST_PUMPS`, 2 if unset, so that the clients of
/// one test (each its own connection) land on different pumps and every message crosses from
/// one to another. `cargo xtask ci` runs the networked tests again with 1 (one thread serving
/// everything).
pub(crate) fn test_pumps() -> usize {
    std::env::var("MIXBUS_TEST_PUMPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
}

/// A bus server with the given configuration on a free loopback port.
pub(crate) fn server_with(
    config: mixbus_bus::ServerConfig,
    threads: usize,
) -> mixbus_bus::BusServer {
    init_tracing();
    let config = config
        .with_pumps(test_pumps())
        .with_inner(InMemoryConfig::default().with_dispatch_threads(threads));
    mixbus_bus::BusServer::bind("127.0.0.1:0".parse().unwrap(), config).expect("start server")
}

/// A client of `server`.
pub(crate) fn remote(server: &mixbus_bus::BusServer) -> mixbus_bus::RemoteBroker {
    mixbus_bus::RemoteBroker::connect(server.local_addr(), mixbus_bus::RemoteConfig::default())
        .expect("connect to server")
}

/// A raw client speaking length-prefixed frames over a blocking std `TcpStream`, for tests that
/// misbehave on purpose.
pub(crate) struct Raw {
    pub(crate) stream: std::net::TcpStream,
}

impl Raw {
    /// Connects with a read timeout of `WAIT`.
    pub(crate) fn connect(addr: std::net::SocketAddr) -> Raw {
        let stream = std::net::TcpStream::connect(addr).expect("raw connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Raw { stream }
    }

    /// Connects and completes the handshake, checking that the server welcomes this version.
    pub(crate) fn welcomed(addr: std::net::SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr);
        match raw.hello(None) {
            mixbus_bus::protocol::Op::Welcome { version, .. } => {
                assert_eq!(
                    version,
                    mixbus_bus::protocol::VERSION,
                    "welcomed at our version"
                );
            }
            other => panic!("expected WELCOME, got {other:?}"),
        }
        raw
    }

    /// Writes raw bytes.
    pub(crate) fn write(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).expect("raw write");
    }

    /// Writes one frame: a 4-byte big-endian length, then `body`.
    pub(crate) fn send_frame(&mut self, body: &[u8]) {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        self.write(&v);
    }

    /// Writes one operation.
    pub(crate) fn send(&mut self, op: &mixbus_bus::protocol::Op) {
        self.send_frame(&op.to_bytes());
    }

    /// Reads one frame; `None` at end of stream or on a reset.
    pub(crate) fn read_frame(&mut self) -> Option<Vec<u8>> {
        use std::io::{ErrorKind, Read};
        let mut len = [0u8; 4];
        match self.stream.read_exact(&mut len) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ) =>
            {
                return None;
            }
            Err(e) => panic!("raw read failed: {e}"),
        }
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        match self.stream.read_exact(&mut body) {
            Ok(()) => Some(body),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
                ) =>
            {
                None
            }
            Err(e) => panic!("raw read failed: {e}"),
        }
    }

    /// Reads and decodes one operation; `None` at end of stream.
    pub(crate) fn read_op(&mut self) -> Option<mixbus_bus::protocol::Op> {
        self.read_frame()
            .map(|f| mixbus_bus::protocol::decode(f.into()).expect("server frames decode"))
    }

    /// Sends HELLO (this crate's version) and returns the answer.
    pub(crate) fn hello(&mut self, token: Option<&str>) -> mixbus_bus::protocol::Op {
        self.hello_version(mixbus_bus::protocol::VERSION, token)
    }

    /// Sends HELLO for `version` and returns the answer.
    pub(crate) fn hello_version(
        &mut self,
        version: u16,
        token: Option<&str>,
    ) -> mixbus_bus::protocol::Op {
        self.send(&mixbus_bus::protocol::Op::Hello {
            version,
            token: token.map(str::to_owned),
            client: "raw".into(),
        });
        self.read_op().expect("an answer to HELLO")
    }

    /// Reads until an ERROR for the connection, checks its code, then checks the stream ends.
    pub(crate) fn expect_error_and_close(
        &mut self,
        code: mixbus_bus::protocol::ErrorCode,
    ) -> String {
        use mixbus_bus::protocol::Op;
        let text = loop {
            match self.read_op() {
                Some(Op::Error {
                    request: 0,
                    code: c,
                    text,
                }) => {
                    assert_eq!(c, code, "error text: {text}");
                    break text;
                }
                Some(_) => continue,
                None => panic!("connection closed without an ERROR frame"),
            }
        };
        assert!(
            self.read_frame().is_none(),
            "connection still open after the ERROR"
        );
        text
    }

    /// Checks the stream ends (after whatever frames were already on their way).
    pub(crate) fn expect_closed(&mut self) {
        while self.read_frame().is_some() {}
    }
}
