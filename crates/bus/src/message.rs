//! Messages and the ids that name them: `Message`, `MessageId`, `SubscriptionId`, `DeliveryId`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};

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

/// What each message of a block keeps of its own: 56 bytes. Its topic and headers are kept
/// once per block (a burst on one topic has one), found by index.
#[derive(Clone, Debug)]
struct Record {
    payload: Bytes,
    id: MessageId,
    /// Nanoseconds since the Unix epoch.
    published_ns: u64,
    /// Index into the block's topics.
    topic: u32,
    /// Index into the block's header sets, plus one; 0 for none.
    headers: u32,
}

/// The records of messages made together, in one allocation: a server decoding a read's burst
/// of publishes, or a client a frame of deliveries, allocates once for all of them rather than
/// once per message, and the thread that drops the last of them frees them at once. A message
/// made alone has its fields inline (one allocation, as before blocks).
enum Block {
    One {
        topic: Arc<str>,
        headers: Vec<(String, String)>,
        record: Record,
    },
    Many {
        topics: Vec<Arc<str>>,
        headers: Vec<Vec<(String, String)>>,
        records: Vec<Record>,
    },
}

impl Block {
    #[inline]
    fn record(&self, i: usize) -> &Record {
        match self {
            Block::One { record, .. } => record,
            Block::Many { records, .. } => &records[i],
        }
    }

    #[inline]
    fn topic(&self, i: usize) -> &Arc<str> {
        match self {
            Block::One { topic, .. } => topic,
            // A block of one topic (the usual burst) does not read the record.
            Block::Many { topics, .. } if topics.len() == 1 => &topics[0],
            Block::Many {
                topics, records, ..
            } => &topics[records[i].topic as usize],
        }
    }

    #[inline]
    fn headers(&self, i: usize) -> &[(String, String)] {
        match self {
            Block::One { headers, .. } => headers,
            Block::Many {
                headers, records, ..
            } => match records[i].headers {
                0 => &[],
                h => &headers[h as usize - 1],
            },
        }
    }
}

/// Set in [`Message::slot`] once the message is delivered to a subscription.
const DELIVERED: u32 = 1 << 31;

/// Records per [`Block`] at most: an index fits beside the delivered flag.
const BLOCK_MAX: usize = 1 << 16;

/// `at` in nanoseconds since the Unix epoch; times before it count as the epoch, and times past
/// the year 2554 as then.
pub(crate) fn nanos_since_epoch(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Messages being made together, added one at a time as they are decoded, then shared out in
/// blocks ([`finish`](Self::finish)): what a server fills with a read's publishes, or a client
/// with a read's deliveries, with no vector of drafts in between.
#[derive(Default)]
pub(crate) struct Drafts {
    topics: Vec<Arc<str>>,
    headers: Vec<Vec<(String, String)>>,
    records: Vec<Record>,
    attempts: Vec<u32>,
    /// Small payloads copied for this block ([`push_in`](Self::push_in)), and where each goes:
    /// record, offset, length.
    small: BytesMut,
    copied: Vec<(u32, u32, u32)>,
    /// How many the last block held, and its small payloads' bytes: room for as many is made
    /// for the next (and given back by a block that holds far fewer).
    hint: (usize, usize),
}

/// Payloads under this many bytes that arrive in a larger buffer are copied into a buffer of
/// their block's own rather than shared with it: a reference to the read buffer, taken by the
/// thread that reads and let go by the thread that acks (or handles), kept the two contending
/// for its count, message by message. It also frees the read buffer sooner.
pub(crate) const COPY_PAYLOAD_BELOW: usize = 64;

/// Where [`Drafts`] stood, to go back to ([`Drafts::truncate`]).
#[derive(Clone, Copy)]
pub(crate) struct Mark {
    topics: usize,
    headers: usize,
    records: usize,
    small: usize,
    copied: usize,
}

impl Drafts {
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Adds a message; `published_ns` in nanoseconds since the Unix epoch
    /// ([`nanos_since_epoch`]).
    #[inline]
    pub(crate) fn push(
        &mut self,
        topic: &Arc<str>,
        payload: Bytes,
        headers: Vec<(String, String)>,
        id: MessageId,
        published_ns: u64,
        attempt: u32,
    ) {
        if self.records.capacity() == 0 {
            self.records.reserve(self.hint.0.max(16));
        }
        let same = self
            .topics
            .last()
            .is_some_and(|t| Arc::ptr_eq(t, topic) || **t == **topic);
        if !same {
            self.topics.push(topic.clone());
        }
        let header_set = if headers.is_empty() {
            0
        } else {
            self.headers.push(headers);
            self.headers.len() as u32
        };
        self.records.push(Record {
            payload,
            id,
            published_ns,
            topic: self.topics.len() as u32 - 1,
            headers: header_set,
        });
        self.attempts.push(attempt);
    }

    /// [`push`](Self::push) of a payload given as the buffer it lies in and its bytes there:
    /// copied if it is under [`COPY_PAYLOAD_BELOW`] bytes, else shared with the buffer (no copy).
    #[inline]
    pub(crate) fn push_in(
        &mut self,
        topic: &Arc<str>,
        (owner, payload): (&Bytes, &[u8]),
        headers: Vec<(String, String)>,
        id: MessageId,
        published_ns: u64,
        attempt: u32,
    ) {
        let small = payload.len() < COPY_PAYLOAD_BELOW
            && u32::try_from(self.small.len() + payload.len()).is_ok()
            && u32::try_from(self.records.len()).is_ok();
        if !small {
            let payload = owner.slice_ref(payload);
            return self.push(topic, payload, headers, id, published_ns, attempt);
        }
        if self.small.capacity() == 0 {
            self.small.reserve(self.hint.1.max(256));
        }
        // Checked above: the record's index, the offset and the length fit.
        let at = (self.records.len() as u32, self.small.len() as u32);
        self.copied.push((at.0, at.1, payload.len() as u32));
        self.small.extend_from_slice(payload);
        self.push(topic, Bytes::new(), headers, id, published_ns, attempt);
    }

    pub(crate) fn mark(&self) -> Mark {
        Mark {
            topics: self.topics.len(),
            headers: self.headers.len(),
            records: self.records.len(),
            small: self.small.len(),
            copied: self.copied.len(),
        }
    }

    /// Drops what was added since `mark` (a frame that turned out malformed).
    pub(crate) fn truncate(&mut self, mark: Mark) {
        self.topics.truncate(mark.topics);
        self.headers.truncate(mark.headers);
        self.records.truncate(mark.records);
        self.attempts.truncate(mark.records);
        self.small.truncate(mark.small);
        self.copied.truncate(mark.copied);
    }

    /// Gives the messages, in order, the ids from `first` up and the publish time
    /// `published_ns`.
    pub(crate) fn stamp(&mut self, first: MessageId, published_ns: u64) {
        for (record, id) in self.records.iter_mut().zip(first.0..) {
            record.id = MessageId(id);
            record.published_ns = published_ns;
        }
    }

    /// Makes the messages added so far, in order, into `out`, as deliveries to `to` if it is
    /// given: one allocation for up to [`BLOCK_MAX`] of them. Leaves this empty.
    pub(crate) fn finish(&mut self, to: Option<SubscriptionId>, out: &mut Vec<Message>) {
        let n = self.records.len();
        if n == 0 {
            return;
        }
        self.hint = (n, self.small.len());
        if !self.copied.is_empty() {
            // A buffer of this block's own: the next block's copies go to another. Room made
            // for a larger block before is not kept with it.
            let small = std::mem::take(&mut self.small);
            let small = if small.capacity() > 2 * small.len() + 1024 {
                Bytes::copy_from_slice(&small)
            } else {
                small.freeze()
            };
            for (i, at, len) in self.copied.drain(..) {
                let (at, len) = (at as usize, len as usize);
                if let Some(record) = self.records.get_mut(i as usize) {
                    record.payload = small.slice(at..at + len);
                }
            }
        }
        out.reserve(n);
        let flag = if to.is_some() { DELIVERED } else { 0 };
        let mut attempts = self.attempts.drain(..);
        let mut records = std::mem::take(&mut self.records);
        if records.capacity() > 2 * n + 16 {
            // Room made for a larger block before (the hint): not held by a smaller one.
            records.shrink_to_fit();
        }
        let (topics, headers) = (
            std::mem::take(&mut self.topics),
            std::mem::take(&mut self.headers),
        );
        // More than a block holds (never from one read): each block gets the whole lists of
        // topics and headers, so that the indexes hold.
        let mut chunks = Vec::new();
        while records.len() > BLOCK_MAX {
            chunks.push(records.split_off(records.len() - BLOCK_MAX));
        }
        chunks.push(records);
        chunks.reverse();
        let last = chunks.len() - 1;
        let mut lists = Some((topics, headers));
        for (k, records) in chunks.into_iter().enumerate() {
            let count = records.len();
            let (topics, headers) = if k == last {
                lists.take()
            } else {
                lists.clone()
            }
            .unwrap_or_default();
            let block = Arc::new(Block::Many {
                topics,
                headers,
                records,
            });
            out.extend(
                attempts
                    .by_ref()
                    .take(count)
                    .zip(0u32..)
                    .map(|(attempt, i)| Message {
                        block: block.clone(),
                        subscription: to.unwrap_or_default(),
                        attempt,
                        slot: i | flag,
                    }),
            );
        }
    }
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
        f.debug_struct("Message")
            .field("topic", &self.topic())
            .field("payload", self.payload())
            .field("headers", &self.headers())
            .field("id", &self.id())
            .field("published_at", &self.published_at())
            .field("attempt", &self.attempt)
            .field("delivery", &self.delivery_id())
            .finish()
    }
}

impl Message {
    /// A message on `topic` carrying `payload` (anything that converts into [`Bytes`]:
    /// `&'static str`, `&'static [u8]`, `String`, `Vec<u8>`, `Bytes`).
    pub fn new(topic: impl Into<Arc<str>>, payload: impl Into<Bytes>) -> Self {
        Self {
            block: Arc::new(Block::One {
                topic: topic.into(),
                headers: Vec::new(),
                record: Record {
                    payload: payload.into(),
                    id: MessageId(0),
                    published_ns: 0,
                    topic: 0,
                    headers: 0,
                },
            }),
            subscription: SubscriptionId(0),
            attempt: 1,
            slot: 0,
        }
    }

    /// Its record's index in its block.
    #[inline]
    fn index(&self) -> usize {
        (self.slot & !DELIVERED) as usize
    }

    #[inline]
    fn record(&self) -> &Record {
        self.block.record(self.index())
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
        let (_, _, record) = self.own();
        record.id = id;
        record.published_ns = nanos_since_epoch(at);
        self.attempt = 1;
        self
    }

    /// Its topic, headers and record, made its own first if it shares them (or its block) with
    /// another message.
    fn own(&mut self) -> (&mut Arc<str>, &mut Vec<(String, String)>, &mut Record) {
        if !matches!(Arc::get_mut(&mut self.block), Some(Block::One { .. })) {
            let record = Record {
                topic: 0,
                headers: 0,
                ..self.record().clone()
            };
            *self = Message {
                block: Arc::new(Block::One {
                    topic: self.shared_topic().clone(),
                    headers: self.headers().to_vec(),
                    record,
                }),
                slot: self.slot & DELIVERED,
                ..*self
            };
        }
        match Arc::get_mut(&mut self.block) {
            Some(Block::One {
                topic,
                headers,
                record,
            }) => (topic, headers, record),
            // Made just above, and not shared since.
            _ => unreachable!("a block of its own"),
        }
    }

    /// Adds a header (a later header with the same name hides an earlier one in [`header`](Self::header)).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.own().1.push((name.into(), value.into()));
        self
    }

    /// Adds several headers.
    pub fn with_headers<K, V>(mut self, headers: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.own()
            .1
            .extend(headers.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// Replaces the topic (used by backends, for example to dead-letter a message).
    pub fn with_topic(mut self, topic: impl Into<Arc<str>>) -> Self {
        *self.own().0 = topic.into();
        self
    }

    /// Sets the id (for backends: the broker assigns ids when it takes a message).
    pub fn with_id(mut self, id: MessageId) -> Self {
        self.own().2.id = id;
        self
    }

    /// Sets the publish time (for backends).
    pub fn with_published_at(mut self, at: SystemTime) -> Self {
        self.own().2.published_ns = nanos_since_epoch(at);
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
        self.shared_topic()
    }

    /// The topic as the shared string it is kept in.
    #[inline]
    pub(crate) fn shared_topic(&self) -> &Arc<str> {
        self.block.topic(self.index())
    }

    /// The payload, shared without copying between every copy of the message.
    #[inline]
    pub fn payload(&self) -> &Bytes {
        &self.record().payload
    }

    /// All headers, in the order they were added.
    #[inline]
    pub fn headers(&self) -> &[(String, String)] {
        self.block.headers(self.index())
    }

    /// The value of the last header called `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The id the broker gave it (`MessageId(0)` before it is published).
    #[inline]
    pub fn id(&self) -> MessageId {
        self.record().id
    }

    /// The delivery attempt: 1 on first delivery, raised by one for each re-delivery.
    #[inline]
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// When the broker took it (`UNIX_EPOCH` before it is published).
    #[inline]
    pub fn published_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_nanos(self.record().published_ns)
    }

    /// [`published_at`](Self::published_at) in nanoseconds since the Unix epoch.
    #[inline]
    pub(crate) fn published_ns(&self) -> u64 {
        self.record().published_ns
    }

    /// The id to pass to [`ack`](crate::Broker::ack) or [`nack`](crate::Broker::nack); `None`
    /// until a broker delivers the message to a subscription.
    #[inline]
    pub fn delivery_id(&self) -> Option<DeliveryId> {
        (self.slot & DELIVERED != 0).then(|| DeliveryId {
            subscription: self.subscription,
            message: self.record().id,
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

    fn assert_at_most<T>(bytes: usize) {
        let size = std::mem::size_of::<T>();
        assert!(
            size <= bytes,
            "{} is {size} bytes",
            std::any::type_name::<T>()
        );
    }

    #[test]
    fn a_message_is_three_words() {
        // A broker moves every message through several queues: its size is per-message work.
        assert_at_most::<Message>(24);
    }

    #[test]
    fn a_record_in_a_block_is_under_a_cache_line() {
        // Every message decoded from the network writes one, in memory another thread frees.
        assert_at_most::<Record>(56);
    }

    #[test]
    fn the_publish_time_keeps_its_nanoseconds() {
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        let msg = Message::new("t", "x").with_published_at(at);
        assert_eq!(msg.published_at(), at);
        assert_eq!(msg.published_ns(), 1_700_000_000_123_456_789);
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(
            Message::new("t", "x")
                .with_published_at(before)
                .published_at(),
            UNIX_EPOCH,
            "times before the epoch count as the epoch"
        );
    }

    #[test]
    fn messages_of_a_block_keep_their_own_topics_and_headers() {
        let topics: Vec<Arc<str>> = vec![Arc::from("a"), Arc::from("b")];
        let mut drafts = Drafts::default();
        for i in 0..6u32 {
            // a, a, b, b, a, a: three runs, and the same topic again after another.
            let topic = &topics[(i as usize / 2) % 2];
            let headers = if i == 3 {
                vec![("k".into(), format!("v{i}"))]
            } else {
                Vec::new()
            };
            drafts.push(topic, Bytes::new(), headers, MessageId(0), 0, 1);
        }
        let mut out = Vec::new();
        drafts.finish(None, &mut out);
        let got: Vec<&str> = out.iter().map(Message::topic).collect();
        assert_eq!(got, ["a", "a", "b", "b", "a", "a"]);
        assert!(
            Arc::ptr_eq(out[0].shared_topic(), &topics[0]),
            "shared, not copied"
        );
        assert_eq!(out[3].header("k"), Some("v3"));
        assert!(
            out.iter()
                .enumerate()
                .all(|(i, m)| i == 3 || m.headers().is_empty())
        );
        // Changing one copies its topic and headers out with it.
        let changed = out[3].clone().with_header("k2", "w");
        assert_eq!(changed.topic(), "b");
        assert_eq!(changed.headers().len(), 2);
        assert_eq!(out[3].headers().len(), 1);
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

    /// `n` messages on topic "t", the i-th with payload "p{i}", id and publish time i, and
    /// attempt 1 + i % 3.
    fn drafts(n: u32) -> Drafts {
        let topic: Arc<str> = Arc::from("t");
        let mut drafts = Drafts::default();
        for i in (0..n).map(u64::from) {
            let payload = Bytes::from(format!("p{i}"));
            drafts.push(
                &topic,
                payload,
                Vec::new(),
                MessageId(i),
                i,
                1 + i as u32 % 3,
            );
        }
        drafts
    }

    #[test]
    fn messages_made_together_keep_their_own_fields() {
        let mut out = vec![Message::new("before", "x")];
        let mut made = drafts(5);
        made.finish(Some(SubscriptionId(u64::MAX)), &mut out);
        assert!(made.is_empty());
        assert_eq!(out.len(), 6);
        assert_eq!(out[0].topic(), "before");
        for (i, msg) in out[1..].iter().enumerate() {
            let i = i as u64;
            assert_eq!(msg.id(), MessageId(i));
            assert_eq!(msg.published_ns(), i);
            assert_eq!(&msg.payload()[..], format!("p{i}").as_bytes());
            assert_eq!(msg.attempt(), 1 + i as u32 % 3);
            let delivery = DeliveryId {
                subscription: SubscriptionId(u64::MAX),
                message: MessageId(i),
            };
            assert_eq!(msg.delivery_id(), Some(delivery));
        }
        // Undelivered, and stamped with ids from 10 up.
        let mut made = drafts(3);
        made.stamp(MessageId(10), 99);
        let mut out = Vec::new();
        made.finish(None, &mut out);
        let ids: Vec<u64> = out.iter().map(|m| m.id().0).collect();
        assert_eq!(ids, [10, 11, 12]);
        assert!(
            out.iter()
                .all(|m| m.published_ns() == 99 && m.delivery_id().is_none())
        );
    }

    #[test]
    fn what_a_malformed_frame_added_is_taken_back() {
        let mut made = drafts(2);
        let mark = made.mark();
        let other: Arc<str> = Arc::from("other");
        let headers = vec![("k".to_owned(), "v".to_owned())];
        made.push(&other, Bytes::new(), headers, MessageId(7), 0, 1);
        made.truncate(mark);
        let mut out = Vec::new();
        made.finish(None, &mut out);
        assert_eq!(out.len(), 2);
        assert!(
            out.iter()
                .all(|m| m.topic() == "t" && m.headers().is_empty())
        );
        let Block::Many {
            topics, headers, ..
        } = &*out[0].block
        else {
            panic!("a block of two")
        };
        assert_eq!((topics.len(), headers.len()), (1, 0));
    }

    #[test]
    fn changing_a_message_made_with_others_leaves_them_alone() {
        let mut out = Vec::new();
        drafts(3).finish(Some(SubscriptionId(7)), &mut out);
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
        let n = BLOCK_MAX * 2 + 3;
        let mut out = Vec::new();
        drafts(n as u32).finish(Some(SubscriptionId(5)), &mut out);
        assert_eq!(out.len(), n);
        for (i, msg) in out.iter().enumerate() {
            assert_eq!(msg.id(), MessageId(i as u64));
            assert_eq!(msg.topic(), "t");
            assert_eq!(
                msg.delivery_id().map(|d| d.subscription),
                Some(SubscriptionId(5))
            );
        }
        assert!(Arc::ptr_eq(&out[0].block, &out[2].block));
        assert!(
            !Arc::ptr_eq(&out[2].block, &out[3].block),
            "the first block has the rest"
        );
        assert!(Arc::ptr_eq(&out[3].block, &out[BLOCK_MAX + 2].block));
        assert!(!Arc::ptr_eq(
            &out[BLOCK_MAX + 2].block,
            &out[BLOCK_MAX + 3].block
        ));
    }

    #[test]
    fn small_payloads_are_copied_and_large_ones_shared() {
        let owner = Bytes::from(vec![7u8; 4096]);
        let (small, large) = (&owner[..COPY_PAYLOAD_BELOW - 1], &owner[100..]);
        let topic: Arc<str> = Arc::from("t");
        let mut drafts = Drafts::default();
        drafts.push_in(&topic, (&owner, small), Vec::new(), MessageId(1), 0, 1);
        let mark = drafts.mark();
        drafts.push_in(
            &topic,
            (&owner, &owner[..3]),
            Vec::new(),
            MessageId(9),
            0,
            1,
        );
        drafts.truncate(mark);
        drafts.push_in(&topic, (&owner, large), Vec::new(), MessageId(2), 0, 1);
        drafts.push_in(
            &topic,
            (&owner, &owner[1..4]),
            Vec::new(),
            MessageId(3),
            0,
            1,
        );
        let mut out = Vec::new();
        drafts.finish(None, &mut out);
        let got: Vec<(u64, usize)> = out.iter().map(|m| (m.id().0, m.payload().len())).collect();
        assert_eq!(got, [(1, COPY_PAYLOAD_BELOW - 1), (2, 3996), (3, 3)]);
        assert!(out.iter().all(|m| m.payload().iter().all(|&b| b == 7)));
        let inside = |p: &Bytes| owner.as_ptr_range().contains(&p.as_ptr());
        assert!(!inside(out[0].payload()), "a small payload is copied");
        assert!(inside(out[1].payload()), "a large one is shared");
        assert!(!inside(out[2].payload()));
        assert_eq!(
            out[2].payload().as_ptr(),
            out[0].payload()[COPY_PAYLOAD_BELOW - 1..].as_ptr(),
            "the block's copies share one buffer, without what was taken back"
        );
    }

    #[test]
    fn a_small_block_after_a_large_one_holds_no_more_room_than_it_needs() {
        let owner = Bytes::from(vec![1u8; 16]);
        let topic: Arc<str> = Arc::from("t");
        let mut drafts = Drafts::default();
        let mut out = Vec::new();
        for n in [10_000, 1] {
            for i in 0..n {
                drafts.push_in(&topic, (&owner, &owner[..]), Vec::new(), MessageId(i), 0, 1);
            }
            out.clear();
            drafts.finish(None, &mut out);
        }
        let Block::Many { records, .. } = &*out[0].block else {
            panic!("a block")
        };
        assert!(records.capacity() <= 18, "room for {}", records.capacity());
        let payload = out[0].payload();
        assert_eq!(&payload[..], &owner[..]);
    }
}
