//! `BrokerListener`: hooks that observe a broker's events, and the data they receive.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::broker::ListenerId;
use crate::message::{DeliveryId, Message, SubscriptionId};
use crate::options::AckMode;

/// What a listener learns about a subscription.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionInfo {
    /// Its id.
    pub id: SubscriptionId,
    /// The topic or pattern.
    pub pattern: String,
    /// The consumer group, if any.
    pub group: Option<String>,
    /// Its ack mode.
    pub ack_mode: AckMode,
    /// The name of the queue it takes messages from: the group name for a group member,
    /// `pattern#id` for a broadcast subscription.
    pub queue: String,
}

/// Why a message reached no handler.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Published on a topic that no subscription matched.
    NoSubscriber,
    /// It was queued for a broadcast subscription that ended first.
    Unsubscribed {
        /// The queue it was taken out of.
        queue: String,
    },
    /// Its dead-letter topic refused it.
    DeadLetterFailed,
    /// It was published while the queue of a broadcast subscription was full, past the limit
    /// its owner set; that subscription is being ended (the bus server cuts slow consumers off
    /// this way: `ServerConfig::max_queued_per_subscription`).
    SlowConsumer {
        /// The queue that was full.
        queue: String,
    },
}

/// Observes a broker's events: statistics, logging, tests.
///
/// Every method has a default that does nothing, so a listener implements only what it needs.
/// Methods are called on the thread where the event happens (a publisher's thread, a dispatch
/// thread, the timer thread), concurrently and often: they must return quickly and must not call
/// back into the broker. A listener that panics is logged and skipped; the broker goes on.
///
/// Where a broker handles a run of messages at once it tells the listeners once per run through
/// the `*_all` methods, whose defaults call the per-message method for each message in order; a
/// listener that only implements the per-message methods sees every event either way.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
/// use mixbus_bus::{BrokerListener, Message};
/// #[derive(Debug, Default)]
/// struct CountPublished(AtomicU64);
/// impl BrokerListener for CountPublished {
///     fn published(&self, _msg: &Message) {
///         self.0.fetch_add(1, Ordering::Relaxed);
///     }
/// }
/// ```
#[allow(unused_variables)]
pub trait BrokerListener: Send + Sync + 'static {
    /// The broker took a message (before it is queued).
    fn published(&self, message: &Message) {}
    /// A message was put in a subscription's or group's queue (first time or re-delivery).
    fn enqueued(&self, message: &Message, queue: &str) {}
    /// A message is about to be handed to a handler.
    fn dispatched(&self, message: &Message, subscription: &SubscriptionInfo) {}
    /// A handler returned `Ok`.
    fn processed(&self, message: &Message, subscription: &SubscriptionInfo) {}
    /// A handler returned an error or panicked.
    fn failed(&self, message: &Message, subscription: &SubscriptionInfo, error: &str) {}
    /// A manual-ack delivery was acknowledged.
    fn acked(&self, message: &Message, subscription: &SubscriptionInfo) {}
    /// A manual-ack delivery was rejected.
    fn nacked(&self, message: &Message, subscription: &SubscriptionInfo, requeue: bool) {}
    /// An ack or nack named a delivery that is not waiting for one (unknown or already acked).
    fn ack_unknown(&self, delivery: DeliveryId) {}
    /// A message will be delivered again; `message` carries the new attempt number.
    fn redelivered(&self, message: &Message, subscription: &SubscriptionInfo, reason: &str) {}
    /// A message used up its attempts (or was nacked without re-queue) and went to `dead_topic`.
    fn dead_lettered(&self, message: &Message, subscription: &SubscriptionInfo, dead_topic: &str) {}
    /// A message reached no handler.
    fn dropped(&self, message: &Message, reason: &DropReason) {}
    /// A subscription started.
    fn subscribed(&self, subscription: &SubscriptionInfo) {}
    /// A subscription ended.
    fn unsubscribed(&self, subscription: &SubscriptionInfo) {}
    /// The connection to the server was lost (told by a remote broker only): `reason` says why,
    /// with the server's error first when it sent one (for example a slow consumer cut off).
    /// The client reconnects with back-off and subscribes again; what is published for its
    /// broadcast subscriptions meanwhile does not reach them (the server counts it as dropped).
    /// The reason ends by counting the unconfirmed publishes the connection never wrote, which
    /// the client sends on the next connection.
    fn disconnected(&self, reason: &str) {}
    /// A remote broker is connected again, its subscriptions restored.
    fn reconnected(&self) {}

    /// A run of messages was published together (the bus server publishes each burst it reads
    /// this way): the same as [`published`](Self::published) for each, in order, which is what
    /// the default does. A listener that counts can take the whole run in one step.
    fn published_all(&self, messages: &[Message]) {
        for message in messages {
            self.published(message);
        }
    }
    /// A run of messages was put in `queue` together: [`enqueued`](Self::enqueued) for each,
    /// in order (the default).
    fn enqueued_all(&self, messages: &[Message], queue: &str) {
        for message in messages {
            self.enqueued(message, queue);
        }
    }
    /// A run of messages is about to be handed to the subscription's handler, one after another
    /// on one thread: [`dispatched`](Self::dispatched) for each, in order (the default). Their
    /// outcomes follow as [`processed_all`](Self::processed_all) for the runs that succeeded and
    /// [`failed`](Self::failed) for each that did not, in order.
    fn dispatched_all(&self, messages: &[Message], subscription: &SubscriptionInfo) {
        for message in messages {
            self.dispatched(message, subscription);
        }
    }
    /// Handlers returned `Ok` for a run of messages: [`processed`](Self::processed) for each,
    /// in order (the default).
    fn processed_all(&self, messages: &[Message], subscription: &SubscriptionInfo) {
        for message in messages {
            self.processed(message, subscription);
        }
    }
    /// A run of manual-ack deliveries was acknowledged together (an ACKS or ACKR frame on the
    /// bus server): [`acked`](Self::acked) for each, in order (the default).
    fn acked_all(&self, messages: &[Message], subscription: &SubscriptionInfo) {
        for message in messages {
            self.acked(message, subscription);
        }
    }
}

type Entry = (ListenerId, Arc<dyn BrokerListener>);

/// The listeners of one broker: a copy-on-write list, so notifying takes no lock for long.
#[derive(Default)]
pub(crate) struct Listeners {
    list: RwLock<Arc<[Entry]>>,
    next_id: AtomicU64,
    version: AtomicU64,
    any: AtomicBool,
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("count", &self.snapshot().len())
            .finish()
    }
}

impl Listeners {
    pub(crate) fn add(&self, listener: Arc<dyn BrokerListener>) -> ListenerId {
        let id = ListenerId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Entry> = list.iter().cloned().collect();
        v.push((id, listener));
        *list = v.into();
        self.any.store(true, Ordering::Release);
        self.version.fetch_add(1, Ordering::Release);
        id
    }

    pub(crate) fn remove(&self, id: ListenerId) -> bool {
        let mut list = self.list.write().unwrap_or_else(|e| e.into_inner());
        let before = list.len();
        let v: Vec<Entry> = list.iter().filter(|(i, _)| *i != id).cloned().collect();
        let removed = v.len() != before;
        self.any.store(!v.is_empty(), Ordering::Release);
        *list = v.into();
        self.version.fetch_add(1, Ordering::Release);
        removed
    }

    /// The listeners now; costs one atomic load when there are none.
    pub(crate) fn snapshot(&self) -> Notifier {
        if !self.any.load(Ordering::Acquire) {
            return Notifier(None);
        }
        Notifier(Some(
            self.list.read().unwrap_or_else(|e| e.into_inner()).clone(),
        ))
    }

    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

/// A snapshot of the listeners, used to send a few events without touching the shared list.
#[derive(Clone, Default)]
pub(crate) struct Notifier(Option<Arc<[Entry]>>);

impl Notifier {
    pub(crate) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|l| l.is_empty())
    }

    pub(crate) fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |l| l.len())
    }

    pub(crate) fn each(&self, event: &'static str, f: impl Fn(&dyn BrokerListener)) {
        let Some(list) = &self.0 else { return };
        for (id, listener) in list.iter() {
            if catch_unwind(AssertUnwindSafe(|| f(listener.as_ref()))).is_err() {
                tracing::warn!(listener = id.0, event, "listener panicked; ignored");
            }
        }
    }
}
