//! [`BusServer`]: holds an [`InMemoryBroker`] and serves it to [`RemoteBroker`](crate::RemoteBroker)
//! clients over the wire protocol.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};

use crate::broker::{Broker, CloseReport, Handler, Subscription};
use crate::error::{Error, Result};
use crate::memory::{Depth, InMemoryBroker, InMemoryConfig, Watch};
use crate::message::{DeliveryId, Drafts, Message, MessageId, nanos_since_epoch};
use crate::options::AckMode;
use crate::protocol::{self, ErrorCode, MIN_VERSION, Op, PackState, VERSION};
use crate::queue::task::pump::{EventPump, OnceTask, PumpConfig, PumpHandle};
use crate::queue::task::{FrameError, Frames};
use crate::queue::{CloseInfo, MessageQueue, QueueBroker, QueueConfig, QueueListener, SendError};
use crate::stats::{StatsCollector, StatsSnapshot};

/// How a [`BusServer`] is set up: plain data with defaults, changed with the `with_*` methods.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// The shared secret clients must send in HELLO (default none; required to listen on an
    /// address that is not loopback).
    pub token: Option<String>,
    /// Connections served at once; more are refused with an ERROR (default 1024).
    pub max_connections: usize,
    /// The largest frame a client may send, in bytes (default 16 MiB).
    pub max_frame_len: usize,
    /// Subscriptions one connection may hold (default 1024).
    pub max_subscriptions_per_connection: usize,
    /// Bytes queued to one connection before it counts as a slow consumer and is closed
    /// (default 8 MiB).
    pub max_outbound_bytes: usize,
    /// Messages the server holds for one broadcast subscription whose consumer is stuck (held
    /// at its `max_in_flight` by a delivery older than `slow_consumer_stall`) before it counts
    /// as a slow consumer and its connection is closed with an ERROR (default 65,536). A
    /// consumer that makes progress is not cut off, and its queue may grow past this while
    /// publishers outrun it. A consumer group's queue is bounded by the inner broker's
    /// `group_capacity` instead, with publishes refused past it.
    pub max_queued_per_subscription: usize,
    /// Flow control for publishers: when a burst of publishes read from a connection leaves a
    /// queue (a subscription's or a group's) holding more than this many messages, the server
    /// stops reading that connection until every such queue is back to half of it. The
    /// publisher's socket fills and its publishes wait for room, so the server's memory stays
    /// bounded by what consumers can take (default 65,536; `usize::MAX` never holds). A
    /// connection that holds subscriptions is never held: its acks may be what drains the
    /// queue.
    pub hold_publishers_above: usize,
    /// The same in payload bytes, reckoned from the burst's messages: for messages of a mean
    /// size `s`, the queue depth past which publishers are held is the lesser of
    /// `hold_publishers_above` and this divided by `s` (default 32 MiB: 8,192 messages of
    /// 4 KiB, all 65,536 below 512 bytes).
    pub hold_publishers_above_bytes: usize,
    /// How long a consumer held at its in-flight limit may go without an ack before it counts
    /// as stuck (default 5 s; see `max_queued_per_subscription`).
    pub slow_consumer_stall: Duration,
    /// How long closing a connection may spend flushing (default 500 ms).
    pub linger: Duration,
    /// How long a new connection has to send its HELLO before it is closed (default 5 s).
    pub handshake_timeout: Duration,
    /// The server's name, sent in WELCOME (default `mixbus`).
    pub name: String,
    /// Event pumps (threads) the connections are spread over, in turn (default: the machine's
    /// cores, at most 4). A connection's frames, and the deliveries of its subscriptions, are
    /// handled on its pump, so a publisher and a subscriber on two connections run on two
    /// cores. A message for a connection whose pump sleeps is forwarded and written by the pump
    /// that read it, with no thread wake-up on the way. With 1, one thread serves everything.
    /// A value outside 1 to 256 is taken as the nearest.
    pub pumps: usize,
    /// How long an idle server pump keeps watching its sockets before it sleeps, at the least
    /// (default 20 µs, the pump's default). A request whose reply comes back within the spin
    /// is forwarded with no thread wake-up on the server; see [`with_spin`](Self::with_spin).
    pub spin: Duration,
    /// How far a server pump's spin may grow while its clients keep answering soon after it
    /// fell asleep (default 200 µs, the pump's default); see
    /// [`with_spin_range`](Self::with_spin_range).
    pub spin_max: Duration,
    /// The bus held by the server.
    pub inner: InMemoryConfig,
}

/// The most event pumps a server runs ([`ServerConfig::pumps`]).
const MAX_PUMPS: usize = 256;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            token: None,
            max_connections: 1024,
            max_frame_len: 16 << 20,
            max_subscriptions_per_connection: 1024,
            max_outbound_bytes: 8 << 20,
            max_queued_per_subscription: 65_536,
            hold_publishers_above: 65_536,
            hold_publishers_above_bytes: 32 << 20,
            slow_consumer_stall: Duration::from_secs(5),
            linger: Duration::from_millis(500),
            handshake_timeout: Duration::from_secs(5),
            name: "mixbus".to_owned(),
            pumps: std::thread::available_parallelism().map_or(1, |n| n.get().min(4)),
            spin: PumpConfig::default().spin,
            spin_max: PumpConfig::default().spin_max,
            inner: InMemoryConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Sets the token clients must present.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the connection limit.
    #[must_use]
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Sets the largest frame accepted from a client.
    #[must_use]
    pub fn with_max_frame_len(mut self, bytes: usize) -> Self {
        self.max_frame_len = bytes;
        self
    }

    /// Sets the subscription limit per connection.
    #[must_use]
    pub fn with_max_subscriptions_per_connection(mut self, n: usize) -> Self {
        self.max_subscriptions_per_connection = n;
        self
    }

    /// Sets the outbound bytes past which a connection is a slow consumer.
    #[must_use]
    pub fn with_max_outbound_bytes(mut self, bytes: usize) -> Self {
        self.max_outbound_bytes = bytes;
        self
    }

    /// Sets how many messages the server holds for one broadcast subscription with a stuck
    /// consumer before it cuts the consumer off.
    #[must_use]
    pub fn with_max_queued_per_subscription(mut self, n: usize) -> Self {
        self.max_queued_per_subscription = n.max(1);
        self
    }

    /// Sets the queue depth past which the server stops reading from the publishers filling it
    /// (see [`hold_publishers_above`](Self::hold_publishers_above)).
    #[must_use]
    pub fn with_hold_publishers_above(mut self, n: usize) -> Self {
        self.hold_publishers_above = n.max(1);
        self
    }

    /// Sets the queued payload bytes past which the server stops reading from the publishers
    /// filling a queue (see [`hold_publishers_above_bytes`](Self::hold_publishers_above_bytes)).
    #[must_use]
    pub fn with_hold_publishers_above_bytes(mut self, bytes: usize) -> Self {
        self.hold_publishers_above_bytes = bytes.max(1);
        self
    }

    /// Sets how long a consumer held at its in-flight limit may go without an ack before it
    /// counts as stuck.
    #[must_use]
    pub fn with_slow_consumer_stall(mut self, stall: Duration) -> Self {
        self.slow_consumer_stall = stall;
        self
    }

    /// Sets the linger time of closing connections.
    #[must_use]
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Sets how long a new connection has to send its HELLO.
    #[must_use]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sets the name sent in WELCOME.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets how many event pumps serve the connections (at least 1, at most 256).
    #[must_use]
    pub fn with_pumps(mut self, n: usize) -> Self {
        self.pumps = n.clamp(1, MAX_PUMPS);
        self
    }

    /// Sets a fixed spin: how long an idle server pump watches its sockets before it sleeps,
    /// always. The default adapts instead ([`with_spin_range`](Self::with_spin_range)).
    ///
    /// A request/reply round trip crosses the server twice, and a pump that has fallen asleep
    /// in between must be woken by the kernel (tens of microseconds on a virtual machine). A
    /// pump that spins longer than the responder takes to answer forwards the reply at once.
    /// The price is CPU: a pump that hears from its clients more often than the spin lasts
    /// never sleeps, and each of the server's pumps spins on its own. A short fixed spin (the
    /// pump's floor, 20 µs) costs the least CPU at modest message rates; [`Duration::ZERO`]
    /// turns spinning off. An idle server still sleeps once the spin ends.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use mixbus_bus::{BusServer, ServerConfig};
    ///
    /// // Never spin more than 20 µs: the least CPU while messages trickle in.
    /// let config = ServerConfig::default().with_spin(Duration::from_micros(20));
    /// let server = BusServer::bind("127.0.0.1:4999".parse().unwrap(), config)?;
    /// # Ok::<(), mixbus_bus::Error>(())
    /// ```
    #[must_use]
    pub fn with_spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self.spin_max = spin;
        self
    }

    /// Sets a spin that adapts between `min` and `max` (default 20 to 200 µs), as
    /// [`PumpConfig::with_spin_range`](crate::queue::task::pump::PumpConfig::with_spin_range)
    /// explains: a server pump whose clients answer within `max` of its going idle stops
    /// sleeping between their messages, so a request/reply round trip costs no wake-up on the
    /// server, while one that hears from them now and then spins only `min`.
    ///
    /// On the 2-core machine of `BENCHMARKS.md` the default took back-to-back request/reply
    /// from 0.8 to about half of NATS's time (requests a millisecond or more apart find every
    /// thread asleep either way); a pump whose clients send more often than every `max` keeps
    /// its core busy (yielding it to any other runnable thread between looks).
    #[must_use]
    pub fn with_spin_range(mut self, min: Duration, max: Duration) -> Self {
        self.spin = min;
        self.spin_max = max.max(min);
        self
    }

    /// Sets the configuration of the bus the server holds.
    #[must_use]
    pub fn with_inner(mut self, inner: InMemoryConfig) -> Self {
        self.inner = inner;
        self
    }
}

/// Counters of a running [`BusServer`], with the bus's own statistics.
#[non_exhaustive]
#[derive(Clone, Debug)]
pub struct ServerStats {
    /// Connections open now.
    pub connections: usize,
    /// Connections accepted since the start.
    pub accepted: u64,
    /// Connections refused or closed for a fault (token, version, limits, malformed frames).
    pub rejected: u64,
    /// Connections closed for malformed or unexpected frames.
    pub protocol_errors: u64,
    /// Connections closed as slow consumers.
    pub slow_consumers: u64,
    /// Publishes sent without a confirm that the bus refused (a full group queue, an invalid
    /// topic): the publisher asked for no answer, so they are counted here.
    pub refused_publishes: u64,
    /// Remote subscriptions live now.
    pub subscriptions: usize,
    /// The bus's counters.
    pub bus: StatsSnapshot,
}

impl ServerStats {
    /// The counters as key/value rows (what a STATS request answers).
    pub fn rows(&self) -> Vec<(String, String)> {
        let t = &self.bus.total;
        let mut rows: Vec<(String, String)> = vec![
            ("connections".into(), self.connections.to_string()),
            ("accepted".into(), self.accepted.to_string()),
            ("rejected".into(), self.rejected.to_string()),
            ("protocol_errors".into(), self.protocol_errors.to_string()),
            ("slow_consumers".into(), self.slow_consumers.to_string()),
            (
                "refused_publishes".into(),
                self.refused_publishes.to_string(),
            ),
            ("subscriptions".into(), self.subscriptions.to_string()),
            ("published".into(), t.published.to_string()),
            ("processed".into(), t.processed.to_string()),
            ("dropped".into(), t.dropped.to_string()),
            ("redelivered".into(), t.redelivered.to_string()),
            ("dead_lettered".into(), t.dead_lettered.to_string()),
        ];
        // Per topic and per queue, as `topic.<name>.<counter>` and `queue.<name>.depth`.
        for topic in &self.bus.topics {
            for (name, value) in [
                ("published", topic.published),
                ("processed", topic.processed),
                ("failed", topic.failed),
                ("redelivered", topic.redelivered),
                ("depth", topic.depth),
            ] {
                rows.push((format!("topic.{}.{name}", topic.topic), value.to_string()));
            }
        }
        for queue in &self.bus.queues {
            rows.push((
                format!("queue.{}.depth", queue.queue),
                queue.depth.to_string(),
            ));
        }
        rows
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Compares two secrets in time that depends only on their lengths: xor-fold over the bytes.
pub(crate) fn token_matches(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = expected.len() ^ given.len();
    for (i, &e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(!e);
        diff |= usize::from(e ^ g);
    }
    diff == 0
}

fn error_code(err: &Error) -> ErrorCode {
    match err {
        Error::Closed => ErrorCode::Closed,
        Error::QueueFull { .. } => ErrorCode::QueueFull,
        Error::InvalidTopic { .. } | Error::InvalidPattern { .. } | Error::InvalidOptions(_) => {
            ErrorCode::Invalid
        }
        _ => ErrorCode::Internal,
    }
}

#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    rejected: AtomicU64,
    protocol_errors: AtomicU64,
    slow_consumers: AtomicU64,
    refused_publishes: AtomicU64,
}

struct Shared {
    config: ServerConfig,
    bus: InMemoryBroker,
    stats: Arc<StatsCollector>,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    counters: Counters,
    closing: AtomicBool,
    /// Handles of the server's pumps (empty with one: nothing crosses between pumps).
    pumps: Vec<PumpHandle>,
}

impl Shared {
    fn stats(&self) -> ServerStats {
        let conns = lock(&self.conns);
        ServerStats {
            connections: conns.len(),
            accepted: self.counters.accepted.load(Ordering::Relaxed),
            rejected: self.counters.rejected.load(Ordering::Relaxed),
            protocol_errors: self.counters.protocol_errors.load(Ordering::Relaxed),
            slow_consumers: self.counters.slow_consumers.load(Ordering::Relaxed),
            refused_publishes: self.counters.refused_publishes.load(Ordering::Relaxed),
            subscriptions: conns.values().map(|c| lock(&c.state).subs.len()).sum(),
            bus: self.stats.snapshot(),
        }
    }
}

#[derive(Default)]
struct ConnState {
    /// Client sub id → the inner subscription.
    subs: HashMap<u64, Subscription>,
}

/// One client connection.
struct Conn {
    queue: MessageQueue,
    state: Mutex<ConnState>,
    /// Set once the connection is being closed: later frames are ignored.
    closing: AtomicBool,
    /// The handshake is done (read for every frame, so not under the state lock).
    welcomed: AtomicBool,
    /// The version the client speaks (0 before the handshake), which decides how its
    /// deliveries go out: one DELIVER each (1), many to a DELIVERS frame (2), or packed in
    /// PACKED frames (3).
    version: AtomicU16,
}

impl Conn {
    fn send(&self, op: &Op) {
        if let Err(err) = self.queue.send(op.to_bytes()) {
            tracing::debug!(conn.id = self.queue.id(), op = op.name(), error = %err, "reply not sent");
        }
    }

    /// Answers a publish: CONFIRM or ERROR if it asked for an answer, else a refusal counted.
    fn published(&self, shared: &Shared, request: u64, result: Result<MessageId>) {
        match result {
            Ok(id) if request != 0 => self.send(&Op::Confirm {
                request,
                message: id.0,
            }),
            Ok(_) => {}
            Err(err) if request != 0 => self.send(&Op::Error {
                request,
                code: error_code(&err),
                text: err.to_string(),
            }),
            Err(err) => {
                // The publisher asked for no answer; count it so that `stats` shows it.
                shared
                    .counters
                    .refused_publishes
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(conn.id = self.queue.id(), error = %err, "unconfirmed publish refused")
            }
        }
    }

    /// Sends an ERROR for the connection and closes it (once).
    fn fault(&self, code: ErrorCode, text: String) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::debug!(conn.id = self.queue.id(), peer = %self.queue.peer_addr(), %code, text, "closing connection");
        self.send(&Op::Error {
            request: 0,
            code,
            text,
        });
        self.queue.close();
    }
}

/// The queue listener of one connection, running on the connection's pump.
struct ConnListener {
    shared: Weak<Shared>,
    conn: Arc<Conn>,
    /// The publishes of the batch being read, published together ([`InMemoryBroker::publish_many`]),
    /// and their request ids.
    burst: Drafts,
    requests: Vec<u64>,
    /// The burst made into messages (kept for its room).
    staged: Vec<Message>,
    /// The topic of the last publish read: the next one on the same topic shares it.
    last_topic: Option<Arc<str>>,
    /// The queues the last burst left deep.
    watch: Watch,
    /// Deep queues this connection's publishes went to: it is not read until they are back to
    /// half the mark ([`ServerConfig::hold_publishers_above`]).
    held_by: Vec<Depth>,
}

impl ConnListener {
    fn protocol_fault(&self, shared: &Shared, code: ErrorCode, text: String) {
        shared
            .counters
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
        self.conn.fault(code, text);
    }

    fn handle(&self, shared: &Arc<Shared>, op: Op) {
        let conn = &self.conn;
        if !conn.welcomed.load(Ordering::Acquire) {
            let Op::Hello { version, token, .. } = op else {
                return self.protocol_fault(
                    shared,
                    ErrorCode::HandshakeRequired,
                    format!("{} before HELLO", op.name()),
                );
            };
            if !(MIN_VERSION..=VERSION).contains(&version) {
                return self.protocol_fault(
                    shared,
                    ErrorCode::UnsupportedVersion,
                    format!(
                        "version {version} is not supported (this server speaks {MIN_VERSION} to {VERSION})"
                    ),
                );
            }
            if let Some(expected) = &shared.config.token {
                let given = token.as_deref().unwrap_or("");
                if !token_matches(expected.as_bytes(), given.as_bytes()) {
                    shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
                    return conn.fault(ErrorCode::Unauthorized, "wrong or missing token".into());
                }
            }
            conn.version.store(version, Ordering::Release);
            conn.welcomed.store(true, Ordering::Release);
            return conn.send(&Op::Welcome {
                version,
                server: shared.config.name.clone(),
            });
        }
        match op {
            Op::Publish {
                request,
                topic,
                headers,
                payload,
            } => {
                let msg = Message::new(topic, payload).with_headers(headers);
                let result = shared.bus.publish(msg);
                conn.published(shared, request, result);
            }
            Op::Subscribe {
                sub,
                pattern,
                options,
            } => self.subscribe(shared, sub, &pattern, options),
            Op::Unsubscribe { sub } => {
                let removed = lock(&conn.state).subs.remove(&sub);
                drop(removed);
            }
            Op::Ack { sub, message } => {
                if let Some(delivery) = self.delivery(sub, message) {
                    let _ = shared.bus.ack(delivery);
                }
            }
            Op::Acks { sub, messages } => {
                let subscription = lock(&conn.state).subs.get(&sub).map(Subscription::id);
                if let Some(subscription) = subscription {
                    let ids: Vec<MessageId> = messages.into_iter().map(MessageId).collect();
                    shared.bus.ack_many(subscription, &ids);
                }
            }
            Op::AckRanges { sub, ranges } => {
                let subscription = lock(&conn.state).subs.get(&sub).map(Subscription::id);
                if let Some(subscription) = subscription {
                    shared.bus.ack_ranges(subscription, &ranges);
                }
            }
            Op::Nack {
                sub,
                message,
                requeue,
            } => {
                if let Some(delivery) = self.delivery(sub, message) {
                    let _ = shared.bus.nack(delivery, requeue);
                }
            }
            Op::Ping { nonce } => conn.send(&Op::Pong { nonce }),
            Op::Pong { .. } => {}
            Op::Stats { request } => conn.send(&Op::StatsReply {
                request,
                rows: shared.stats().rows(),
            }),
            Op::Error { code, text, .. } => {
                tracing::debug!(conn.id = conn.queue.id(), %code, text, "client reported an error");
            }
            Op::Hello { .. } => {
                self.protocol_fault(shared, ErrorCode::HandshakeRequired, "second HELLO".into())
            }
            other => self.protocol_fault(
                shared,
                ErrorCode::Invalid,
                format!("{} is not a client operation", other.name()),
            ),
        }
    }

    /// Publishes the burst read so far, in order, and answers each publish. Its messages get
    /// their ids and publish time here, and share one allocation ([`Drafts::finish`]).
    fn publish_burst(&mut self, shared: &Shared) {
        if self.burst.is_empty() {
            return;
        }
        let first = shared.bus.take_ids(self.burst.len());
        self.burst
            .stamp(first, nanos_since_epoch(SystemTime::now()));
        let mut staged = std::mem::take(&mut self.staged);
        self.burst.finish(None, &mut staged);
        let mut answers = self.requests.drain(..);
        let conn = &self.conn;
        self.watch.above = shared.config.hold_publishers_above;
        self.watch.above_bytes = shared.config.hold_publishers_above_bytes;
        shared.bus.publish_many(
            staged.drain(..),
            |result| {
                let request = answers.next().unwrap_or(0);
                conn.published(shared, request, result);
            },
            &mut self.watch,
        );
        self.staged = staged;
        if !self.watch.deep.is_empty() {
            // Holding a connection whose acks drain a queue could wait for ever.
            if lock(&conn.state).subs.is_empty() {
                if self.held_by.is_empty() {
                    tracing::debug!(conn.id = conn.queue.id(), "publisher held: queues deep");
                }
                self.held_by.append(&mut self.watch.deep);
            } else {
                self.watch.deep.clear();
            }
        }
    }

    fn delivery(&self, sub: u64, message: u64) -> Option<DeliveryId> {
        let state = lock(&self.conn.state);
        state.subs.get(&sub).map(|s| DeliveryId {
            subscription: s.id(),
            message: MessageId(message),
        })
    }

    fn subscribe(
        &self,
        shared: &Arc<Shared>,
        sub: u64,
        pattern: &str,
        options: crate::options::SubscribeOptions,
    ) {
        let conn = &self.conn;
        let refuse = |code, text: String| {
            conn.send(&Op::Error {
                request: sub,
                code,
                text,
            })
        };
        {
            let state = lock(&conn.state);
            if state.subs.contains_key(&sub) {
                return refuse(ErrorCode::Invalid, format!("subscription {sub} exists"));
            }
            if state.subs.len() >= shared.config.max_subscriptions_per_connection {
                return refuse(
                    ErrorCode::TooManySubscriptions,
                    format!(
                        "connection holds {} subscriptions (the limit)",
                        state.subs.len()
                    ),
                );
            }
        }
        // The server always acks by hand: the client acks once its handler has run.
        let inner_options = options.with_ack_mode(AckMode::Manual);
        let mut handler = Forwarder::handler(Arc::downgrade(shared), Arc::downgrade(conn), sub);
        if inner_options.group_name().is_none() {
            let config = &shared.config;
            let (limit, stall) = (
                config.max_queued_per_subscription,
                config.slow_consumer_stall,
            );
            let (weak, counters) = (Arc::downgrade(conn), Arc::downgrade(shared));
            handler = handler.with_overflow(limit, stall, move |limit| {
                let (Some(conn), Some(shared)) = (weak.upgrade(), counters.upgrade()) else {
                    return;
                };
                if !conn.closing.load(Ordering::Acquire) {
                    shared.counters.slow_consumers.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(conn.id = conn.queue.id(), peer = %conn.queue.peer_addr(), sub, limit, "disconnecting stuck consumer");
                }
                conn.fault(
                    ErrorCode::SlowConsumer,
                    format!("slow consumer: subscription {sub} is stuck with {limit} messages waiting (the limit)"),
                );
            });
        }
        match shared.bus.subscribe(pattern, inner_options, handler) {
            Ok(subscription) => {
                // ACKs are handled on this (pump) thread, so none can come before the insert.
                lock(&conn.state).subs.insert(sub, subscription);
                conn.send(&Op::Subscribed { sub });
            }
            Err(err) => refuse(error_code(&err), err.to_string()),
        }
    }
}

/// A PACKED (or DELIVERS) frame is closed once it holds this many bytes; the next delivery
/// opens another.
const FRAME_TARGET: usize = 64 << 10;

/// The opening of a PACKED or DELIVERS frame and its count, at most.
const DELIVERS_OPEN: usize = 1 + 8 + 4;

/// A delivery's payload of at least this many bytes is not copied into its frame but
/// sent from the message's own buffer (the frame goes out in parts, gathered by one `writev`):
/// a fan-out of large messages shares one payload to the socket.
const SHARE_PAYLOAD_AT: usize = 1024;

/// Payloads one frame shares at most (each adds two parts to the frame).
const SHARED_PER_FRAME: usize = (crate::queue::task::MAX_PARTS - 2) / 2;

/// How a connection's deliveries are framed, by the protocol version it speaks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// One DELIVER per delivery (version 1).
    One,
    /// Many to a DELIVERS frame (version 2).
    Delivers,
    /// Many to a PACKED frame (version 3).
    Packed,
}

impl Framing {
    fn of(version: u16) -> Framing {
        match version {
            0 | 1 => Framing::One,
            2 => Framing::Delivers,
            _ => Framing::Packed,
        }
    }
}

/// A frame waiting for the end of a run.
enum OutFrame {
    /// Encoded in one buffer.
    Whole(Bytes),
    /// Encoded pieces and shared payloads, one after another.
    Parts(Vec<Bytes>),
}

impl OutFrame {
    fn len(&self) -> usize {
        match self {
            OutFrame::Whole(b) => b.len(),
            OutFrame::Parts(parts) => parts.iter().map(Bytes::len).sum(),
        }
    }
}

/// Deliveries of one remote subscription encoded during a run of the inner broker.
struct Outgoing {
    /// Where frames are encoded; frames are split off it, so its allocation is reused.
    buf: BytesMut,
    /// Frames waiting for the end of the run.
    frames: VecDeque<OutFrame>,
    /// The open PACKED or DELIVERS frame: where its count goes, and how many deliveries it holds.
    open: Option<(usize, usize)>,
    /// The pieces of the open frame before `buf` once it shares a payload: encoded bytes split
    /// off `buf` (the first holds the count, written when the frame closes) and payloads.
    pieces: Vec<BytesMut>,
    shared: Vec<Bytes>,
    /// Bytes in `pieces` and `shared`.
    pieces_len: usize,
    /// The connection, held from the first delivery of a run to its flush, so that a run
    /// upgrades its weak reference once rather than once per delivery.
    conn: Option<Arc<Conn>>,
    /// What the open PACKED frame's last delivery carried.
    pack: PackState,
}

impl Outgoing {
    fn close_frame(&mut self) {
        let Some((at, count)) = self.open.take() else {
            return;
        };
        if self.pieces.is_empty() {
            protocol::end_delivers(&mut self.buf, at, count);
            self.frames
                .push_back(OutFrame::Whole(self.buf.split().freeze()));
            return;
        }
        // Pieces and payloads alternate: piece, payload, piece, payload, ..., then the rest.
        if let Some(first) = self.pieces.first_mut() {
            protocol::end_delivers(first, at, count);
        }
        let tail = self.buf.split();
        let mut parts = Vec::with_capacity(2 * self.shared.len() + 1);
        for (piece, payload) in self.pieces.drain(..).zip(self.shared.drain(..)) {
            parts.push(piece.freeze());
            parts.push(payload);
        }
        if !tail.is_empty() {
            parts.push(tail.freeze());
        }
        self.pieces_len = 0;
        self.frames.push_back(OutFrame::Parts(parts));
    }

    /// Bytes of the open frame so far.
    fn open_len(&self) -> usize {
        self.pieces_len + self.buf.len()
    }
}

/// Forwards the deliveries of one inner subscription to its connection. The inner broker calls
/// the handler for each delivery, then the batch-end hook, on one dispatch thread at a time:
/// deliveries are encoded into one buffer (borrowing topic, headers and payload) and a run goes
/// out with one `send_all` (one lock, at most one wake of the pump).
struct Forwarder {
    shared: Weak<Shared>,
    conn: Weak<Conn>,
    sub: u64,
    out: Mutex<Outgoing>,
}

impl Forwarder {
    fn handler(shared: Weak<Shared>, conn: Weak<Conn>, sub: u64) -> Handler {
        let me = Arc::new(Forwarder {
            shared,
            conn,
            sub,
            out: Mutex::new(Outgoing {
                buf: BytesMut::with_capacity(FRAME_TARGET),
                frames: VecDeque::new(),
                open: None,
                pieces: Vec::new(),
                shared: Vec::new(),
                pieces_len: 0,
                conn: None,
                pack: PackState::default(),
            }),
        });
        let flusher = me.clone();
        let pump = me.conn.upgrade().map(|c| c.queue.pump().clone());
        let pumps = me
            .shared
            .upgrade()
            .map(|s| s.pumps.clone())
            .unwrap_or_default();
        let one = me.clone();
        let handler = Handler::new(move |msg: &Message| {
            one.push(std::slice::from_ref(msg));
            Ok(())
        })
        .with_call_all(move |msgs: &[Message]| me.push(msgs))
        .with_batch_end(move || flusher.flush());
        match pump {
            // Deliveries run on the subscriber's connection pump, not on a dispatch thread. A
            // publish read on the same pump is forwarded there with no hand-off; one read on
            // another pump posts one run here, which forwards every message queued by then. Runs
            // posted while a pump reads a burst of publishes come after it, so each run forwards
            // the burst in one frame.
            // On several pumps, a run scheduled from another of the server's pumps while this
            // one sleeps goes to that other pump (after the task that scheduled it), and its
            // frames are written there (the connection writes in place, see `accept`): a lone
            // message crosses with no wake-up on the way.
            Some(pump) => handler.with_executor(Arc::new(move |run| {
                let here = if pump.is_sleeping() {
                    pumps.iter().find(|p| p.is_pump_thread())
                } else {
                    None
                };
                here.unwrap_or(&pump)
                    .post_fn("bus-forward", move |_cx: &mut _| run())
                    .is_ok()
            })),
            None => handler,
        }
    }

    /// Encodes a run of deliveries (one lock for all of them).
    fn push(&self, msgs: &[Message]) {
        let mut out = lock(&self.out);
        let out = &mut *out;
        if out.conn.is_none() {
            out.conn = self.conn.upgrade();
        }
        let Some(conn) = &out.conn else {
            return;
        };
        if conn.closing.load(Ordering::Acquire) {
            // Left un-acked: the connection's subscriptions end soon and its group messages go
            // to other members.
            return;
        }
        let framing = Framing::of(conn.version.load(Ordering::Acquire));
        for msg in msgs {
            self.push_one(out, framing, msg);
        }
    }

    fn push_one(&self, out: &mut Outgoing, framing: Framing, msg: &Message) {
        let published_us = msg.published_ns() / 1000;
        let payload = msg.payload();
        let batched = framing != Framing::One;
        let share = batched && payload.len() >= SHARE_PAYLOAD_AT;
        // A packed delivery's head is at most a flag byte longer than a full one.
        let needed = DELIVERS_OPEN
            + 1
            + protocol::delivery_head_len(msg.topic(), msg.headers())
            + if share { 0 } else { payload.len() };
        if out.buf.capacity() - out.buf.len() < needed {
            // The buffer is full: close the open frame early rather than let the buffer grow,
            // which would copy the frame so far. The next one starts in an empty buffer (frames
            // are split off whole), so this reserve copies nothing: it takes the allocation
            // back if every frame split off it was written, or starts another.
            out.close_frame();
            out.buf.reserve(needed.max(FRAME_TARGET));
        }
        match framing {
            Framing::One => protocol::begin_deliver(&mut out.buf, self.sub),
            Framing::Delivers if out.open.is_none() => {
                let at = protocol::begin_delivers(&mut out.buf, self.sub);
                out.open = Some((at, 0));
            }
            Framing::Packed if out.open.is_none() => {
                let at = protocol::begin_packed(&mut out.buf, self.sub);
                out.open = Some((at, 0));
                out.pack = PackState::default();
            }
            Framing::Delivers | Framing::Packed => {}
        }
        if framing == Framing::Packed {
            protocol::put_packed_head(
                &mut out.buf,
                &mut out.pack,
                msg.id().0,
                msg.attempt(),
                published_us,
                msg.shared_topic(),
                msg.headers(),
                payload.len(),
            );
        } else {
            protocol::put_delivery_head(
                &mut out.buf,
                msg.id().0,
                msg.attempt(),
                published_us,
                msg.topic(),
                msg.headers(),
                payload.len(),
            );
        }
        if share {
            // The payload goes out from its own buffer, after what is encoded so far.
            let piece = out.buf.split();
            out.pieces_len += piece.len() + payload.len();
            out.pieces.push(piece);
            out.shared.push(payload.clone());
        } else {
            out.buf.extend_from_slice(payload);
        }
        match &mut out.open {
            Some((_, count)) => {
                *count += 1;
                if out.open_len() >= FRAME_TARGET || out.shared.len() >= SHARED_PER_FRAME {
                    out.close_frame();
                }
            }
            None => out
                .frames
                .push_back(OutFrame::Whole(out.buf.split().freeze())),
        }
    }

    /// Sends what the run encoded, or cuts the connection off as a slow consumer.
    fn flush(&self) {
        let mut out = lock(&self.out);
        out.close_frame();
        let conn = out.conn.take();
        if out.frames.is_empty() {
            return;
        }
        let (Some(conn), Some(shared)) = (conn, self.shared.upgrade()) else {
            out.frames.clear();
            return;
        };
        if conn.closing.load(Ordering::Acquire) {
            out.frames.clear();
            return;
        }
        let limit = shared.config.max_outbound_bytes;
        let queued = conn.queue.queued_bytes();
        let bytes: usize = out.frames.iter().map(OutFrame::len).sum();
        let slow = if queued + bytes > limit {
            Some(format!(
                "slow consumer: {queued} bytes queued, the limit is {limit}"
            ))
        } else {
            send_frames(&conn.queue, &mut out.frames)
        };
        out.frames.clear();
        drop(out);
        if let Some(reason) = slow {
            if !conn.closing.load(Ordering::Acquire) {
                shared
                    .counters
                    .slow_consumers
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(conn.id = conn.queue.id(), peer = %conn.queue.peer_addr(), reason, "disconnecting slow consumer");
            }
            conn.fault(ErrorCode::SlowConsumer, reason);
        }
    }
}

/// Sends `frames` in order (runs of whole frames with one `send_all`); returns why the
/// connection is a slow consumer if its queue could not take them all.
fn send_frames(queue: &MessageQueue, frames: &mut VecDeque<OutFrame>) -> Option<String> {
    let mut whole = VecDeque::new();
    let full = || {
        Some(format!(
            "slow consumer: outbound queue full at {} bytes",
            queue.queued_bytes()
        ))
    };
    let mut frames = std::mem::take(frames).into_iter().peekable();
    while frames.peek().is_some() {
        while let Some(OutFrame::Whole(_)) = frames.peek() {
            if let Some(OutFrame::Whole(frame)) = frames.next() {
                whole.push_back(frame);
            }
        }
        let sent = if whole.is_empty() {
            match frames.next() {
                Some(OutFrame::Parts(parts)) => queue.send_parts(parts),
                _ => Ok(()),
            }
        } else {
            match queue.send_all(&mut whole) {
                Ok(_) if whole.is_empty() => Ok(()),
                Ok(_) => return full(),
                Err(err) => Err(err),
            }
        };
        match sent {
            Ok(()) => {}
            Err(SendError::Full { .. }) => return full(),
            Err(err) => {
                tracing::debug!(conn.id = queue.id(), error = %err, "delivery not sent");
                return None;
            }
        }
    }
    None
}

impl QueueListener for ConnListener {
    /// A batch of frames: runs of PUBLISH frames are published together (one clock reading,
    /// one route lookup and one queue lock per run, and a topic allocated once), every other
    /// frame is handled in its turn by [`received`](Self::received).
    fn received_frames(&mut self, queue: &MessageQueue, frames: &Frames) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let max = shared.config.max_frame_len;
        let chunk = frames.chunk();
        for frame in frames.iter() {
            if self.conn.closing.load(Ordering::Acquire) {
                break;
            }
            let publish = if frame.len() <= max && self.conn.welcomed.load(Ordering::Acquire) {
                protocol::decode_publish(frame, chunk, &mut self.last_topic)
            } else {
                None
            };
            match publish {
                Some(Ok((p, topic))) => {
                    let id = MessageId(0);
                    self.burst
                        .push_in(topic, (chunk, p.payload), p.headers, id, 0, 1);
                    self.requests.push(p.request);
                }
                // Anything else (a malformed PUBLISH too) goes the one-frame way, in order.
                _ => {
                    self.publish_burst(&shared);
                    self.received(queue, chunk.slice_ref(frame));
                }
            }
        }
        self.publish_burst(&shared);
    }

    fn received(&mut self, _queue: &MessageQueue, msg: Bytes) {
        if self.conn.closing.load(Ordering::Acquire) {
            return;
        }
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let max = shared.config.max_frame_len;
        if msg.len() > max {
            return self.protocol_fault(
                &shared,
                ErrorCode::FrameTooLarge,
                format!("frame of {} bytes exceeds the {max}-byte limit", msg.len()),
            );
        }
        match protocol::decode(msg) {
            Ok(op) => {
                tracing::trace!(conn.id = self.conn.queue.id(), op = op.name(), "frame");
                self.handle(&shared, op);
            }
            Err(err) => {
                let code = match err {
                    protocol::ProtocolError::UnknownOp(_) => ErrorCode::UnknownOp,
                    _ => ErrorCode::Malformed,
                };
                self.protocol_fault(&shared, code, err.to_string());
            }
        }
    }

    /// Not read while queues this connection published to are deep (see
    /// [`ServerConfig::hold_publishers_above`]).
    fn hold_receiving(&mut self, _queue: &MessageQueue) -> bool {
        if self.held_by.is_empty() {
            return false;
        }
        if self.shared.upgrade().is_none() {
            return false;
        }
        self.held_by
            .retain(|d| d.is_open() && d.get() > d.limit() / 2);
        if self.held_by.is_empty() {
            tracing::debug!(conn.id = self.conn.queue.id(), "publisher released");
        }
        !self.held_by.is_empty()
    }

    /// A header announced more than twice the frame limit: the queue closes; say why first.
    fn protocol_error(&mut self, _queue: &MessageQueue, err: &FrameError) {
        if self.conn.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(shared) = self.shared.upgrade() {
            let max = shared.config.max_frame_len;
            let text = match err {
                FrameError::TooLarge { len, .. } => {
                    format!("frame of {len} bytes exceeds the {max}-byte limit")
                }
                other => other.to_string(),
            };
            shared
                .counters
                .protocol_errors
                .fetch_add(1, Ordering::Relaxed);
            shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
            self.conn.send(&Op::Error {
                request: 0,
                code: ErrorCode::FrameTooLarge,
                text,
            });
        }
    }

    fn closed(&mut self, queue: &MessageQueue, info: CloseInfo) {
        self.conn.closing.store(true, Ordering::Release);
        let subs: Vec<Subscription> = lock(&self.conn.state)
            .subs
            .drain()
            .map(|(_, s)| s)
            .collect();
        tracing::debug!(conn.id = queue.id(), reason = %info.reason, subs = subs.len(), "connection closed");
        // Ending the inner subscriptions hands their un-acked group messages to other members.
        drop(subs);
        if let Some(shared) = self.shared.upgrade() {
            lock(&shared.conns).remove(&queue.id());
        }
    }
}

/// A bus server: an [`InMemoryBroker`] served over TCP to [`RemoteBroker`](crate::RemoteBroker)s.
///
/// It runs its own event pumps ([`ServerConfig::pumps`]), each connection on one of them; a
/// connection's frames are handled on its pump. Every remote subscription is a manual-ack
/// subscription on the inner broker whose deliveries also run on its connection's pump (not on
/// the inner broker's dispatch threads) and go out batched, many per PACKED frame, so the inner
/// broker's rules apply unchanged: broadcast, consumer groups with retention, ack wait,
/// re-delivery and dead letters. A connection that falls more than
/// [`ServerConfig::max_outbound_bytes`] behind is closed with an ERROR; its subscriptions end and
/// its un-acked group messages go to other members. A malformed frame closes only its connection.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mixbus_bus::{Broker, BusServer, Message, RemoteBroker, RemoteConfig, ServerConfig};
/// let server = BusServer::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::default())?;
/// let client = RemoteBroker::connect(server.local_addr(), RemoteConfig::default())?;
/// let id = client.publish(Message::new("orders.created", "42"))?;
/// assert!(id.0 > 0);
/// client.close(Duration::from_secs(1));
/// server.shutdown(Duration::from_secs(1));
/// # Ok::<(), mixbus_bus::Error>(())
/// ```
pub struct BusServer {
    shared: Arc<Shared>,
    queues: QueueBroker,
    /// The first also accepts connections.
    pumps: Mutex<Vec<EventPump>>,
    addr: SocketAddr,
    report: Mutex<Option<CloseReport>>,
}

impl BusServer {
    /// Starts a server listening on `addr` (port 0 picks a free port; see
    /// [`local_addr`](Self::local_addr)).
    ///
    /// # Errors
    ///
    /// [`Error::TokenRequired`] for a non-loopback address without a token, [`Error::Queue`] when
    /// binding fails, [`Error::Pump`] or [`Error::Spawn`] when a thread cannot start.
    pub fn bind(addr: SocketAddr, config: ServerConfig) -> Result<BusServer> {
        let has_token = config.token.as_deref().is_some_and(|t| !t.is_empty());
        if !addr.ip().is_loopback() && !has_token {
            return Err(Error::TokenRequired { addr });
        }
        let bus = InMemoryBroker::with_config(config.inner.clone())?;
        let stats = Arc::new(StatsCollector::new());
        bus.add_listener(stats.clone());
        let pumps = (0..config.pumps.clamp(1, MAX_PUMPS))
            .map(|_| {
                EventPump::with_config(
                    PumpConfig::default()
                        .with_name("mixbus-server")
                        .with_spin_range(config.spin, config.spin_max),
                )
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        // Frames between the limit and twice it are read whole and refused by this layer; the
        // queue layer cuts a frame whose header announces more than that at once, before its
        // payload arrives, and `protocol_error` says why.
        let queue_config = QueueConfig::default()
            .with_max_frame_len(config.max_frame_len.saturating_mul(2).max(64))
            .with_water_marks(
                config.max_outbound_bytes.saturating_mul(2).max(1 << 16),
                config.max_outbound_bytes.max(1 << 15),
            )
            .with_linger(config.linger);
        // With one pump nothing crosses between pumps: no list to spread over or look up.
        let handles: Vec<PumpHandle> = if pumps.len() > 1 {
            pumps.iter().map(EventPump::handle).collect()
        } else {
            Vec::new()
        };
        let queues = QueueBroker::new(pumps[0].handle(), queue_config)
            .with_connection_pumps(handles.clone());
        let shared = Arc::new(Shared {
            config,
            bus,
            stats,
            conns: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            closing: AtomicBool::new(false),
            pumps: handles,
        });
        let weak = Arc::downgrade(&shared);
        let local = queues.bind(addr, move |queue: MessageQueue| accept(&weak, queue))?;
        tracing::info!(addr = %local, "bus server listening");
        Ok(BusServer {
            shared,
            queues,
            pumps: Mutex::new(pumps),
            addr: local,
            report: Mutex::new(None),
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The inner bus, for in-process publishers and subscribers next to the remote ones.
    pub fn broker(&self) -> &InMemoryBroker {
        &self.shared.bus
    }

    /// Counters of connections and of the bus.
    pub fn stats(&self) -> ServerStats {
        self.shared.stats()
    }

    /// Stops listening, closes every connection, closes the bus (waiting up to `timeout` for its
    /// in-flight work) and stops the pumps. Calling it again returns the first report.
    pub fn shutdown(&self, timeout: Duration) -> CloseReport {
        let mut report = lock(&self.report);
        if let Some(r) = report.as_ref() {
            return r.clone();
        }
        let start = Instant::now();
        self.shared.closing.store(true, Ordering::Release);
        let _ = self.queues.unbind(self.addr);
        let conns: Vec<Arc<Conn>> = lock(&self.shared.conns).values().cloned().collect();
        for conn in &conns {
            conn.fault(ErrorCode::Closed, "server shutting down".into());
        }
        let r = self.shared.bus.close(timeout);
        // Wait (bounded) for the connections to finish closing before the pumps stop.
        let deadline = Instant::now() + self.shared.config.linger + Duration::from_millis(200);
        while conns.iter().any(|c| !c.queue.is_closed()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        for conn in &conns {
            lock(&conn.state).subs.clear();
        }
        lock(&self.shared.conns).clear();
        // Connection pumps first: the first pump's accept task goes last.
        for pump in lock(&self.pumps).drain(..).rev() {
            let left = timeout
                .saturating_sub(start.elapsed())
                .max(Duration::from_millis(200));
            pump.shutdown(left);
        }
        tracing::info!(addr = %self.addr, report = %r, "bus server stopped");
        *report = Some(r.clone());
        r
    }
}

fn accept(shared: &Weak<Shared>, queue: MessageQueue) {
    let Some(shared) = shared.upgrade() else {
        queue.close();
        return;
    };
    let conn = Arc::new(Conn {
        queue: queue.clone(),
        state: Mutex::new(ConnState::default()),
        closing: AtomicBool::new(false),
        welcomed: AtomicBool::new(false),
        version: AtomicU16::new(0),
    });
    let refused = if shared.closing.load(Ordering::Acquire) {
        Some((ErrorCode::Closed, "server shutting down".to_owned()))
    } else {
        let mut conns = lock(&shared.conns);
        if conns.len() >= shared.config.max_connections {
            Some((
                ErrorCode::TooManyConnections,
                format!("server holds {} connections (the limit)", conns.len()),
            ))
        } else {
            conns.insert(queue.id(), conn.clone());
            None
        }
    };
    shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
    if let Some((code, text)) = refused {
        shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
        conn.fault(code, text);
        return;
    }
    tracing::debug!(conn.id = queue.id(), peer = %queue.peer_addr(), "client connected");
    if !shared.pumps.is_empty() {
        // Deliveries forwarded from another pump while this connection's sleeps are written
        // by that pump (see `Forwarder::handler`).
        queue.set_write_in_place(true);
    }
    let timeout = shared.config.handshake_timeout;
    let (weak_conn, weak_shared) = (Arc::downgrade(&conn), Arc::downgrade(&shared));
    let check = OnceTask::new("bus-handshake-timeout", move |_cx: &mut _| {
        let (Some(conn), Some(shared)) = (weak_conn.upgrade(), weak_shared.upgrade()) else {
            return;
        };
        if !conn.welcomed.load(Ordering::Acquire) && !conn.closing.load(Ordering::Acquire) {
            shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
            conn.fault(
                ErrorCode::HandshakeRequired,
                format!("no HELLO within {timeout:?}"),
            );
        }
    });
    if queue.pump().post_after(timeout, check).is_err() {
        tracing::debug!(conn.id = queue.id(), "handshake timer not set: pump closed");
    }
    let listener = ConnListener {
        shared: Arc::downgrade(&shared),
        conn,
        burst: Drafts::default(),
        requests: Vec::new(),
        staged: Vec::new(),
        last_topic: None,
        watch: Watch::default(),
        held_by: Vec::new(),
    };
    if let Err(err) = queue.set_listener(listener) {
        tracing::warn!(conn.id = queue.id(), error = %err, "could not start reading");
        lock(&shared.conns).remove(&queue.id());
        queue.close();
    }
}

impl Drop for BusServer {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(1));
    }
}

impl fmt::Debug for BusServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusServer")
            .field("addr", &self.addr)
            .field("connections", &lock(&self.shared.conns).len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(token_matches(b"secret", b"secret"));
        assert!(!token_matches(b"secret", b"secreT"));
        assert!(!token_matches(b"secret", b"secre"));
        assert!(!token_matches(b"secret", b"secrets"));
        assert!(!token_matches(b"secret", b""));
        assert!(token_matches(b"", b""));
    }

    #[test]
    fn non_loopback_without_token_is_refused() {
        let addr: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert!(matches!(
            BusServer::bind(addr, ServerConfig::default()),
            Err(Error::TokenRequired { .. })
        ));
    }
}
