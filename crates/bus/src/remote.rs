//! [`RemoteBroker`]: the [`Broker`] trait over a connection to a [`BusServer`](crate::BusServer),
//! with reconnection and re-subscription.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};

use crate::broker::{Broker, CloseReport, Handler, ListenerId, Subscription};
use crate::error::{Error, Result};
use crate::idhash::IdSet;
use crate::listener::{BrokerListener, Listeners, Notifier, SubscriptionInfo};
use crate::message::{DeliveryId, Drafts, Message, MessageId, SubscriptionId};
use crate::options::{AckMode, SubscribeOptions};
use crate::protocol::{self, DeliveryRef, ErrorCode, Op, VERSION, WireDelivery};
use crate::queue::task::Frames;
use crate::queue::task::pump::{AdaptiveSpin, EventPump, PumpConfig, SpinSlots};
use crate::queue::{CloseInfo, MessageQueue, QueueBroker, QueueConfig, QueueListener, SendError};
use crate::topic::{Pattern, validate_topic_cached, validate_topic_str_cached};

/// How a [`RemoteBroker`] is set up: plain data with defaults, changed with the `with_*` methods.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteConfig {
    /// The token sent in HELLO (default none).
    pub token: Option<String>,
    /// The client's name, sent in HELLO for the server's logs (default `mixbus-client`).
    pub name: String,
    /// Whether `publish` waits for the server's CONFIRM and returns its message id (default
    /// true). Without, `publish` returns once the frame is queued, with message id 0.
    pub confirm: bool,
    /// How long `publish` waits for a confirm, and for a reconnection while the connection is
    /// down (default 5 s).
    pub publish_timeout: Duration,
    /// How long `subscribe`, `stats` and `ping` wait for the answer (default 5 s).
    pub request_timeout: Duration,
    /// How long `connect` keeps trying the first connection (default 5 s).
    pub connect_timeout: Duration,
    /// First delay between reconnection attempts (default 10 ms), doubled up to
    /// `reconnect_backoff_max` (default 500 ms).
    pub reconnect_backoff: Duration,
    /// The longest delay between reconnection attempts.
    pub reconnect_backoff_max: Duration,
    /// The largest frame accepted from the server (default 16 MiB).
    pub max_frame_len: usize,
    /// How long the client's idle event pump (and each subscription's handler thread) keeps
    /// watching for work before it sleeps, at the least (default 20 µs); see
    /// [`with_spin`](Self::with_spin).
    pub spin: Duration,
    /// How far that spin may grow while the server keeps answering soon after the pump fell
    /// asleep (default 200 µs); see [`with_spin_range`](Self::with_spin_range).
    pub spin_max: Duration,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            token: None,
            name: "mixbus-client".to_owned(),
            confirm: true,
            publish_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            reconnect_backoff: Duration::from_millis(10),
            reconnect_backoff_max: Duration::from_millis(500),
            max_frame_len: 16 << 20,
            spin: PumpConfig::default().spin,
            spin_max: PumpConfig::default().spin_max,
        }
    }
}

impl RemoteConfig {
    /// Sets the token sent in HELLO.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the client's name.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets whether `publish` waits for the server's confirm.
    #[must_use]
    pub fn with_confirm(mut self, confirm: bool) -> Self {
        self.confirm = confirm;
        self
    }

    /// Sets the publish timeout.
    #[must_use]
    pub fn with_publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Sets the request timeout.
    #[must_use]
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the first connection's timeout.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the reconnection back-off.
    #[must_use]
    pub fn with_reconnect_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.reconnect_backoff = initial;
        self.reconnect_backoff_max = max.max(initial);
        self
    }

    /// Sets the largest frame accepted from the server.
    #[must_use]
    pub fn with_max_frame_len(mut self, bytes: usize) -> Self {
        self.max_frame_len = bytes;
        self
    }

    /// Sets a fixed spin for the client's idle event pump and its handler threads: how long
    /// they watch for work before they sleep, always, as
    /// [`ServerConfig::with_spin`](crate::ServerConfig::with_spin) on the server. The default
    /// adapts instead ([`with_spin_range`](Self::with_spin_range)).
    ///
    /// A reply (or the next request) that arrives within the spin is read with no thread
    /// wake-up. Between looks the thread yields its core to any other runnable thread. A client
    /// that hears from its server more often than the spin lasts never sleeps; an idle one
    /// still sleeps once the spin ends.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use mixbus_bus::RemoteConfig;
    ///
    /// let config = RemoteConfig::default().with_spin(Duration::from_micros(150));
    /// assert_eq!(config.spin, Duration::from_micros(150));
    /// assert_eq!(config.spin_max, Duration::from_micros(150));
    /// ```
    #[must_use]
    pub fn with_spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self.spin_max = spin;
        self
    }

    /// Sets a spin that adapts between `min` and `max` (default 20 to 200 µs) for the client's
    /// event pump and its handler threads, as
    /// [`PumpConfig::with_spin_range`](crate::queue::task::pump::PumpConfig::with_spin_range)
    /// explains: while the server answers within `max`, they stop sleeping between messages.
    #[must_use]
    pub fn with_spin_range(mut self, min: Duration, max: Duration) -> Self {
        self.spin = min;
        self.spin_max = max.max(min);
        self
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An answer to a request, routed by request id.
enum Reply {
    Confirm(u64),
    Subscribed,
    Stats(Vec<(String, String)>),
    Pong,
    Refused(ErrorCode, String),
    Disconnected,
}

/// One subscription as the client keeps it, to dispatch and to re-subscribe.
struct RemoteSub {
    id: u64,
    pattern: String,
    options: SubscribeOptions,
    info: SubscriptionInfo,
    tx: Mutex<Option<flume::Sender<Vec<Message>>>>,
    /// An inline handler, run on the connection's pump instead of a thread of its own.
    inline: Option<Handler>,
    active: AtomicBool,
    /// Ids of the messages delivered to a manual-ack subscription and not acked or nacked yet
    /// (the client's `unacked` count). Each subscription has its own, so that the dispatch
    /// threads of two subscriptions never share a lock per message.
    unacked: Mutex<IdSet<u64>>,
}

#[derive(Default)]
struct Link {
    queue: Option<MessageQueue>,
    generation: u64,
    closed: bool,
    reconnecting: bool,
    /// A connection that closed before it was installed.
    lost_generation: u64,
    /// Unconfirmed PUBLISH frames a lost connection never wrote, in order, to send first on the
    /// next one (see [`Resend`]).
    resend: Resend,
    /// Unconfirmed publishes the connection `close` flushed had not written when it ended.
    unsent_at_close: u64,
    /// The connection `close` flushed has ended.
    close_ended: bool,
}

/// Unconfirmed publishes held across a reconnection: the frames a lost connection had queued
/// and never written (the server cannot have seen them, so sending them again duplicates
/// nothing), bounded by the outbound queue's high water mark.
#[derive(Default)]
struct Resend {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// Frames given up because the bound was reached, since the last report.
    dropped: u64,
}

impl Resend {
    /// Keeps the unconfirmed publishes among `unsent`, in order, up to `limit` bytes held;
    /// returns how many were kept.
    fn keep(&mut self, unsent: Vec<Bytes>, limit: usize) -> usize {
        let mut kept = 0;
        for frame in unsent {
            if !protocol::is_unconfirmed_publish(&frame) {
                continue;
            }
            if self.bytes + frame.len() > limit {
                self.dropped += 1;
                continue;
            }
            self.bytes += frame.len();
            self.frames.push_back(frame);
            kept += 1;
        }
        kept
    }

    /// The first `n` frames went out on a new connection.
    fn forget_front(&mut self, n: usize) {
        for frame in self.frames.drain(..n) {
            self.bytes -= frame.len();
        }
    }
}

struct Client {
    config: RemoteConfig,
    addr: SocketAddr,
    queues: QueueBroker,
    link: Mutex<Link>,
    changed: Condvar,
    pending: Mutex<HashMap<u64, flume::Sender<Reply>>>,
    subs: Mutex<HashMap<u64, Arc<RemoteSub>>>,
    next_id: AtomicU64,
    listeners: Listeners,
    delivered: AtomicU64,
    queued: AtomicU64,
    running: AtomicU64,
    /// Leave for the handler threads to spin before they block, one per core.
    spin_slots: SpinSlots,
}

impl Client {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the caller runs on the connection's I/O thread (an inline handler), where
    /// waiting for the connection can only end in a timeout.
    fn on_io_thread(&self) -> bool {
        self.queues.pump().is_pump_thread()
    }

    /// The live queue, waiting up to `wait` for a reconnection (the clock is read only then).
    fn queue(&self, wait: Duration) -> Result<MessageQueue> {
        let mut deadline = None;
        let mut link = lock(&self.link);
        loop {
            if link.closed {
                return Err(Error::Closed);
            }
            if let Some(q) = &link.queue {
                return Ok(q.clone());
            }
            if self.on_io_thread() {
                return Err(Error::WouldBlock {
                    what: "a reconnection",
                });
            }
            let now = Instant::now();
            let deadline = *deadline.get_or_insert(now + wait);
            if now >= deadline {
                return Err(Error::Disconnected { waited: wait });
            }
            link = self
                .changed
                .wait_timeout(link, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Queues `frame` on the current connection if there is one with room; hands it back if not
    /// (parts joined into one buffer).
    fn try_send(&self, frame: Outgoing) -> std::result::Result<(), Bytes> {
        let link = lock(&self.link);
        match &link.queue {
            Some(queue) if !link.closed => frame.send_on(queue).map_err(SendError::into_msg),
            _ => Err(frame.join()),
        }
    }

    /// Copies an unconfirmed publish of a payload under [`COPY_PUBLISH_BELOW`] bytes straight
    /// into the connection's outbound runs: its head encoded into this thread's scratch buffer,
    /// then head and payload copied, with no allocation. False if it must go the long way (too
    /// large, not connected, or no room).
    fn try_send_small_publish(
        &self,
        topic: &str,
        headers: &[(String, String)],
        payload: &[u8],
    ) -> bool {
        payload.len() < COPY_PUBLISH_BELOW
            && PUBLISH_SCRATCH.with_borrow_mut(|buf| {
                buf.clear();
                protocol::put_publish_head(buf, 0, topic, headers, payload.len());
                self.try_send_copy(&[buf, payload])
            })
    }

    /// [`try_send`](Self::try_send) for a frame the caller keeps, in parts: queued as one copy
    /// (see [`MessageQueue::send_copy_gathered`]), with no handle made for it; false if it was
    /// not queued.
    fn try_send_copy(&self, parts: &[&[u8]]) -> bool {
        let link = lock(&self.link);
        match &link.queue {
            Some(queue) if !link.closed => queue.send_copy_gathered(parts).is_ok(),
            _ => false,
        }
    }

    /// Sends a frame, waiting (bounded by `deadline`, or the publish timeout from the first
    /// refusal) for room when the outbound queue is full.
    fn send_frame(
        &self,
        queue: &MessageQueue,
        frame: impl Into<Outgoing>,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let mut deadline = deadline;
        let mut frame = frame.into();
        loop {
            match frame.send_on(queue) {
                Ok(()) => return Ok(()),
                Err(SendError::Full { msg, .. }) => {
                    frame = Outgoing::Whole(msg);
                    if self.on_io_thread() {
                        return Err(Error::WouldBlock {
                            what: "room in the outbound queue",
                        });
                    }
                    let now = Instant::now();
                    let deadline = *deadline.get_or_insert(now + self.config.publish_timeout);
                    if now >= deadline {
                        return Err(Error::Timeout {
                            what: "room in the outbound queue",
                            after: self.config.publish_timeout,
                        });
                    }
                    // `writable` notifies the condvar when room comes back.
                    let link = lock(&self.link);
                    let wait = (deadline - now).min(Duration::from_millis(10));
                    drop(self.changed.wait_timeout(link, wait));
                }
                Err(SendError::Closed(_)) => {
                    return Err(Error::Disconnected {
                        waited: Duration::ZERO,
                    });
                }
                Err(err) => {
                    return Err(Error::Refused {
                        code: ErrorCode::FrameTooLarge,
                        text: err.to_string(),
                    });
                }
            }
        }
    }

    /// Sends a request on `queue` and waits for its answer.
    fn request(
        &self,
        queue: &MessageQueue,
        id: u64,
        op: &Op,
        what: &'static str,
        timeout: Duration,
    ) -> Result<Reply> {
        self.request_frame(queue, id, op.to_bytes(), what, timeout)
    }

    /// Sends an encoded request on `queue` and waits for its answer.
    fn request_frame(
        &self,
        queue: &MessageQueue,
        id: u64,
        frame: impl Into<Outgoing>,
        what: &'static str,
        timeout: Duration,
    ) -> Result<Reply> {
        if self.on_io_thread() {
            return Err(Error::WouldBlock { what });
        }
        let deadline = Instant::now() + timeout;
        let (tx, rx) = flume::bounded(1);
        lock(&self.pending).insert(id, tx);
        if let Err(err) = self.send_frame(queue, frame, Some(deadline)) {
            lock(&self.pending).remove(&id);
            return Err(err);
        }
        let reply = rx.recv_deadline(deadline);
        lock(&self.pending).remove(&id);
        match reply {
            Ok(Reply::Disconnected) | Err(flume::RecvTimeoutError::Disconnected) => {
                Err(Error::Disconnected {
                    waited: Duration::ZERO,
                })
            }
            Ok(Reply::Refused(code, text)) => Err(Error::Refused { code, text }),
            Ok(reply) => Ok(reply),
            Err(flume::RecvTimeoutError::Timeout) => Err(Error::Timeout {
                what,
                after: timeout,
            }),
        }
    }

    /// Sends a frame on the live queue without waiting for anything; false if disconnected.
    fn send_now(&self, op: &Op) -> bool {
        let queue = lock(&self.link).queue.clone();
        match queue {
            Some(q) => q.send(op.to_bytes()).is_ok(),
            None => false,
        }
    }

    fn subscribe_op(sub: &RemoteSub) -> Op {
        Op::Subscribe {
            sub: sub.id,
            pattern: sub.pattern.clone(),
            options: sub.options.clone(),
        }
    }

    /// Opens a connection, does the handshake and re-subscribes every live subscription.
    fn connect_once(self: &Arc<Self>) -> Result<MessageQueue> {
        let queue = self.queues.connect_blocking(self.addr)?;
        let generation = lock(&self.link).generation + 1;
        let (hello_tx, hello_rx) = flume::bounded(1);
        queue.set_listener(ClientListener {
            client: Arc::downgrade(self),
            generation,
            hello: Some(hello_tx),
            server_error: None,
            drafts: Drafts::default(),
        })?;
        let timeout = self.config.request_timeout;
        let hello = Op::Hello {
            version: VERSION,
            token: self.config.token.clone(),
            client: self.config.name.clone(),
        };
        let fail = |err: Error| {
            queue.close();
            Err(err)
        };
        if let Err(err) = self.send_frame(&queue, hello.to_bytes(), Some(Instant::now() + timeout))
        {
            return fail(err);
        }
        match hello_rx.recv_timeout(timeout) {
            Ok(Ok(())) => {}
            Ok(Err((code, text))) => return fail(Error::Refused { code, text }),
            Err(_) => {
                return fail(Error::Timeout {
                    what: "HELLO",
                    after: timeout,
                });
            }
        }
        let subs: Vec<Arc<RemoteSub>> = lock(&self.subs).values().cloned().collect();
        for sub in subs {
            if let Err(err) = self.request(
                &queue,
                sub.id,
                &Self::subscribe_op(&sub),
                "SUBSCRIBE",
                timeout,
            ) {
                tracing::warn!(sub.id = sub.id, pattern = %sub.pattern, error = %err, "re-subscribe failed");
                if matches!(err, Error::Disconnected { .. } | Error::Timeout { .. }) {
                    return fail(err);
                }
            }
        }
        // What the last connection never wrote goes first, before any publish that waited for
        // this one (they wait until it is installed below). Copies: the held frames stay
        // until the connection is in place, in case this one is lost too.
        let resend: Vec<Bytes> = lock(&self.link).resend.frames.iter().cloned().collect();
        let resent = resend.len();
        for frame in resend {
            if let Err(err) = self.send_frame(&queue, frame, Some(Instant::now() + timeout)) {
                return fail(err);
            }
        }
        let mut link = lock(&self.link);
        if link.closed {
            drop(link);
            return fail(Error::Closed);
        }
        if link.lost_generation == generation {
            drop(link);
            return fail(Error::Disconnected {
                waited: Duration::ZERO,
            });
        }
        if resent > 0 {
            tracing::info!(addr = %self.addr, frames = resent, "unconfirmed publishes from the lost connection sent again");
            link.resend.forget_front(resent);
        }
        link.queue = Some(queue.clone());
        link.generation = generation;
        self.changed.notify_all();
        tracing::debug!(addr = %self.addr, conn.id = queue.id(), "connected to bus server");
        Ok(queue)
    }

    /// Called on the pump when the connection of `generation` closed, with the frames it never
    /// wrote.
    fn lost(self: &Arc<Self>, generation: u64, mut reason: String, unsent: Vec<Bytes>) {
        {
            let mut link = lock(&self.link);
            if generation > link.generation {
                // Still in its handshake: `connect_once` sees this and fails. What it re-sent
                // is still held in `resend`, to go again on the next connection.
                link.lost_generation = generation;
                return;
            }
            if link.closed && link.generation == generation {
                // `close` took the queue and its linger ran out before everything was written.
                let never = unsent
                    .iter()
                    .filter(|f| protocol::is_unconfirmed_publish(f))
                    .count() as u64;
                if never > 0 {
                    tracing::warn!(addr = %self.addr, never, "closed before unconfirmed publishes were written");
                    link.unsent_at_close += never;
                }
                link.close_ended = true;
                self.changed.notify_all();
                return;
            }
            if link.generation != generation || link.queue.is_none() {
                return;
            }
            let kept = link.resend.keep(unsent, RESEND_LIMIT);
            if kept > 0 {
                reason.push_str(&format!(
                    "; {kept} unconfirmed publish(es) never written, held to send on reconnection"
                ));
            }
            let dropped = std::mem::take(&mut link.resend.dropped);
            if dropped > 0 {
                tracing::error!(addr = %self.addr, dropped, "unconfirmed publishes never written and past the resend limit: lost");
                reason.push_str(&format!(
                    "; {dropped} unconfirmed publish(es) never written and lost (over the {RESEND_LIMIT}-byte resend limit)"
                ));
            }
            link.queue = None;
            self.changed.notify_all();
            if link.closed || link.reconnecting {
                return;
            }
            link.reconnecting = true;
        }
        for (_, tx) in lock(&self.pending).drain() {
            let _ = tx.send(Reply::Disconnected);
        }
        tracing::warn!(addr = %self.addr, reason, "connection to bus server lost; reconnecting");
        self.listeners
            .snapshot()
            .each("disconnected", |l| l.disconnected(&reason));
        let client = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("mixbus-reconnect".into())
            .spawn(move || client.reconnect_loop());
        if let Err(err) = spawned {
            tracing::error!(error = %err, "could not start the reconnect thread");
            lock(&self.link).reconnecting = false;
        }
    }

    fn reconnect_loop(self: Arc<Self>) {
        let mut delay = self.config.reconnect_backoff;
        loop {
            {
                // Wait out the back-off; close wakes us.
                let link = lock(&self.link);
                if link.closed {
                    break;
                }
                let (link, _) = self
                    .changed
                    .wait_timeout_while(link, delay, |l| !l.closed)
                    .unwrap_or_else(|p| p.into_inner());
                if link.closed {
                    break;
                }
            }
            match self.connect_once() {
                Ok(_) => {
                    let mut link = lock(&self.link);
                    if link.queue.is_some() || link.closed {
                        link.reconnecting = false;
                        let back = link.queue.is_some();
                        drop(link);
                        if back {
                            self.listeners
                                .snapshot()
                                .each("reconnected", |l| l.reconnected());
                        }
                        return;
                    }
                    // Lost again before we got here: `lost` left the reconnecting to us.
                }
                Err(Error::Closed) => break,
                Err(err) => {
                    tracing::debug!(addr = %self.addr, error = %err, delay_ms = delay.as_millis() as u64, "reconnect failed");
                    delay = (delay * 2).min(self.config.reconnect_backoff_max);
                }
            }
        }
        lock(&self.link).reconnecting = false;
    }

    /// Hands deliveries to their subscription: runs them here for an inline handler, else sends
    /// them to its dispatch thread as one batch (one channel send, at most one wake).
    fn deliver_batch(&self, sub: u64, batch: Vec<Message>) {
        let Some(s) = lock(&self.subs).get(&sub).cloned() else {
            tracing::debug!(
                sub.id = sub,
                deliveries = batch.len(),
                "delivery for an ended subscription"
            );
            return;
        };
        if let Some(handler) = &s.inline {
            if s.active.load(Ordering::Acquire) {
                self.run_batch(&s, handler, batch);
            }
            return;
        }
        let n = batch.len() as u64;
        let tx = lock(&s.tx).clone();
        self.queued.fetch_add(n, Ordering::AcqRel);
        if tx.is_none_or(|tx| tx.send(batch).is_err()) {
            self.queued.fetch_sub(n, Ordering::AcqRel);
        }
    }

    fn reply(&self, request: u64, reply: Reply) {
        if let Some(tx) = lock(&self.pending).remove(&request) {
            let _ = tx.send(reply);
        }
    }

    /// Runs a subscription's handler on each delivery, on the subscription's own thread. Acks
    /// (automatic ones, and manual ones the handlers make on this client) are sent in ACKS
    /// frames at the end of each batch, or sooner once the batch has run for [`ACK_DELAY`].
    fn dispatch_loop(
        self: Arc<Self>,
        sub: Arc<RemoteSub>,
        handler: Handler,
        rx: flume::Receiver<Vec<Message>>,
    ) {
        // Spin a while before blocking, as the connection's pump does: a handler thread whose
        // next batch comes soon (a responder in a request/reply exchange) is not put to sleep
        // and woken between batches. At most one thread per core spins at a time, so that a
        // client with many busy subscriptions does not fill the machine with spinning threads.
        let mut spin = AdaptiveSpin::new(self.config.spin, self.config.spin_max);
        while let Ok(batch) = spin.recv_sharing(&rx, &self.spin_slots) {
            // The batch's messages count as queued until its last handler returns (`close`
            // waits for queued plus running to reach zero).
            let n = batch.len() as u64;
            self.run_batch(&sub, &handler, batch);
            self.queued.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Runs `handler` on each message of one batch, in order, on this thread (the
    /// subscription's own, or the connection's for an inline handler), and sends the batch's
    /// acks together at its end.
    fn run_batch(&self, sub: &Arc<RemoteSub>, handler: &Handler, batch: Vec<Message>) {
        let started = Instant::now();
        let me = self as *const Client as usize;
        DEFERRED.with_borrow_mut(|d| {
            d.client = me;
            d.sub = Some(Arc::clone(sub));
        });
        let notifier = self.listeners.snapshot();
        self.running.fetch_add(1, Ordering::AcqRel);
        if sub.options.ack_mode == AckMode::Manual {
            // Un-acked from now: one lock for the batch. Acks made from its handlers are
            // settled when they are sent (`flush_acks`), also a batch at a time.
            let mut unacked = lock(&sub.unacked);
            unacked.extend(
                batch
                    .iter()
                    .filter_map(|m| m.delivery_id())
                    .map(|d| d.message.0),
            );
        }
        let mut clock = AckClock::new(started);
        for msg in batch {
            if !sub.active.load(Ordering::Acquire) {
                continue;
            }
            let Some(delivery) = msg.delivery_id() else {
                continue;
            };
            self.handle(sub, handler, &notifier, &msg, delivery);
            // Slow handlers must not hold the acks of earlier messages past their ack wait.
            if clock.due() {
                self.flush_acks();
            }
        }
        self.flush_acks();
        self.running.fetch_sub(1, Ordering::AcqRel);
        DEFERRED.with_borrow_mut(|d| {
            d.client = 0;
            d.sub = None;
        });
    }

    /// Runs the handler on one delivery and queues its ack or sends its nack.
    fn handle(
        &self,
        sub: &RemoteSub,
        handler: &Handler,
        notifier: &Notifier,
        msg: &Message,
        delivery: DeliveryId,
    ) {
        let manual = sub.options.ack_mode == AckMode::Manual;
        self.delivered.fetch_add(1, Ordering::Relaxed);
        notifier.each("dispatched", |l| l.dispatched(msg, &sub.info));
        let result = match catch_unwind(AssertUnwindSafe(|| handler.call(msg))) {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("handler panicked".to_owned()),
        };
        match &result {
            Ok(()) => {
                notifier.each("processed", |l| l.processed(msg, &sub.info));
                if !manual && sub.active.load(Ordering::Acquire) {
                    DEFERRED.with_borrow_mut(|d| d.acks.push((sub.id, delivery.message.0)));
                }
            }
            Err(error) => {
                tracing::warn!(
                    sub.id = sub.id,
                    msg.id = delivery.message.0,
                    attempt = msg.attempt(),
                    error,
                    "handler failed"
                );
                notifier.each("failed", |l| l.failed(msg, &sub.info, error));
                if manual {
                    lock(&sub.unacked).remove(&delivery.message.0);
                }
                if sub.active.load(Ordering::Acquire) {
                    self.send_now(&Op::Nack {
                        sub: sub.id,
                        message: delivery.message.0,
                        requeue: true,
                    });
                }
            }
        }
    }

    /// Sends the acks this thread deferred, one ACK or ACKR frame per subscription.
    fn flush_acks(&self) {
        let mut acks = DEFERRED.with_borrow_mut(|d| {
            d.manual = false;
            std::mem::take(&mut d.acks)
        });
        if acks.is_empty() {
            return;
        }
        // Stable: each subscription's acks keep their order. (Mostly they are all of one
        // subscription; the check spares the sort its buffer.)
        if acks.windows(2).any(|w| w[0].0 != w[1].0) {
            acks.sort_by_key(|&(sub, _)| sub);
        }
        for group in acks.chunk_by(|a, b| a.0 == b.0) {
            let sub = group[0].0;
            self.settle_all(sub, group);
            let op = match group {
                [(_, message)] => Op::Ack {
                    sub,
                    message: *message,
                },
                _ => Op::AckRanges {
                    sub,
                    ranges: ack_ranges(group.iter().map(|&(_, m)| m)),
                },
            };
            self.send_now(&op);
        }
        // Keep the buffer's allocation for the next batch.
        acks.clear();
        DEFERRED.with_borrow_mut(|d| {
            if d.acks.is_empty() {
                d.acks = acks;
            }
        });
    }

    /// Sends the acks deferred on this thread ahead of an operation it is about to send (a
    /// publish, an unsubscribe), if this is one of this client's dispatch threads and its
    /// handler acked by hand since the last flush (a thread-local look otherwise). Automatic
    /// acks wait for the end of the batch as before: they follow the handler, and so anything
    /// it sent, whatever the order.
    fn flush_manual_acks(&self) {
        let me = self as *const Client as usize;
        if DEFERRED.with_borrow(|d| d.client == me && d.manual) {
            self.flush_acks();
        }
    }

    /// A manual-ack delivery was acked or nacked: it no longer counts as un-acked.
    fn settled(&self, delivery: DeliveryId) {
        self.settle_all(delivery.subscription.0, &[(0, delivery.message.0)]);
    }

    /// The deliveries of subscription `sub` (`(_, message)` pairs) were acked: none counts as
    /// un-acked any more. The subscription is the one whose batch this thread runs, if it is
    /// (no look-up under the client's lock), else found in the client's map.
    fn settle_all(&self, sub: u64, acks: &[(u64, u64)]) {
        let me = self as *const Client as usize;
        let here = DEFERRED.with_borrow(|d| {
            d.sub
                .as_ref()
                .filter(|s| d.client == me && s.id == sub)
                .cloned()
        });
        let Some(sub) = here.or_else(|| lock(&self.subs).get(&sub).cloned()) else {
            return;
        };
        if sub.options.ack_mode == AckMode::Manual {
            let mut unacked = lock(&sub.unacked);
            for (_, message) in acks {
                unacked.remove(message);
            }
        }
    }

    /// Manual-ack deliveries of live subscriptions not acked or nacked yet.
    fn unacked(&self) -> u64 {
        let subs: Vec<Arc<RemoteSub>> = lock(&self.subs).values().cloned().collect();
        subs.iter().map(|s| lock(&s.unacked).len() as u64).sum()
    }

    /// Defers an ack to the end of the batch when called from one of this client's dispatch
    /// threads (a handler acking by hand); returns false elsewhere.
    fn defer_ack(self: &Arc<Self>, delivery: DeliveryId) -> bool {
        let me = Arc::as_ptr(self) as usize;
        DEFERRED.with_borrow_mut(|d| {
            if d.client != me {
                return false;
            }
            d.acks.push((delivery.subscription.0, delivery.message.0));
            d.manual = true;
            true
        })
    }

    fn end_subscription(&self, id: u64) -> bool {
        let Some(sub) = lock(&self.subs).remove(&id) else {
            return false;
        };
        sub.active.store(false, Ordering::Release);
        lock(&sub.tx).take();
        // A handler that acked by hand and then ends a subscription: its acks go first, or
        // the server would re-queue what it acked.
        self.flush_manual_acks();
        self.send_now(&Op::Unsubscribe { sub: id });
        self.listeners
            .snapshot()
            .each("unsubscribed", |l| l.unsubscribed(&sub.info));
        tracing::debug!(sub.id = id, pattern = %sub.pattern, "unsubscribed");
        true
    }
}

/// Runs of consecutive ids in `ids` (in their order) as ranges of an ACKR: first id and count.
fn ack_ranges(ids: impl IntoIterator<Item = u64>) -> Vec<(u64, u32)> {
    let mut ranges: Vec<(u64, u32)> = Vec::new();
    for id in ids {
        match ranges.last_mut() {
            Some((first, n)) if *n < u32::MAX && first.checked_add(u64::from(*n)) == Some(id) => {
                *n += 1
            }
            _ => ranges.push((id, 1)),
        }
    }
    ranges
}

/// How long a batch of deliveries may hold back the acks of the messages it handled.
const ACK_DELAY: Duration = Duration::from_millis(2);

/// Tells a dispatch loop when a batch has run for [`ACK_DELAY`], reading the clock after every
/// handler while handlers are slow, and less often (up to every 16th) while they are fast: a
/// clock reading costs more than a fast handler. A stretch of fast handlers followed by slow
/// ones holds acks back for at most 16 handler runs past the delay.
struct AckClock {
    started: Instant,
    last: Instant,
    stride: u32,
    left: u32,
}

impl AckClock {
    /// Reads under this apart (per handler run) count as fast.
    const FAST: Duration = Duration::from_micros(5);
    const MAX_STRIDE: u32 = 16;

    fn new(started: Instant) -> Self {
        AckClock {
            started,
            last: started,
            stride: 1,
            left: 1,
        }
    }

    /// Called after each handler: whether the batch has run for [`ACK_DELAY`].
    fn due(&mut self) -> bool {
        self.left -= 1;
        if self.left > 0 {
            return false;
        }
        let now = Instant::now();
        let fast = now.duration_since(self.last) < Self::FAST * self.stride;
        self.stride = if fast {
            (self.stride * 2).min(Self::MAX_STRIDE)
        } else {
            1
        };
        self.left = self.stride;
        self.last = now;
        now.duration_since(self.started) >= ACK_DELAY
    }
}

/// Acks deferred by a dispatch thread during a batch, and the client it runs for (its address,
/// 0 outside a batch).
#[derive(Default)]
struct Deferred {
    client: usize,
    /// The subscription whose batch this thread is running: an ack from its handler finds
    /// the subscription here, with no look-up under the client's lock.
    sub: Option<Arc<RemoteSub>>,
    acks: Vec<(u64, u64)>,
    /// A handler acked by hand since the last flush (a publish from it flushes first).
    manual: bool,
}

/// Most bytes of unconfirmed publishes held to send again after a reconnection (the default
/// outbound high water mark: what one connection can have queued).
const RESEND_LIMIT: usize = 8 << 20;

/// Unconfirmed publishes with a payload under this many bytes are encoded into a scratch
/// buffer and copied into the outbound runs (no allocation); larger ones get a frame of their
/// own, whose payload is written in place.
const COPY_PUBLISH_BELOW: usize = 1024;

thread_local! {
    /// Where this thread encodes small unconfirmed publishes.
    static PUBLISH_SCRATCH: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// A frame to send: one buffer, or the parts of one frame written in place.
enum Outgoing {
    Whole(Bytes),
    Parts(Vec<Bytes>),
}

impl From<Bytes> for Outgoing {
    fn from(frame: Bytes) -> Self {
        Outgoing::Whole(frame)
    }
}

impl Outgoing {
    fn send_on(self, queue: &MessageQueue) -> std::result::Result<(), SendError> {
        match self {
            Outgoing::Whole(frame) => queue.send(frame),
            Outgoing::Parts(parts) => queue.send_parts(parts),
        }
    }

    fn join(self) -> Bytes {
        match self {
            Outgoing::Whole(frame) => frame,
            Outgoing::Parts(parts) => parts.concat().into(),
        }
    }
}

/// The PUBLISH frame of `message`. A payload of [`COPY_PUBLISH_BELOW`] bytes or more is not
/// copied: the frame is its encoded head and the payload itself, written in place.
fn publish_frame(message: &Message, request: u64) -> Outgoing {
    let payload = message.payload();
    let mut buf = BytesMut::new();
    if payload.len() < COPY_PUBLISH_BELOW {
        protocol::put_publish(
            &mut buf,
            request,
            message.topic(),
            message.headers(),
            payload,
        );
        return Outgoing::Whole(buf.freeze());
    }
    protocol::put_publish_head(
        &mut buf,
        request,
        message.topic(),
        message.headers(),
        payload.len(),
    );
    Outgoing::Parts(vec![buf.freeze(), payload.clone()])
}

/// Adds the message a delivery read in `frame` carries to `drafts`.
fn push_delivery(drafts: &mut Drafts, frame: &Bytes, d: DeliveryRef<'_>) {
    let published_ns = d.published_us.saturating_mul(1000);
    let id = MessageId(d.message);
    let payload = (frame, d.payload);
    drafts.push_in(d.topic, payload, d.headers, id, published_ns, d.attempt);
}

/// [`push_delivery`] for a delivery decoded whole.
fn push_owned(drafts: &mut Drafts, d: WireDelivery) {
    let published_ns = d.published_us.saturating_mul(1000);
    let id = MessageId(d.message);
    drafts.push(&d.topic, d.payload, d.headers, id, published_ns, d.attempt);
}

/// Hands the messages of `drafts` to subscription `sub` as one batch.
fn deliver_drafts(client: &Client, sub: u64, drafts: &mut Drafts) {
    if drafts.is_empty() {
        return;
    }
    let mut batch = Vec::new();
    drafts.finish(Some(SubscriptionId(sub)), &mut batch);
    client.deliver_batch(sub, batch);
}

thread_local! {
    static DEFERRED: std::cell::RefCell<Deferred> = std::cell::RefCell::new(Deferred::default());
}

/// The queue listener of the client's connection, on the client's pump.
struct ClientListener {
    client: Weak<Client>,
    generation: u64,
    hello: Option<flume::Sender<std::result::Result<(), (ErrorCode, String)>>>,
    /// The error the server sent before closing, if it did: part of the reason the listeners
    /// hear (`BrokerListener::disconnected`).
    server_error: Option<String>,
    /// The deliveries of the read being decoded (kept for its room).
    drafts: Drafts,
}

impl QueueListener for ClientListener {
    /// The frames of one read: the deliveries of consecutive PACKED (or DELIVERS) frames to one
    /// subscription go to it as one batch, so a read of many frames costs one hand-off (and at
    /// most one wake-up of its dispatch thread) per subscription rather than one per frame.
    fn received_frames(&mut self, queue: &MessageQueue, frames: &Frames) {
        let Some(client) = self.client.upgrade() else {
            return;
        };
        let mut drafts = std::mem::take(&mut self.drafts);
        // The subscription whose deliveries `drafts` holds.
        let mut pending: Option<u64> = None;
        for frame in frames.iter_bytes() {
            // Where this frame's deliveries start, once its first one is read.
            let mut mark = None;
            let decoded = protocol::decode_delivers(&frame, |sub, delivery| {
                if mark.is_none() {
                    if let Some(last) = pending.filter(|&last| last != sub) {
                        deliver_drafts(&client, last, &mut drafts);
                    }
                    pending = Some(sub);
                    mark = Some(drafts.mark());
                }
                push_delivery(&mut drafts, &frame, delivery);
            });
            match decoded {
                Some(Ok(_)) => {}
                other => {
                    if let Some(mark) = mark {
                        drafts.truncate(mark);
                    }
                    if let Some(last) = pending.take() {
                        deliver_drafts(&client, last, &mut drafts);
                    }
                    let malformed = matches!(other, Some(Err(_)));
                    self.received(queue, frame);
                    if malformed {
                        // `received` closed the connection: the rest of the read is not read.
                        self.drafts = drafts;
                        return;
                    }
                }
            }
        }
        if let Some(last) = pending {
            deliver_drafts(&client, last, &mut drafts);
        }
        self.drafts = drafts;
    }

    fn received(&mut self, queue: &MessageQueue, msg: Bytes) {
        let Some(client) = self.client.upgrade() else {
            return;
        };
        // PACKED (DELIVERS from an older server), by far the most frequent: straight into
        // messages.
        let mut drafts = Drafts::default();
        let decoded = protocol::decode_delivers(&msg, |_, d| push_delivery(&mut drafts, &msg, d));
        let op = match decoded {
            Some(Ok(sub)) => {
                deliver_drafts(&client, sub, &mut drafts);
                return;
            }
            Some(Err(err)) => Err(err),
            None => protocol::decode(msg),
        };
        let op = match op {
            Ok(op) => op,
            Err(err) => {
                tracing::warn!(conn.id = queue.id(), error = %err, "malformed frame from the server");
                let _ = queue.send(
                    Op::Error {
                        request: 0,
                        code: ErrorCode::Malformed,
                        text: err.to_string(),
                    }
                    .to_bytes(),
                );
                queue.close();
                return;
            }
        };
        match op {
            Op::Deliver { sub, delivery } => {
                let mut drafts = Drafts::default();
                push_owned(&mut drafts, delivery);
                deliver_drafts(&client, sub, &mut drafts);
            }
            Op::Delivers { sub, messages } | Op::Packed { sub, messages } => {
                let mut drafts = Drafts::default();
                for delivery in messages {
                    push_owned(&mut drafts, delivery);
                }
                deliver_drafts(&client, sub, &mut drafts);
            }
            Op::Confirm { request, message } => client.reply(request, Reply::Confirm(message)),
            Op::Subscribed { sub } => client.reply(sub, Reply::Subscribed),
            Op::Pong { nonce } => client.reply(nonce, Reply::Pong),
            Op::Ping { nonce } => {
                let _ = queue.send(Op::Pong { nonce }.to_bytes());
            }
            Op::StatsReply { request, rows } => client.reply(request, Reply::Stats(rows)),
            Op::Welcome { .. } => {
                if let Some(tx) = self.hello.take() {
                    let _ = tx.send(Ok(()));
                }
            }
            Op::Error {
                request: 0,
                code,
                text,
            } => {
                tracing::warn!(conn.id = queue.id(), %code, text, "server closes the connection");
                self.server_error = Some(format!("{code}: {text}"));
                if let Some(tx) = self.hello.take() {
                    let _ = tx.send(Err((code, text)));
                }
            }
            Op::Error {
                request,
                code,
                text,
            } => client.reply(request, Reply::Refused(code, text)),
            other => {
                tracing::debug!(
                    conn.id = queue.id(),
                    op = other.name(),
                    "unexpected operation ignored"
                )
            }
        }
    }

    fn writable(&mut self, _queue: &MessageQueue) {
        if let Some(client) = self.client.upgrade() {
            let _guard = lock(&client.link);
            client.changed.notify_all();
        }
    }

    fn closed(&mut self, _queue: &MessageQueue, info: CloseInfo) {
        if let Some(tx) = self.hello.take() {
            let _ = tx.send(Err((ErrorCode::Closed, info.reason.to_string())));
        }
        if let Some(client) = self.client.upgrade() {
            let reason = match self.server_error.take() {
                Some(error) => format!("{error} ({})", info.reason),
                None => info.reason.to_string(),
            };
            client.lost(self.generation, reason, info.unsent);
        }
    }
}

/// A [`Broker`] whose bus lives in a [`BusServer`](crate::BusServer), reached over TCP.
///
/// Handlers run on the client, one thread per subscription (`mixbus-dispatch-N`), never on the
/// pump; an auto-ack subscription acks after its handler returns `Ok` and nacks (with requeue)
/// after an `Err` or a panic. Acks are gathered per batch of deliveries (what one frame from the
/// server carried) and sent in one frame after the batch, or after 2 ms of it; an
/// [`ack`](Broker::ack) called from one of this client's handlers joins them (and returns `Ok`
/// at once). If the connection drops, the client reconnects with back-off and
/// re-subscribes every live subscription under the same ids; meanwhile `publish` waits up to
/// [`RemoteConfig::publish_timeout`] for the connection and then fails with
/// [`Error::Disconnected`]. Deliveries not acked before the drop come again from the server.
///
/// Unconfirmed publishes (see [`RemoteConfig::confirm`]) that the lost connection had queued
/// and never written are sent first on the next one, in order, before any later publish (up to
/// 8 MiB of them; the [`BrokerListener::disconnected`] reason says how many, and
/// [`CloseReport::unsent_publishes`] counts those a `close` left unsent). Those already written
/// to the socket but not read by the server are lost with the connection: confirm the
/// publishes that must not be.
///
/// Listeners added here see the client's side: `published`, `dispatched`, `processed`,
/// `failed`, `subscribed`, `unsubscribed`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use mixbus_bus::{Broker, BusServer, Handler, Message, RemoteBroker, RemoteConfig, ServerConfig, SubscribeOptions};
/// let server = BusServer::bind("127.0.0.1:0".parse().unwrap(), ServerConfig::default())?;
/// let client = RemoteBroker::connect(server.local_addr(), RemoteConfig::default())?;
/// let (tx, rx) = std::sync::mpsc::channel();
/// let tx = std::sync::Mutex::new(tx);
/// let _sub = client.subscribe("jobs.*", SubscribeOptions::group("workers"), Handler::new(move |m| {
///     tx.lock().unwrap().send(m.payload().clone())?;
///     Ok(())
/// }))?;
/// client.publish(Message::new("jobs.resize", "image 1"))?;
/// assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "image 1");
/// client.close(Duration::from_secs(1));
/// # Ok::<(), mixbus_bus::Error>(())
/// ```
pub struct RemoteBroker {
    client: Arc<Client>,
    pump: Mutex<Option<EventPump>>,
    report: Mutex<Option<CloseReport>>,
}

impl RemoteBroker {
    /// Connects to a server at `addr` and does the handshake.
    ///
    /// # Errors
    ///
    /// [`Error::Queue`] when the connection cannot be made within
    /// [`RemoteConfig::connect_timeout`], [`Error::Refused`] when the server refuses the
    /// handshake (wrong token, version, connection limit), [`Error::Timeout`] when it does not
    /// answer, [`Error::Pump`] when the client's pump cannot start.
    pub fn connect(addr: SocketAddr, config: RemoteConfig) -> Result<RemoteBroker> {
        let pump = EventPump::with_config(
            PumpConfig::default()
                .with_workers(1)
                .with_spin_range(config.spin, config.spin_max),
        )?;
        let queue_config = QueueConfig::default()
            .with_max_frame_len(config.max_frame_len)
            .with_connect_timeout(config.connect_timeout)
            .with_linger(Duration::from_millis(500));
        let queues = QueueBroker::new(pump.handle(), queue_config);
        let client = Arc::new(Client {
            config,
            addr,
            queues,
            link: Mutex::new(Link::default()),
            changed: Condvar::new(),
            pending: Mutex::new(HashMap::new()),
            subs: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            listeners: Listeners::default(),
            delivered: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            running: AtomicU64::new(0),
            spin_slots: SpinSlots::per_core(),
        });
        if let Err(err) = client.connect_once() {
            lock(&client.link).closed = true;
            pump.shutdown(Duration::from_millis(500));
            return Err(err);
        }
        Ok(RemoteBroker {
            client,
            pump: Mutex::new(Some(pump)),
            report: Mutex::new(None),
        })
    }

    /// The server's address.
    pub fn server_addr(&self) -> SocketAddr {
        self.client.addr
    }

    /// Whether the connection is up now.
    pub fn is_connected(&self) -> bool {
        lock(&self.client.link).queue.is_some()
    }

    /// Waits up to `timeout` for the connection to be up (after a drop, for the reconnection);
    /// returns whether it is.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        self.client.queue(timeout).is_ok()
    }

    /// Sends a PING and waits for the PONG; returns the round-trip time.
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`], [`Error::Timeout`], [`Error::Closed`].
    pub fn ping(&self) -> Result<Duration> {
        let c = &self.client;
        let queue = c.queue(c.config.request_timeout)?;
        let nonce = c.next_id();
        let start = Instant::now();
        c.request(
            &queue,
            nonce,
            &Op::Ping { nonce },
            "PING",
            c.config.request_timeout,
        )?;
        Ok(start.elapsed())
    }

    /// Asks the server for its statistics, as key/value rows.
    ///
    /// # Errors
    ///
    /// [`Error::Disconnected`], [`Error::Timeout`], [`Error::Closed`].
    pub fn server_stats(&self) -> Result<Vec<(String, String)>> {
        let c = &self.client;
        let queue = c.queue(c.config.request_timeout)?;
        let request = c.next_id();
        match c.request(
            &queue,
            request,
            &Op::Stats { request },
            "STATS",
            c.config.request_timeout,
        )? {
            Reply::Stats(rows) => Ok(rows),
            _ => Ok(Vec::new()),
        }
    }
}

impl Broker for RemoteBroker {
    fn publish(&self, message: Message) -> Result<MessageId> {
        let c = &self.client;
        validate_topic_cached(message.shared_topic())?;
        // A handler that acked by hand before it published: its acks go on the wire ahead of
        // the publish, so a reply never overtakes the ack of its request.
        c.flush_manual_acks();
        let timeout = c.config.publish_timeout;
        // The clock is read only for a confirm (the common unconfirmed publish never waits).
        let start = c.config.confirm.then(Instant::now);
        let request = if c.config.confirm { c.next_id() } else { 0 };
        if request == 0 {
            // The common case: connected, with room. One lock, no handle cloned; a small
            // frame's head is encoded into this thread's scratch buffer, and head and payload
            // are copied straight into the connection's outbound runs, with no allocation.
            let sent =
                c.try_send_small_publish(message.topic(), message.headers(), message.payload());
            if !sent && let Err(frame) = c.try_send(publish_frame(&message, 0)) {
                let queue = c.queue(timeout)?;
                c.send_frame(&queue, frame, None)?;
            }
            c.listeners
                .snapshot()
                .each("published", |l| l.published(&message));
            return Ok(MessageId(0));
        }
        let frame = publish_frame(&message, request);
        let queue = c.queue(timeout)?;
        let left = timeout.saturating_sub(start.map_or(Duration::ZERO, |s| s.elapsed()));
        match c.request_frame(&queue, request, frame, "PUBLISH", left)? {
            Reply::Confirm(id) => {
                let notifier = c.listeners.snapshot();
                if !notifier.is_empty() {
                    let published = message
                        .with_id(MessageId(id))
                        .with_published_at(SystemTime::now());
                    notifier.each("published", |l| l.published(&published));
                }
                Ok(MessageId(id))
            }
            _ => Err(Error::Timeout {
                what: "PUBLISH",
                after: timeout,
            }),
        }
    }

    /// A small publish without confirms goes straight into the connection's outbound runs
    /// from `topic` and `payload`, with no message built (one is built for the listeners if
    /// there are any); anything else is [`publish`](Self::publish).
    fn publish_slice(&self, topic: &str, payload: &[u8]) -> Result<MessageId> {
        let c = &self.client;
        if !c.config.confirm {
            validate_topic_str_cached(topic)?;
            c.flush_manual_acks();
            if c.try_send_small_publish(topic, &[], payload) {
                let notifier = c.listeners.snapshot();
                if !notifier.is_empty() {
                    let message = Message::new(topic, Bytes::copy_from_slice(payload));
                    notifier.each("published", |l| l.published(&message));
                }
                return Ok(MessageId(0));
            }
        }
        self.publish(Message::new(topic, Bytes::copy_from_slice(payload)))
    }

    fn subscribe(
        &self,
        pattern: &str,
        options: SubscribeOptions,
        handler: Handler,
    ) -> Result<Subscription> {
        let c = &self.client;
        Pattern::parse(pattern)?;
        options.validate()?;
        let queue = c.queue(c.config.request_timeout)?;
        let id = c.next_id();
        let info = SubscriptionInfo {
            id: SubscriptionId(id),
            pattern: pattern.to_owned(),
            group: options.group_name().map(str::to_owned),
            ack_mode: options.ack_mode,
            queue: options
                .group_name()
                .map_or_else(|| format!("sub.{id}"), str::to_owned),
        };
        let (tx, rx) = if handler.is_inline() {
            (None, None)
        } else {
            let (tx, rx) = flume::unbounded();
            (Some(tx), Some(rx))
        };
        let sub = Arc::new(RemoteSub {
            id,
            pattern: pattern.to_owned(),
            options,
            info,
            tx: Mutex::new(tx),
            inline: handler.is_inline().then(|| handler.clone()),
            active: AtomicBool::new(true),
            unacked: Mutex::new(IdSet::default()),
        });
        if let Some(rx) = rx {
            let name = format!("mixbus-dispatch-{id}");
            let client = Arc::clone(c);
            let sub = Arc::clone(&sub);
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || client.dispatch_loop(sub, handler, rx))
                .map_err(|source| Error::Spawn { name, source })?;
        }
        lock(&c.subs).insert(id, Arc::clone(&sub));
        let op = Client::subscribe_op(&sub);
        if let Err(err) = c.request(&queue, id, &op, "SUBSCRIBE", c.config.request_timeout) {
            lock(&c.subs).remove(&id);
            sub.active.store(false, Ordering::Release);
            lock(&sub.tx).take();
            // The server may have taken it after all: tell it to end it.
            c.send_now(&Op::Unsubscribe { sub: id });
            return Err(err);
        }
        c.listeners
            .snapshot()
            .each("subscribed", |l| l.subscribed(&sub.info));
        tracing::debug!(sub.id = id, pattern, "subscribed");
        let weak = Arc::downgrade(c);
        Ok(Subscription::new(
            SubscriptionId(id),
            pattern,
            sub.info.group.clone(),
            move || {
                if let Some(client) = weak.upgrade() {
                    client.end_subscription(id);
                }
            },
        ))
    }

    fn unsubscribe(&self, id: SubscriptionId) -> bool {
        self.client.end_subscription(id.0)
    }

    fn ack(&self, delivery: DeliveryId) -> Result<()> {
        let c = &self.client;
        // Deferred, it is settled when it is sent, with the rest of its batch's acks.
        if c.defer_ack(delivery) {
            return Ok(());
        }
        c.settled(delivery);
        let op = Op::Ack {
            sub: delivery.subscription.0,
            message: delivery.message.0,
        };
        if c.send_now(&op) {
            Ok(())
        } else {
            Err(Error::Disconnected {
                waited: Duration::ZERO,
            })
        }
    }

    fn nack(&self, delivery: DeliveryId, requeue: bool) -> Result<()> {
        let c = &self.client;
        c.settled(delivery);
        let op = Op::Nack {
            sub: delivery.subscription.0,
            message: delivery.message.0,
            requeue,
        };
        if c.send_now(&op) {
            Ok(())
        } else {
            Err(Error::Disconnected {
                waited: Duration::ZERO,
            })
        }
    }

    fn add_listener(&self, listener: Arc<dyn BrokerListener>) -> ListenerId {
        self.client.listeners.add(listener)
    }

    fn remove_listener(&self, id: ListenerId) -> bool {
        self.client.listeners.remove(id)
    }

    fn close(&self, timeout: Duration) -> CloseReport {
        let mut report = lock(&self.report);
        if let Some(r) = report.as_ref() {
            return r.clone();
        }
        let c = &self.client;
        let start = Instant::now();
        let deadline = start + timeout;
        let (queue, unsent) = {
            let mut link = lock(&c.link);
            link.closed = true;
            c.changed.notify_all();
            let unsent = std::mem::take(&mut link.resend).frames.len();
            (link.queue.take(), unsent)
        };
        if unsent > 0 {
            tracing::warn!(addr = %c.addr, unsent, "closed while disconnected: unconfirmed publishes held for resending were not sent");
        }
        // Let queued deliveries run, within the timeout.
        let mut timed_out = false;
        while c.queued.load(Ordering::Acquire) + c.running.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                timed_out = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let subs: Vec<Arc<RemoteSub>> = lock(&c.subs).drain().map(|(_, s)| s).collect();
        for sub in &subs {
            sub.active.store(false, Ordering::Release);
            lock(&sub.tx).take();
        }
        drop(subs);
        for (_, tx) in lock(&c.pending).drain() {
            let _ = tx.send(Reply::Disconnected);
        }
        if let Some(q) = &queue {
            q.close();
            // Wait for the flush to end (bounded by the queue's linger, and by the caller's
            // timeout), to count what it could not write.
            if !c.on_io_thread() {
                let link = lock(&c.link);
                let wait = deadline.saturating_duration_since(Instant::now());
                drop(c.changed.wait_timeout_while(link, wait, |l| !l.close_ended));
            }
        }
        if let Some(pump) = lock(&self.pump).take() {
            // The pump flushes the close (bounded by the queue's linger).
            pump.shutdown(Duration::from_millis(600));
        }
        let unsent = unsent as u64 + lock(&c.link).unsent_at_close;
        let r = CloseReport {
            delivered: c.delivered.load(Ordering::Relaxed),
            unacked: c.unacked(),
            pending: c.queued.load(Ordering::Acquire),
            running_handlers: c.running.load(Ordering::Acquire),
            unsent_publishes: unsent,
            timed_out,
            elapsed: start.elapsed(),
        };
        tracing::debug!(addr = %c.addr, report = %r, "remote broker closed");
        *report = Some(r.clone());
        r
    }
}

impl Drop for RemoteBroker {
    fn drop(&mut self) {
        self.close(Duration::ZERO);
    }
}

impl fmt::Debug for RemoteBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteBroker")
            .field("server", &self.client.addr)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_ranges_join_runs_of_consecutive_ids_in_their_order() {
        assert_eq!(
            ack_ranges([5, 6, 7, 9, 10, 3, u64::MAX - 1, u64::MAX]),
            [(5, 3), (9, 2), (3, 1), (u64::MAX - 1, 2)]
        );
        assert_eq!(ack_ranges([8, 8, 7]), [(8, 1), (8, 1), (7, 1)]);
        assert!(ack_ranges([]).is_empty());
    }
}
