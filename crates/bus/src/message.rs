//! Messages and the ids that name them: `Message`, `MessageId`, `SubscriptionId`, `DeliveryId`.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;

/// A message id, unique per broker. Plain data: it can travel over a wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId(pub u64);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m{}", self.0)
    }
}

/// A subscription id, unique per broker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriptionId(pub u64);

impl fmt::Display for SubscriptionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// Names one delivery of a message to one subscription: what [`ack`](crate::Broker::ack) and
/// [`nack`](crate::Broker::nack) take.
///
/// A broadcast message reaches several subscriptions under one [`MessageId`]; the pair tells them
/// apart. It is plain data (two integers), so a remote client can send it back to a server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeliveryId {
    /// The subscription the message was delivered to.
    pub subscription: SubscriptionId,
    /// The message delivered.
    pub message: MessageId,
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.subscription, self.message)
    }
}

#[derive(Clone, Debug)]
struct Inner {
    /// Shared: a server decoding a burst of publishes on one topic allocates it once.
    topic: Arc<str>,
    payload: Bytes,
    headers: Vec<(String, String)>,
    id: MessageId,
    published_at: SystemTime,
}

/// The records of messages made together, in one allocation: a server decoding a read's burst
/// of publishes, or a client a frame of deliveries, allocates once for all of them rather than
/// once per message, and the thread that drops the last of them frees them at once. A message
/// made alone has its record inline (one allocation, as before blocks).
enum Block {
    One(Inner),
    Many(Vec<Inner>),
}

impl Block {
    #[inline]
    fn get(&self, i: usize) -> &Inner {
        match self {
            Block::One(inner) => inner,
            Block::Many(records) => &records[i],
        }
    }
}

/// Set in [`Message::slot`] once the message is delivered to a subscription.
const DELIVERED: u32 = 1 << 31;

/// Records per [`Block`] at most: an index fits beside the delivered flag.
const BLOCK_MAX: usize = 1 << 16;

/// The fields of a message made in a block with others ([`Message::from_drafts`]).
pub(crate) struct Draft {
    pub(crate) topic: Arc<str>,
    pub(crate) payload: Bytes,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) id: MessageId,
    pub(crate) published_at: SystemTime,
    pub(crate) attempt: u32,
    /// The subscription it is delivered to, if it is a delivery.
    pub(crate) delivered_to: Option<SubscriptionId>,
}

/// A message: topic, payload, headers, id, delivery attempt and publish time.
///
/// Cloning is cheap (a reference count): fan-out to many subscribers shares one payload and one
/// set of headers. The broker fills in the id and publish time when it takes the message, and the
/// attempt and [`DeliveryId`] when it hands a copy to a handler.
///
/// Messages that arrive together over a network connection share one allocation, freed when
/// the last of them is dropped (their payloads already share the buffer they were read into):
/// a message kept long after its neighbours keeps their records too. Changing a shared message
/// (`with_header`, `with_topic`, ...) gives it a record of its own first.
///
/// # Examples
///
/// ```
/// use mixbus_bus::Message;
/// let msg = Message::new("orders.created", "order 42").with_header("source", "shop");
/// assert_eq!(msg.topic(), "orders.created");
/// assert_eq!(&msg.payload()[..], b"order 42");
/// assert_eq!(msg.header("source"), Some("shop"));
/// ```
#[derive(Clone)]
pub struct Message {
    block: Arc<Block>,
    /// The subscription it was delivered to, if delivered: with the id, its [`DeliveryId`].
    /// Kept apart from the id, a message is 24 bytes instead of 40, and a broker moves every
    /// message through several queues (measured: 6 to 9% less CPU per small message).
    subscription: SubscriptionId,
    attempt: u32,
    /// Its record's index in `block`, and [`DELIVERED`].
    slot: u32,
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner();
        f.debug_struct("Message")
            .field("topic", &inner.topic)
            .field("payload", &inner.payload)
            .field("headers", &inner.headers)
            .field("id", &inner.id)
            .field("published_at", &inner.published_at)
            .field("attempt", &self.attempt)
            .field("delivery", &self.delivery_id())
            .finish()
    }
}

impl Message {
    /// A message on `topic` carrying `payload` (anything that converts into [`Bytes`]:
    /// `&'static str`, `&'static [u8]`, `String`, `Vec<u8>`, `Bytes`).
    pub fn new(topic: impl Into<Arc<str>>, payload: impl Into<Bytes>) -> Self {
        Self::alone(Inner {
            topic: topic.into(),
            payload: payload.into(),
            headers: Vec::new(),
            id: MessageId(0),
            published_at: SystemTime::UNIX_EPOCH,
        })
    }

    #[inline]
    fn alone(inner: Inner) -> Self {
        Self {
            block: Arc::new(Block::One(inner)),
            subscription: SubscriptionId(0),
            attempt: 1,
            slot: 0,
        }
    }

    /// Messages made from `drafts`, in order, into `out`: one allocation for up to
    /// [`BLOCK_MAX`] of them.
    pub(crate) fn from_drafts(
        drafts: impl ExactSizeIterator<Item = Draft>,
        out: &mut Vec<Message>,
    ) {
        let mut drafts = drafts.peekable();
        out.reserve(drafts.len());
        while drafts.peek().is_some() {
            let n = drafts.len().min(BLOCK_MAX);
            let mut records = Vec::with_capacity(n);
            let mut heads = Vec::with_capacity(n);
            for d in drafts.by_ref().take(n) {
                records.push(Inner {
                    topic: d.topic,
                    payload: d.payload,
                    headers: d.headers,
                    id: d.id,
                    published_at: d.published_at,
                });
                heads.push((d.delivered_to, d.attempt));
            }
            let block = Arc::new(Block::Many(records));
            out.extend(
                heads
                    .into_iter()
                    .zip(0u32..)
                    .map(|((to, attempt), i)| Message {
                        block: block.clone(),
                        subscription: to.unwrap_or_default(),
                        attempt,
                        slot: if to.is_some() { i | DELIVERED } else { i },
                    }),
            );
        }
    }

    #[inline]
    fn inner(&self) -> &Inner {
        self.block.get((self.slot & !DELIVERED) as usize)
    }

    /// Names the delivery in place: this message, to `subscription`.
    #[inline]
    pub(crate) fn set_delivered_to(&mut self, subscription: SubscriptionId) {
        self.subscription = subscription;
        self.slot |= DELIVERED;
    }

    /// Sets the id and publish time in one step, and the attempt to the first (what a broker
    /// does when it takes a message).
    pub(crate) fn stamped(mut self, id: MessageId, at: SystemTime) -> Self {
        let inner = self.inner_mut();
        inner.id = id;
        inner.published_at = at;
        self.attempt = 1;
        self
    }

    /// Its record, made its own first if it shares it (or its block) with another message.
    fn inner_mut(&mut self) -> &mut Inner {
        let own = matches!(Arc::get_mut(&mut self.block), Some(Block::One(_)));
        if !own {
            *self = Message {
                block: Arc::new(Block::One(self.inner().clone())),
                slot: self.slot & DELIVERED,
                ..*self
            };
        }
        match Arc::get_mut(&mut self.block) {
            Some(Block::One(inner)) => inner,
            _ => unreachable!("a record of its own"),
        }
    }

    /// Adds a header (a later header with the same name hides an earlier one in [`header`](Self::header)).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.inner_mut().headers.push((name.into(), value.into()));
        self
    }

    /// Adds several headers.
    pub fn with_headers<K, V>(mut self, headers: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        let inner = self.inner_mut();
        inner
            .headers
            .extend(headers.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Replaces the topic (used by backends, for example to dead-letter a message).
    pub fn with_topic(mut self, topic: impl Into<Arc<str>>) -> Self {
        self.inner_mut().topic = topic.into();
        self
    }

    /// Sets the id (for backends: the broker assigns ids when it takes a message).
    pub fn with_id(mut self, id: MessageId) -> Self {
        self.inner_mut().id = id;
        self
    }

    /// Sets the publish time (for backends).
    pub fn with_published_at(mut self, at: SystemTime) -> Self {
        self.inner_mut().published_at = at;
        self
    }

    /// Sets the delivery attempt, starting at 1 (for backends).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Sets the delivery id (for backends, when handing the message to a handler). A delivery
    /// names this message: if `delivery.message` is not its id, the message takes that id (as
    /// [`with_id`](Self::with_id) does).
    pub fn with_delivery(mut self, delivery: DeliveryId) -> Self {
        if delivery.message != self.id() {
            self = self.with_id(delivery.message);
        }
        self.set_delivered_to(delivery.subscription);
        self
    }

    /// The topic it was published on.
    #[inline]
    pub fn topic(&self) -> &str {
        &self.inner().topic
    }

    /// The topic as the shared string it is kept in.
    #[inline]
    pub(crate) fn shared_topic(&self) -> &Arc<str> {
        &self.inner().topic
    }

    /// The payload, shared without copying between every copy of the message.
    #[inline]
    pub fn payload(&self) -> &Bytes {
        &self.inner().payload
    }

    /// All headers, in the order they were added.
    #[inline]
    pub fn headers(&self) -> &[(String, String)] {
        &self.inner().headers
    }

    /// The value of the last header called `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.inner()
            .headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The id the broker gave it (`MessageId(0)` before it is published).
    #[inline]
    pub fn id(&self) -> MessageId {
        self.inner().id
    }

    /// The delivery attempt: 1 on first delivery, raised by one for each re-delivery.
    #[inline]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the broker took it (`UNIX_EPOCH` before it is published).
    #[inline]
    pub fn published_at(&self) -> SystemTime {
        self.inner().published_at
    }

    /// The id to pass to [`ack`](crate::Broker::ack) or [`nack`](crate::Broker::nack); `None`
    /// until a broker delivers the message to a subscription.
    #[inline]
    pub fn delivery_id(&self) -> Option<DeliveryId> {
        (self.slot & DELIVERED != 0).then(|| DeliveryId {
            subscription: self.subscription,
            message: self.inner().id,
        })
    }

    /// Whether two messages share one payload buffer (no copy was made between them).
    pub fn shares_payload_with(&self, other: &Message) -> bool {
        let (a, b) = (self.payload(), other.payload());
        a.as_ptr() == b.as_ptr() && a.len() == b.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_three_words() {
        // A broker moves every message through several queues: its size is per-message work.
        assert!(
            std::mem::size_of::<Message>() <= 24,
            "{} bytes",
            std::mem::size_of::<Message>()
        );
    }

    #[test]
    fn the_delivery_id_names_the_message_and_its_subscription() {
        let msg = Message::new("t", "x").with_id(MessageId(7));
        assert_eq!(msg.delivery_id(), None);
        let delivery = DeliveryId {
            subscription: SubscriptionId(0),
            message: MessageId(7),
        };
        let delivered = msg.clone().with_delivery(delivery);
        assert_eq!(delivered.delivery_id(), Some(delivery));
        assert_eq!(msg.delivery_id(), None, "a copy is named on its own");
        // A delivery of another id makes the message that one.
        let other = DeliveryId {
            subscription: SubscriptionId(u64::MAX),
            message: MessageId(9),
        };
        let renamed = msg.clone().with_delivery(other);
        assert_eq!(renamed.delivery_id(), Some(other));
        assert_eq!(renamed.id(), MessageId(9));
        assert_eq!(msg.id(), MessageId(7), "the original keeps its id");
    }

    fn draft(i: u64, to: Option<u64>) -> Draft {
        Draft {
            topic: Arc::from("t"),
            payload: Bytes::from(format!("p{i}")),
            headers: Vec::new(),
            id: MessageId(i),
            published_at: SystemTime::UNIX_EPOCH,
            attempt: 1 + i as u32 % 3,
            delivered_to: to.map(SubscriptionId),
        }
    }

    #[test]
    fn messages_made_together_keep_their_own_fields() {
        let mut out = vec![Message::new("before", "x")];
        let drafts = (0..5u32)
            .map(u64::from)
            .map(|i| draft(i, i.is_multiple_of(2).then_some(u64::MAX - i)));
        Message::from_drafts(drafts, &mut out);
        assert_eq!(out.len(), 6);
        assert_eq!(out[0].topic(), "before");
        for (i, msg) in out[1..].iter().enumerate() {
            let i = i as u64;
            assert_eq!(msg.id(), MessageId(i));
            assert_eq!(&msg.payload()[..], format!("p{i}").as_bytes());
            assert_eq!(msg.attempt(), 1 + i as u32 % 3);
            let delivery = i.is_multiple_of(2).then_some(DeliveryId {
                subscription: SubscriptionId(u64::MAX - i),
                message: MessageId(i),
            });
            assert_eq!(msg.delivery_id(), delivery);
        }
    }

    #[test]
    fn changing_a_message_made_with_others_leaves_them_alone() {
        let mut out = Vec::new();
        Message::from_drafts((0..3u32).map(|i| draft(u64::from(i), Some(7))), &mut out);
        let changed = out[1].clone().with_header("k", "v").with_topic("other");
        assert_eq!(changed.topic(), "other");
        assert_eq!(changed.header("k"), Some("v"));
        assert_eq!(changed.id(), MessageId(1));
        assert_eq!(
            changed.delivery_id().map(|d| d.subscription),
            Some(SubscriptionId(7)),
            "its delivery stays named"
        );
        for (i, msg) in out.iter().enumerate() {
            assert_eq!(msg.topic(), "t");
            assert!(msg.headers().is_empty());
            assert_eq!(msg.id(), MessageId(i as u64));
        }
        assert!(
            changed.shares_payload_with(&out[1]),
            "a new record, the same payload"
        );
        // The last of a block, alone now, is changed where it is.
        let last = out.pop().expect("three");
        drop(out);
        assert_eq!(last.with_id(MessageId(9)).id(), MessageId(9));
    }

    #[test]
    fn more_messages_than_a_block_holds_are_made_in_several() {
        let n = BLOCK_MAX as u32 + 3;
        let mut out = Vec::new();
        Message::from_drafts((0..n).map(u64::from).map(|i| draft(i, Some(i))), &mut out);
        assert_eq!(out.len(), n as usize);
        for (i, msg) in out.iter().enumerate().skip(BLOCK_MAX - 2) {
            let i = i as u64;
            assert_eq!(msg.id(), MessageId(i));
            assert_eq!(
                msg.delivery_id().map(|d| d.subscription),
                Some(SubscriptionId(i))
            );
        }
        assert!(!Arc::ptr_eq(&out[0].block, &out[BLOCK_MAX].block));
        assert!(Arc::ptr_eq(
            &out[BLOCK_MAX].block,
            &out[BLOCK_MAX + 2].block
        ));
    }
}
