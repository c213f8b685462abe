//! The `Broker` contract shared by every backend, with handlers, subscriptions and the close report.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::listener::BrokerListener;
use crate::message::{DeliveryId, Message, MessageId, SubscriptionId};
use crate::options::SubscribeOptions;

/// The error a handler returns to fail a delivery: any error, or a string (`Err("boom".into())`).
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a handler returns: `Ok` processed the message, `Err` failed it.
pub type HandlerResult = std::result::Result<(), HandlerError>;

/// The code a subscription runs for each message.
///
/// A handler runs on one of the broker's dispatch threads (for a [`RemoteBroker`](crate::RemoteBroker),
/// on the client's thread for that subscription), so it is `Send + Sync + 'static` and must return quickly: hand heavy work to
/// a thread of your own. An `Err` or a panic is a failed delivery; the dispatch thread goes on.
///
/// # Examples
///
/// ```
/// use mixbus_bus::Handler;
/// let h = Handler::new(|msg| {
///     if msg.payload().is_empty() {
///         return Err("empty payload".into());
///     }
///     Ok(())
/// });
/// # let _ = h;
/// ```
#[derive(Clone)]
pub struct Handler {
    call: Arc<dyn Fn(&Message) -> HandlerResult + Send + Sync + 'static>,
    /// Run by the in-memory broker after each run of deliveries to one subscription (the bus
    /// server uses it to send what the run buffered as one frame).
    batch_end: Option<Arc<dyn Fn() + Send + Sync + 'static>>,
    /// Takes a whole run of deliveries at once instead of `call` per message; it cannot fail
    /// (the bus server's forwarder: one lock per run instead of one per message).
    call_all: Option<CallAll>,
    /// Where the in-memory broker runs the subscription's deliveries instead of its dispatch
    /// threads (the bus server: on its pump); returns false when it cannot take the work.
    executor: Option<Executor>,
    /// Run where deliveries arrive (see [`Handler::inline`]).
    inline: bool,
    /// The most messages a broadcast subscription's queue holds while its consumer is stuck,
    /// how long makes it stuck, and what to call then (see [`Handler::with_overflow`]).
    overflow: Option<(usize, std::time::Duration, OverflowHook)>,
}

/// Called when a cut-off queue overflows, with its capacity.
pub(crate) type OverflowHook = Arc<dyn Fn(usize) + Send + Sync + 'static>;

/// Handles a run of deliveries at once (see [`Handler::with_call_all`]).
pub(crate) type CallAll = Arc<dyn Fn(&[Message]) + Send + Sync + 'static>;

/// Runs a subscription's deliveries somewhere else than the in-memory broker's dispatch threads.
pub(crate) type Executor = Arc<dyn Fn(Box<dyn FnOnce() + Send>) -> bool + Send + Sync + 'static>;

impl Handler {
    /// Wraps a function or closure.
    pub fn new<F>(f: F) -> Self
    where
        F: Fn(&Message) -> HandlerResult + Send + Sync + 'static,
    {
        Self {
            call: Arc::new(f),
            batch_end: None,
            call_all: None,
            executor: None,
            inline: false,
            overflow: None,
        }
    }

    /// Bounds the queue of a manual-ack broadcast subscription made with this handler at
    /// `limit` messages while its consumer is stuck: held at its in-flight limit by a delivery
    /// older than `stall`. A publish that finds the queue full then skips it (the message
    /// counts as dropped for it, with
    /// [`DropReason::SlowConsumer`](crate::DropReason::SlowConsumer)) rather than being refused,
    /// and `on_overflow` is called once, on the publishing thread, to end the subscription (the
    /// bus server cuts the consumer off). While the consumer makes progress the queue may pass
    /// the limit: nothing but a pause of the publishers could hold it. Consumer groups keep
    /// their own capacity.
    pub(crate) fn with_overflow<F>(
        mut self,
        limit: usize,
        stall: std::time::Duration,
        on_overflow: F,
    ) -> Self
    where
        F: Fn(usize) + Send + Sync + 'static,
    {
        self.overflow = Some((limit.max(1), stall, Arc::new(on_overflow)));
        self
    }

    /// The limit, stall time and hook of [`with_overflow`](Self::with_overflow).
    pub(crate) fn overflow(&self) -> Option<(usize, std::time::Duration, &OverflowHook)> {
        self.overflow
            .as_ref()
            .map(|(limit, stall, hook)| (*limit, *stall, hook))
    }

    /// Runs this handler on the thread that receives its deliveries, with no hand-off to a
    /// thread of the subscription's own: with a [`RemoteBroker`](crate::RemoteBroker), the
    /// connection's I/O thread. That saves a thread wake-up per batch of deliveries (a request
    /// and its reply each cross one), at a price: while the handler runs, nothing else on that
    /// connection moves, so it must not block. A confirmed publish, a subscribe or anything
    /// else that waits for the server fails at once from there with [`Error::WouldBlock`]
    /// (the answer could only arrive on the thread that is waiting), and so does an
    /// unconfirmed publish when the connection's outbound queue is full. The
    /// [`InMemoryBroker`](crate::InMemoryBroker) runs every handler on a dispatch thread and
    /// ignores this.
    ///
    /// [`Error::WouldBlock`]: crate::Error::WouldBlock
    ///
    /// # Examples
    ///
    /// ```
    /// use mixbus_bus::Handler;
    /// let h = Handler::new(|msg| {
    ///     let _ = msg.payload().len(); // Quick, and never waits.
    ///     Ok(())
    /// })
    /// .inline();
    /// assert!(h.is_inline());
    /// ```
    #[must_use]
    pub fn inline(mut self) -> Self {
        self.inline = true;
        self
    }

    /// Whether [`inline`](Self::inline) was asked for.
    pub fn is_inline(&self) -> bool {
        self.inline
    }

    /// Adds a hook the in-memory broker runs after each run of deliveries (on the same thread,
    /// before another thread may deliver to the subscription).
    pub(crate) fn with_batch_end<F>(mut self, f: F) -> Self
    where
        F: Fn() + Send + Sync + 'static,
    {
        self.batch_end = Some(Arc::new(f));
        self
    }

    /// Makes the in-memory broker run this handler's deliveries through `executor` (which must
    /// run them soon, one run at a time being guaranteed by the broker) rather than on its
    /// dispatch threads. The handler must never block.
    pub(crate) fn with_executor(mut self, executor: Executor) -> Self {
        self.executor = Some(executor);
        self
    }

    /// The executor, if any.
    pub(crate) fn executor(&self) -> Option<&Executor> {
        self.executor.as_ref()
    }

    /// Runs the handler on one message.
    pub fn call(&self, message: &Message) -> HandlerResult {
        (self.call)(message)
    }

    /// Makes the in-memory broker hand each run of deliveries to `f` at once instead of calling
    /// the handler per message; `f` handles every message it is given, successfully.
    pub(crate) fn with_call_all<F>(mut self, f: F) -> Self
    where
        F: Fn(&[Message]) + Send + Sync + 'static,
    {
        self.call_all = Some(Arc::new(f));
        self
    }

    /// The hook of [`with_call_all`](Self::with_call_all), if any.
    pub(crate) fn call_all(&self) -> Option<&CallAll> {
        self.call_all.as_ref()
    }

    /// Runs the batch-end hook, if any.
    pub(crate) fn batch_end(&self) {
        if let Some(f) = &self.batch_end {
            f();
        }
    }
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Handler(..)")
    }
}

/// Names a listener added with [`Broker::add_listener`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub u64);

type Cancel = Box<dyn FnOnce() + Send + Sync + 'static>;

/// A live subscription. Dropping it, or calling [`unsubscribe`](Self::unsubscribe), ends it.
///
/// A handler already running when the subscription ends finishes normally.
pub struct Subscription {
    id: SubscriptionId,
    pattern: String,
    group: Option<String>,
    cancel: Option<Cancel>,
}

impl Subscription {
    /// Builds a subscription handle (for backends): `cancel` runs once, on unsubscribe or drop.
    pub fn new(
        id: SubscriptionId,
        pattern: impl Into<String>,
        group: Option<String>,
        cancel: impl FnOnce() + Send + Sync + 'static,
    ) -> Self {
        Self {
            id,
            pattern: pattern.into(),
            group,
            cancel: Some(Box::new(cancel)),
        }
    }

    /// The subscription's id.
    pub fn id(&self) -> SubscriptionId {
        self.id
    }

    /// The topic or pattern subscribed to.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The consumer group, if any.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// Ends the subscription now.
    pub fn unsubscribe(mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel();
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel();
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("pattern", &self.pattern)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// What [`Broker::close`] did and what it left.
#[non_exhaustive]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloseReport {
    /// Messages handed to handlers over the broker's life (every attempt counts).
    pub delivered: u64,
    /// Deliveries still waiting for an ack when the broker stopped.
    pub unacked: u64,
    /// Messages still queued (or waiting for a back-off) when the broker stopped.
    pub pending: u64,
    /// Handlers still running when the timeout passed (their threads were left behind).
    pub running_handlers: u64,
    /// Unconfirmed publishes never sent (always 0 in memory): those a
    /// [`RemoteBroker`](crate::RemoteBroker) had not written when `close` ended its connection,
    /// and those it held from a lost connection when closed while disconnected.
    pub unsent_publishes: u64,
    /// Whether the timeout passed before the work was done.
    pub timed_out: bool,
    /// How long `close` took.
    pub elapsed: Duration,
}

impl fmt::Display for CloseReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "delivered {}, unacked {}, pending {}, running handlers {}, {} in {:?}",
            self.delivered,
            self.unacked,
            self.pending,
            self.running_handlers,
            if self.timed_out { "timed out" } else { "clean" },
            self.elapsed
        )?;
        if self.unsent_publishes > 0 {
            write!(
                f,
                "; {} unconfirmed publishes never sent",
                self.unsent_publishes
            )?;
        }
        Ok(())
    }
}

/// The message bus contract, one for every backend: [`InMemoryBroker`](crate::InMemoryBroker)
/// (threads in one process), [`RemoteBroker`](crate::RemoteBroker) (a client of a
/// [`BusServer`](crate::BusServer)), and later a Redis backend.
///
/// Everything in it is plain data or a `Send + Sync + 'static` handler, so an implementation may
/// live across a socket: messages are named by [`DeliveryId`]s, not references.
///
/// # Implementing
///
/// Methods are called from any thread, concurrently. Handlers run on the backend's own threads and
/// must return quickly. Listener calls must not be made while holding a lock a listener could need.
pub trait Broker: Send + Sync {
    /// Publishes a message on its topic and returns the id the broker gave it.
    ///
    /// Returns once the broker has taken the message (queued it for every matching subscription);
    /// delivery happens on the broker's threads. A broadcast message with no subscriber is counted
    /// as dropped (listeners see it) and is not an error.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`](crate::Error::Closed) after [`close`](Self::close),
    /// [`Error::QueueFull`](crate::Error::QueueFull) when a consumer group's queue is at its limit
    /// (the message is handed back and no subscriber got it),
    /// [`Error::InvalidTopic`](crate::Error::InvalidTopic) for a bad topic.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixbus_bus::{Broker, InMemoryBroker, Message};
    /// let broker = InMemoryBroker::new()?;
    /// let id = broker.publish(Message::new("orders.created", "42"))?;
    /// assert!(id.0 > 0);
    /// assert!(broker.publish(Message::new("orders..created", "42")).is_err());
    /// # Ok::<(), mixbus_bus::Error>(())
    /// ```
    fn publish(&self, message: Message) -> Result<MessageId>;

    /// Publishes `payload` on `topic`: what `publish(Message::new(topic,
    /// Bytes::copy_from_slice(payload)))` does, which is the default. A backend that copies the
    /// bytes anyway builds no message: a [`RemoteBroker`](crate::RemoteBroker) without confirms
    /// writes a small publish straight into its connection's outbound buffer, with no
    /// allocation. A payload already held as [`Bytes`](bytes::Bytes), a large one above all, is
    /// better published in a message: it is shared, not copied.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    ///
    /// # Examples
    ///
    /// ```
    /// use mixbus_bus::{Broker, InMemoryBroker};
    /// let broker = InMemoryBroker::new()?;
    /// let id = broker.publish_slice("orders.created", b"42")?;
    /// assert!(id.0 > 0);
    /// assert!(broker.publish_slice("orders..created", b"42").is_err());
    /// # Ok::<(), mixbus_bus::Error>(())
    /// ```
    fn publish_slice(&self, topic: &str, payload: &[u8]) -> Result<MessageId> {
        self.publish(Message::new(topic, bytes::Bytes::copy_from_slice(payload)))
    }

    /// Subscribes `handler` to a topic or pattern (`*` matches one token, `>` the rest).
    ///
    /// # Errors
    ///
    /// [`Error::Closed`](crate::Error::Closed), [`Error::InvalidPattern`](crate::Error::InvalidPattern),
    /// [`Error::InvalidOptions`](crate::Error::InvalidOptions).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    /// use mixbus_bus::{Broker, Handler, InMemoryBroker, Message, SubscribeOptions};
    /// let broker = InMemoryBroker::new()?;
    /// let (tx, rx) = mpsc::channel();
    /// let tx = std::sync::Mutex::new(tx);
    /// let _sub = broker.subscribe("orders.*", SubscribeOptions::default(), Handler::new(move |msg| {
    ///     tx.lock().unwrap().send(msg.topic().to_owned())?;
    ///     Ok(())
    /// }))?;
    /// broker.publish(Message::new("orders.created", "42"))?;
    /// assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "orders.created");
    /// # Ok::<(), mixbus_bus::Error>(())
    /// ```
    fn subscribe(
        &self,
        pattern: &str,
        options: SubscribeOptions,
        handler: Handler,
    ) -> Result<Subscription>;

    /// Ends a subscription by id (the same as dropping its [`Subscription`]); returns whether it
    /// existed.
    ///
    /// # Examples
    ///
    /// ```
    /// use mixbus_bus::{Broker, Handler, InMemoryBroker, SubscribeOptions};
    /// let broker = InMemoryBroker::new()?;
    /// let sub = broker.subscribe("a.b", SubscribeOptions::default(), Handler::new(|_| Ok(())))?;
    /// assert!(broker.unsubscribe(sub.id()));
    /// assert!(!broker.unsubscribe(sub.id()));
    /// # Ok::<(), mixbus_bus::Error>(())
    /// ```
    fn unsubscribe(&self, id: SubscriptionId) -> bool;

    /// Acknowledges a delivery made under [`AckMode::Manual`](crate::AckMode::Manual).
    ///
    /// Acking an unknown or already acked delivery is a no-op that listeners see
    /// ([`BrokerListener::ack_unknown`]).
    ///
    /// # Errors
    ///
    /// None from the in-memory broker; a remote backend may fail to reach its server.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, mpsc};
    /// use std::time::Duration;
    /// use mixbus_bus::{Broker, Handler, InMemoryBroker, Message, SubscribeOptions};
    /// let broker = Arc::new(InMemoryBroker::new()?);
    /// let (tx, rx) = mpsc::channel();
    /// let tx = std::sync::Mutex::new(tx);
    /// let opts = SubscribeOptions::group("workers").manual_ack();
    /// let _sub = broker.subscribe("jobs", opts, Handler::new(move |msg| {
    ///     tx.lock().unwrap().send(msg.delivery_id().unwrap())?;
    ///     Ok(())
    /// }))?;
    /// broker.publish(Message::new("jobs", "resize image"))?;
    /// let delivery = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    /// broker.ack(delivery)?; // done: never delivered again
    /// broker.ack(delivery)?; // a second ack is a no-op
    /// # Ok::<(), mixbus_bus::Error>(())
    /// ```
    fn ack(&self, delivery: DeliveryId) -> Result<()>;

    /// Rejects a delivery: with `requeue` it is delivered again after the back-off (or
    /// dead-lettered once its attempts are used up); without, it goes to the dead-letter topic.
    ///
    /// # Errors
    ///
    /// None from the in-memory broker; a remote backend may fail to reach its server.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::mpsc;
    /// use std::time::Duration;
    /// use mixbus_bus::{Backoff, Broker, Handler, InMemoryBroker, Message, SubscribeOptions};
    /// let broker = InMemoryBroker::new()?;
    /// let (tx, rx) = mpsc::channel();
    /// let tx = std::sync::Mutex::new(tx);
    /// let opts = SubscribeOptions::default().manual_ack().with_backoff(Backoff::none());
    /// let _sub = broker.subscribe("jobs", opts, Handler::new(move |msg| {
    ///     tx.lock().unwrap().send((msg.delivery_id().unwrap(), msg.attempt()))?;
    ///     Ok(())
    /// }))?;
    /// broker.publish(Message::new("jobs", "x"))?;
    /// let (delivery, attempt) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    /// assert_eq!(attempt, 1);
    /// broker.nack(delivery, true)?;
    /// let (delivery, attempt) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    /// assert_eq!(attempt, 2);
    /// broker.ack(delivery)?;
    /// # Ok::<(), mixbus_bus::Error>(())
    /// ```
    fn nack(&self, delivery: DeliveryId, requeue: bool) -> Result<()>;

    /// Adds a listener that observes the broker's events; see [`BrokerListener`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use mixbus_bus::{Broker, InMemoryBroker, Message, StatsCollector};
    /// let broker = InMemoryBroker::new()?;
    /// let stats = Arc::new(StatsCollector::new());
    /// broker.add_listener(stats.clone());
    /// broker.publish(Message::new("nobody.listens", "x"))?;
    /// assert_eq!(stats.snapshot().total.dropped, 1);
    /// # Ok::<(), mixbus_bus::Error>(())
    /// ```
    fn add_listener(&self, listener: Arc<dyn BrokerListener>) -> ListenerId;

    /// Removes a listener; returns whether it was there.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::Arc;
    /// use mixbus_bus::{Broker, InMemoryBroker, StatsCollector};
    /// let broker = InMemoryBroker::new()?;
    /// let id = broker.add_listener(Arc::new(StatsCollector::new()));
    /// assert!(broker.remove_listener(id));
    /// assert!(!broker.remove_listener(id));
    /// # Ok::<(), mixbus_bus::Error>(())
    /// ```
    fn remove_listener(&self, id: ListenerId) -> bool;

    /// Closes the broker: publish and subscribe fail with
    /// [`Error::Closed`](crate::Error::Closed) from now on; queued messages are still delivered
    /// and running handlers finish, until everything is done or `timeout` passes. Never hangs:
    /// a handler that does not return is left behind and counted. Calling it again returns the
    /// first report.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use mixbus_bus::{Broker, Handler, InMemoryBroker, Message, SubscribeOptions};
    /// let broker = InMemoryBroker::new()?;
    /// let _sub = broker.subscribe("a", SubscribeOptions::default(), Handler::new(|_| Ok(())))?;
    /// broker.publish(Message::new("a", "x"))?;
    /// let report = broker.close(Duration::from_secs(5));
    /// assert_eq!(report.delivered, 1);
    /// assert!(!report.timed_out);
    /// assert!(broker.publish(Message::new("a", "y")).is_err());
    /// # Ok::<(), mixbus_bus::Error>(())
    /// ```
    fn close(&self, timeout: Duration) -> CloseReport;
}
