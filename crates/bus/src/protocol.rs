//! The wire protocol between a [`BusServer`](crate::BusServer) and a
//! [`RemoteBroker`](crate::RemoteBroker): one operation per queue-layer frame.
//!
//! Every frame of the queue layer (a 4-byte big-endian length, then the body) carries one
//! operation: one op byte, then its fields in order. Integers are big-endian; strings are UTF-8
//! and byte blobs are raw, each as a `u32` length then the bytes; a flag is one byte, 0 or 1.
//!
//! ```text
//! +----------------+----+-----------------------------+
//! | length (u32 BE)| op | fields ...                  |
//! +----------------+----+-----------------------------+
//!   queue layer      this module
//! ```
//!
//! [`decode`] never panics on any input: every length is checked against what remains, an
//! unknown op byte is [`ProtocolError::UnknownOp`], trailing bytes and invalid UTF-8 are errors.
//! Payloads are sliced from the frame without copying. `docs/PROTOCOL.md` is the full reference.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use crate::options::{AckMode, Backoff, DeliveryMode, SubscribeOptions};

/// The protocol version this crate speaks (2 adds the batched DELIVERS and ACKS operations, 3
/// the packed deliveries of PACKED, the acks by range of ACKR and the short publishes of PUB).
pub const VERSION: u16 = 3;

/// The oldest protocol version a server still serves: a version-1 client gets one DELIVER per
/// message and never sees DELIVERS.
pub const MIN_VERSION: u16 = 1;

/// Op byte values.
mod code {
    pub(super) const HELLO: u8 = 1;
    pub(super) const WELCOME: u8 = 2;
    pub(super) const PUBLISH: u8 = 3;
    pub(super) const CONFIRM: u8 = 4;
    pub(super) const SUBSCRIBE: u8 = 5;
    pub(super) const SUBSCRIBED: u8 = 6;
    pub(super) const UNSUBSCRIBE: u8 = 7;
    pub(super) const DELIVER: u8 = 8;
    pub(super) const ACK: u8 = 9;
    pub(super) const NACK: u8 = 10;
    pub(super) const PING: u8 = 11;
    pub(super) const PONG: u8 = 12;
    pub(super) const STATS: u8 = 13;
    pub(super) const STATS_REPLY: u8 = 14;
    pub(super) const ERROR: u8 = 15;
    pub(super) const DELIVERS: u8 = 16;
    pub(super) const ACKS: u8 = 17;
    pub(super) const PACKED: u8 = 18;
    pub(super) const ACKR: u8 = 19;
    pub(super) const PUB: u8 = 20;
}

/// The flags of a PUB: which of its optional fields follow.
mod pub_flags {
    /// A `u64` request id follows (else the request is 0: no confirm).
    pub(super) const REQUEST: u8 = 0x01;
    /// Headers follow (a `u16` count and pairs; else none).
    pub(super) const HEADERS: u8 = 0x02;
    /// Every flag; the other bits must be 0.
    pub(super) const ALL: u8 = 0x03;
}

/// The flags that open each delivery of a PACKED frame: which fields repeat the previous
/// delivery of the frame (and are left out) and which follow.
mod packed {
    /// The message id is the previous delivery's plus one (the first delivery's "previous" id
    /// is 0); else a `u64` id follows.
    pub(super) const NEXT_ID: u8 = 0x01;
    /// The first attempt; else a `u32` attempt follows.
    pub(super) const FIRST_ATTEMPT: u8 = 0x02;
    /// The previous delivery's publish time (0 for the first); else a `u64` follows.
    pub(super) const SAME_TIME: u8 = 0x04;
    /// The previous delivery's topic (not allowed on the first); else a topic follows.
    pub(super) const SAME_TOPIC: u8 = 0x08;
    /// Headers follow (a `u16` count and pairs); else the delivery has none.
    pub(super) const HEADERS: u8 = 0x10;
    /// Every flag; the other bits must be 0.
    pub(super) const ALL: u8 = 0x1f;
}

/// Why the peer sent an [`Op::Error`].
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A frame could not be decoded.
    Malformed,
    /// The op byte is not one of this version's.
    UnknownOp,
    /// The HELLO asked for a version the server does not speak.
    UnsupportedVersion,
    /// The HELLO's token is missing or wrong.
    Unauthorized,
    /// The server is at its connection limit.
    TooManyConnections,
    /// The connection is at its subscription limit.
    TooManySubscriptions,
    /// The connection fell too far behind reading its deliveries.
    SlowConsumer,
    /// A topic, pattern or option was refused.
    Invalid,
    /// A consumer group queue is full.
    QueueFull,
    /// The bus is closed or shutting down.
    Closed,
    /// A frame above the size limit.
    FrameTooLarge,
    /// An operation before the handshake, or a second HELLO.
    HandshakeRequired,
    /// Anything else the server could not do.
    Internal,
    /// A code this version does not know (kept so it round-trips).
    Other(u16),
}

impl ErrorCode {
    /// The code's wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::UnknownOp => 2,
            ErrorCode::UnsupportedVersion => 3,
            ErrorCode::Unauthorized => 4,
            ErrorCode::TooManyConnections => 5,
            ErrorCode::TooManySubscriptions => 6,
            ErrorCode::SlowConsumer => 7,
            ErrorCode::Invalid => 8,
            ErrorCode::QueueFull => 9,
            ErrorCode::Closed => 10,
            ErrorCode::FrameTooLarge => 11,
            ErrorCode::HandshakeRequired => 12,
            ErrorCode::Internal => 13,
            ErrorCode::Other(n) => n,
        }
    }

    /// The code for a wire value (unknown values become [`ErrorCode::Other`]).
    pub fn from_u16(n: u16) -> Self {
        match n {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::UnknownOp,
            3 => ErrorCode::UnsupportedVersion,
            4 => ErrorCode::Unauthorized,
            5 => ErrorCode::TooManyConnections,
            6 => ErrorCode::TooManySubscriptions,
            7 => ErrorCode::SlowConsumer,
            8 => ErrorCode::Invalid,
            9 => ErrorCode::QueueFull,
            10 => ErrorCode::Closed,
            11 => ErrorCode::FrameTooLarge,
            12 => ErrorCode::HandshakeRequired,
            13 => ErrorCode::Internal,
            n => ErrorCode::Other(n),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            ErrorCode::Malformed => "malformed frame",
            ErrorCode::UnknownOp => "unknown operation",
            ErrorCode::UnsupportedVersion => "unsupported version",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TooManyConnections => "too many connections",
            ErrorCode::TooManySubscriptions => "too many subscriptions",
            ErrorCode::SlowConsumer => "slow consumer",
            ErrorCode::Invalid => "invalid request",
            ErrorCode::QueueFull => "queue full",
            ErrorCode::Closed => "closed",
            ErrorCode::FrameTooLarge => "frame too large",
            ErrorCode::HandshakeRequired => "handshake required",
            ErrorCode::Internal => "internal error",
            ErrorCode::Other(n) => return write!(f, "error code {n}"),
        };
        f.write_str(name)
    }
}

/// One protocol operation: the content of one frame.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Client → server, first frame: the version, an optional token and the client's name.
    Hello {
        /// The protocol version the client speaks.
        version: u16,
        /// The shared secret, when the server asks for one.
        token: Option<String>,
        /// A name for logs.
        client: String,
    },
    /// Server → client: the handshake succeeded.
    Welcome {
        /// The protocol version the server speaks.
        version: u16,
        /// A name for logs.
        server: String,
    },
    /// Client → server: publish a message; `request` 0 asks for no confirm.
    Publish {
        /// The request id answered by CONFIRM or ERROR (0: no answer on success).
        request: u64,
        /// The topic.
        topic: String,
        /// The headers, in order.
        headers: Vec<(String, String)>,
        /// The payload.
        payload: Bytes,
    },
    /// Server → client: the publish with this request id was taken.
    Confirm {
        /// The request id of the PUBLISH.
        request: u64,
        /// The id the server gave the message.
        message: u64,
    },
    /// Client → server: subscribe; `sub` is chosen by the client and names the subscription
    /// (and the request, for the SUBSCRIBED or ERROR answer).
    Subscribe {
        /// The subscription id, unique on this connection.
        sub: u64,
        /// The topic or pattern.
        pattern: String,
        /// Delivery and ack options.
        options: SubscribeOptions,
    },
    /// Server → client: the subscription is live.
    Subscribed {
        /// The subscription id.
        sub: u64,
    },
    /// Client → server: end a subscription.
    Unsubscribe {
        /// The subscription id.
        sub: u64,
    },
    /// Server → client: a message for a subscription.
    Deliver {
        /// The subscription id.
        sub: u64,
        /// The message.
        delivery: WireDelivery,
    },
    /// Server → client (version 2): several messages for one subscription in one frame.
    Delivers {
        /// The subscription id.
        sub: u64,
        /// The messages, in delivery order (at least one).
        messages: Vec<WireDelivery>,
    },
    /// Server → client (version 3): several messages for one subscription in one frame, as
    /// [`Delivers`](Op::Delivers), but each delivery leaves out the fields that repeat the
    /// previous one's (a run of one topic from one publisher costs a flag byte and the payload
    /// with its length per message).
    Packed {
        /// The subscription id.
        sub: u64,
        /// The messages, in delivery order (at least one).
        messages: Vec<WireDelivery>,
    },
    /// Client → server (version 2): acknowledge several deliveries of one subscription.
    Acks {
        /// The subscription id.
        sub: u64,
        /// The message ids (at least one).
        messages: Vec<u64>,
    },
    /// Client → server (version 3): acknowledge the deliveries of one subscription whose
    /// message ids lie in the ranges given, the same as one ACK per id (a run of consecutive
    /// ids costs 12 bytes, however long).
    AckRanges {
        /// The subscription id.
        sub: u64,
        /// First message id and count of ids (at least 1) of each range (at least one range).
        ranges: Vec<(u64, u32)>,
    },
    /// Client → server: acknowledge a delivery.
    Ack {
        /// The subscription id.
        sub: u64,
        /// The message id.
        message: u64,
    },
    /// Client → server: reject a delivery.
    Nack {
        /// The subscription id.
        sub: u64,
        /// The message id.
        message: u64,
        /// Deliver again (after the back-off) rather than dead-letter.
        requeue: bool,
    },
    /// Either way: are you there?
    Ping {
        /// Echoed in the PONG.
        nonce: u64,
    },
    /// The answer to a PING.
    Pong {
        /// The PING's nonce.
        nonce: u64,
    },
    /// Client → server: ask for the server's statistics.
    Stats {
        /// The request id of the STATS_REPLY.
        request: u64,
    },
    /// Server → client: statistics as key/value rows.
    StatsReply {
        /// The STATS request id.
        request: u64,
        /// Key/value rows, in a stable order.
        rows: Vec<(String, String)>,
    },
    /// Either way: a request failed (`request` names it) or, with `request` 0, the connection
    /// is about to be closed for the reason given.
    Error {
        /// The failed request's id, or 0 for the connection.
        request: u64,
        /// What kind of error.
        code: ErrorCode,
        /// A human-readable explanation.
        text: String,
    },
}

/// One message of a DELIVER or DELIVERS frame: the fields after the sub id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireDelivery {
    /// The message id.
    pub message: u64,
    /// The delivery attempt (1 for the first).
    pub attempt: u32,
    /// Publish time in microseconds since the Unix epoch.
    pub published_us: u64,
    /// The topic (shared by the deliveries of one frame that have the same topic).
    pub topic: Arc<str>,
    /// The headers, in order.
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub payload: Bytes,
}

impl Op {
    /// The operation's name as written in `docs/PROTOCOL.md`.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Hello { .. } => "HELLO",
            Op::Welcome { .. } => "WELCOME",
            Op::Publish { .. } => "PUBLISH",
            Op::Confirm { .. } => "CONFIRM",
            Op::Subscribe { .. } => "SUBSCRIBE",
            Op::Subscribed { .. } => "SUBSCRIBED",
            Op::Unsubscribe { .. } => "UNSUBSCRIBE",
            Op::Deliver { .. } => "DELIVER",
            Op::Delivers { .. } => "DELIVERS",
            Op::Packed { .. } => "PACKED",
            Op::AckRanges { .. } => "ACKR",
            Op::Acks { .. } => "ACKS",
            Op::Ack { .. } => "ACK",
            Op::Nack { .. } => "NACK",
            Op::Ping { .. } => "PING",
            Op::Pong { .. } => "PONG",
            Op::Stats { .. } => "STATS",
            Op::StatsReply { .. } => "STATS_REPLY",
            Op::Error { .. } => "ERROR",
        }
    }

    /// Encodes the operation into a fresh buffer (see [`encode`]).
    pub fn to_bytes(&self) -> Bytes {
        // Room for the small ops (acks, pings, subscribes, errors) at once: grown from empty,
        // an ack frame cost a chain of reallocations. The large ones reserve what they need.
        let mut buf = BytesMut::with_capacity(64);
        encode(self, &mut buf);
        buf.freeze()
    }
}

/// Why a frame could not be decoded.
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The frame has no op byte.
    #[error("empty frame")]
    Empty,
    /// The op byte is not one of this version's.
    #[error("unknown operation {0}")]
    UnknownOp(u8),
    /// The frame ended inside a field.
    #[error("{op} frame truncated in field {field}")]
    Truncated {
        /// The operation.
        op: &'static str,
        /// The field being read.
        field: &'static str,
    },
    /// Bytes left after the last field.
    #[error("{op} frame has {extra} trailing bytes")]
    TrailingBytes {
        /// The operation.
        op: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
    /// A string field is not UTF-8.
    #[error("{op} field {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The operation.
        op: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A field holds a value outside its range.
    #[error("{op} field {field} has invalid value {value}")]
    InvalidValue {
        /// The operation.
        op: &'static str,
        /// The field.
        field: &'static str,
        /// The value read.
        value: u64,
    },
}

fn put_len(buf: &mut BytesMut, len: usize) {
    // Frames are bounded far below 4 GiB by the queue layer; saturating keeps encode total and
    // such a frame is refused by the queue's size limit before it is sent.
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}

fn put_str(buf: &mut BytesMut, s: &str) {
    put_len(buf, s.len());
    buf.put_slice(s.as_bytes());
}

fn put_pairs16(buf: &mut BytesMut, pairs: &[(String, String)]) {
    let n = pairs.len().min(usize::from(u16::MAX));
    buf.put_u16(n as u16);
    for (k, v) in &pairs[..n] {
        put_str(buf, k);
        put_str(buf, v);
    }
}

fn put_ms(buf: &mut BytesMut, d: Duration) {
    buf.put_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
}

fn put_options(buf: &mut BytesMut, o: &SubscribeOptions) {
    match &o.mode {
        DeliveryMode::Group(name) => {
            buf.put_u8(1);
            put_str(buf, name);
        }
        _ => buf.put_u8(0),
    }
    buf.put_u8(match o.ack_mode {
        AckMode::Manual => 1,
        _ => 0,
    });
    put_ms(buf, o.ack_wait);
    buf.put_u32(o.max_attempts);
    buf.put_u32(u32::try_from(o.max_in_flight).unwrap_or(u32::MAX));
    put_ms(buf, o.backoff.initial);
    put_ms(buf, o.backoff.max);
    buf.put_u32(o.backoff.multiplier);
    match &o.dead_letter_topic {
        Some(t) => {
            buf.put_u8(1);
            put_str(buf, t);
        }
        None => buf.put_u8(0),
    }
}

/// Appends a PUBLISH, borrowing every field (what [`encode`] does for [`Op::Publish`]).
pub(crate) fn put_publish(
    buf: &mut BytesMut,
    request: u64,
    topic: &str,
    headers: &[(String, String)],
    payload: &[u8],
) {
    buf.reserve(1 + 8 + 4 + topic.len() + 2 + 4 + payload.len());
    put_publish_head(buf, request, topic, headers, payload.len());
    buf.put_slice(payload);
}

/// The longest topic a PUB carries (its length is a `u8`); a publish on a longer one goes as a
/// PUBLISH (the bus refuses such a topic, but the encoder stays total).
const PUB_TOPIC_MAX: usize = u8::MAX as usize;

/// Appends a publish up to its payload: what [`put_publish`] writes before the payload's bytes,
/// so that a large payload can follow as a part of its own, written in place. That is a PUB
/// (version 3: the request id and headers only when there are any, and the topic's length in a
/// byte), or a PUBLISH for a topic longer than 255 bytes.
pub(crate) fn put_publish_head(
    buf: &mut BytesMut,
    request: u64,
    topic: &str,
    headers: &[(String, String)],
    payload_len: usize,
) {
    if topic.len() <= PUB_TOPIC_MAX {
        let mut flags = 0;
        if request != 0 {
            flags |= pub_flags::REQUEST;
        }
        if !headers.is_empty() {
            flags |= pub_flags::HEADERS;
        }
        buf.put_u8(code::PUB);
        buf.put_u8(flags);
        if request != 0 {
            buf.put_u64(request);
        }
        buf.put_u8(topic.len() as u8);
        buf.put_slice(topic.as_bytes());
        if !headers.is_empty() {
            put_pairs16(buf, headers);
        }
        put_len(buf, payload_len);
        return;
    }
    buf.put_u8(code::PUBLISH);
    buf.put_u64(request);
    put_str(buf, topic);
    put_pairs16(buf, headers);
    put_len(buf, payload_len);
}

/// Whether `frame` (one this side encoded) is a PUB or PUBLISH that asks for no confirm.
pub(crate) fn is_unconfirmed_publish(frame: &[u8]) -> bool {
    match frame {
        [code::PUB, flags, ..] => flags & pub_flags::REQUEST == 0,
        [code::PUBLISH, request @ ..] => request.get(..8) == Some(&[0; 8]),
        _ => false,
    }
}

/// Starts a DELIVER frame for `sub`: follow with exactly one delivery.
pub(crate) fn begin_deliver(buf: &mut BytesMut, sub: u64) {
    buf.put_u8(code::DELIVER);
    buf.put_u64(sub);
}

/// Starts a DELIVERS frame for `sub` at the end of `buf`: follow with one or more
/// deliveries, then [`end_delivers`] with the returned position and the count.
pub(crate) fn begin_delivers(buf: &mut BytesMut, sub: u64) -> usize {
    begin_batch(buf, code::DELIVERS, sub)
}

/// Writes the op byte and sub id of a frame of several deliveries, and room for their count.
fn begin_batch(buf: &mut BytesMut, op: u8, sub: u64) -> usize {
    buf.put_u8(op);
    buf.put_u64(sub);
    let at = buf.len();
    buf.put_u32(0);
    at
}

/// Writes the delivery count of a DELIVERS frame started at `at` by [`begin_delivers`].
pub(crate) fn end_delivers(buf: &mut BytesMut, at: usize, count: usize) {
    let n = u32::try_from(count).unwrap_or(u32::MAX).to_be_bytes();
    if let Some(slot) = buf.get_mut(at..at + 4) {
        slot.copy_from_slice(&n);
    }
}

/// Appends one delivery up to its payload's length: the payload's `payload_len` bytes must
/// follow on the wire (the server sends them from the message's own buffer).
pub(crate) fn put_delivery_head(
    buf: &mut BytesMut,
    message: u64,
    attempt: u32,
    published_us: u64,
    topic: &str,
    headers: &[(String, String)],
    payload_len: usize,
) {
    buf.put_u64(message);
    buf.put_u32(attempt);
    buf.put_u64(published_us);
    put_str(buf, topic);
    put_pairs16(buf, headers);
    put_len(buf, payload_len);
}

/// The bytes [`put_delivery_head`] writes for `topic` and `headers` (at most: past 65,535
/// headers it writes fewer).
pub(crate) fn delivery_head_len(topic: &str, headers: &[(String, String)]) -> usize {
    let pairs: usize = headers.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    8 + 4 + 8 + 4 + topic.len() + 2 + pairs + 4
}

/// Starts a PACKED frame for `sub` at the end of `buf`: follow with one or more deliveries
/// written by [`put_packed_head`] (with a fresh [`PackState`]) and their payloads, then
/// [`end_delivers`] with the returned position and the count.
pub(crate) fn begin_packed(buf: &mut BytesMut, sub: u64) -> usize {
    begin_batch(buf, code::PACKED, sub)
}

/// What the previous delivery of a PACKED frame carried: the next leaves out what repeats it.
#[derive(Debug, Default)]
pub(crate) struct PackState {
    message: u64,
    published_us: u64,
    topic: Option<Arc<str>>,
}

/// Appends one delivery of a PACKED frame up to its payload's length (the payload's
/// `payload_len` bytes must follow), leaving out the fields that repeat the previous delivery
/// of the frame, which `state` remembers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn put_packed_head(
    buf: &mut BytesMut,
    state: &mut PackState,
    message: u64,
    attempt: u32,
    published_us: u64,
    topic: &Arc<str>,
    headers: &[(String, String)],
    payload_len: usize,
) {
    let mut flags = 0;
    let next = state.message.checked_add(1) == Some(message);
    if next {
        flags |= packed::NEXT_ID;
    }
    if attempt == 1 {
        flags |= packed::FIRST_ATTEMPT;
    }
    let same_time = published_us == state.published_us;
    if same_time {
        flags |= packed::SAME_TIME;
    }
    let same_topic = state
        .topic
        .as_ref()
        .is_some_and(|t| Arc::ptr_eq(t, topic) || **t == **topic);
    if same_topic {
        flags |= packed::SAME_TOPIC;
    } else {
        state.topic = Some(topic.clone());
    }
    if !headers.is_empty() {
        flags |= packed::HEADERS;
    }
    buf.put_u8(flags);
    if !next {
        buf.put_u64(message);
    }
    if attempt != 1 {
        buf.put_u32(attempt);
    }
    if !same_time {
        buf.put_u64(published_us);
    }
    if !same_topic {
        put_str(buf, topic);
    }
    if !headers.is_empty() {
        put_pairs16(buf, headers);
    }
    put_len(buf, payload_len);
    state.message = message;
    state.published_us = published_us;
}

/// Appends one delivery (the fields of a DELIVER after its sub id).
fn put_wire(buf: &mut BytesMut, d: &WireDelivery) {
    put_delivery_head(
        buf,
        d.message,
        d.attempt,
        d.published_us,
        &d.topic,
        &d.headers,
        d.payload.len(),
    );
    buf.put_slice(&d.payload);
}

/// Appends the encoding of `op` (op byte and fields, without the queue layer's length prefix).
///
/// Header lists are capped at 65 535 entries (the field is a `u16`).
///
/// # Examples
///
/// ```
/// use bytes::BytesMut;
/// use mixbus_bus::protocol::{Op, decode, encode};
/// let mut buf = BytesMut::new();
/// encode(&Op::Ping { nonce: 7 }, &mut buf);
/// assert_eq!(decode(buf.freeze()), Ok(Op::Ping { nonce: 7 }));
/// ```
pub fn encode(op: &Op, buf: &mut BytesMut) {
    match op {
        Op::Hello {
            version,
            token,
            client,
        } => {
            buf.put_u8(code::HELLO);
            buf.put_u16(*version);
            match token {
                Some(t) => {
                    buf.put_u8(1);
                    put_str(buf, t);
                }
                None => buf.put_u8(0),
            }
            put_str(buf, client);
        }
        Op::Welcome { version, server } => {
            buf.put_u8(code::WELCOME);
            buf.put_u16(*version);
            put_str(buf, server);
        }
        Op::Publish {
            request,
            topic,
            headers,
            payload,
        } => {
            put_publish(buf, *request, topic, headers, payload);
        }
        Op::Confirm { request, message } => {
            buf.put_u8(code::CONFIRM);
            buf.put_u64(*request);
            buf.put_u64(*message);
        }
        Op::Subscribe {
            sub,
            pattern,
            options,
        } => {
            buf.put_u8(code::SUBSCRIBE);
            buf.put_u64(*sub);
            put_str(buf, pattern);
            put_options(buf, options);
        }
        Op::Subscribed { sub } => {
            buf.put_u8(code::SUBSCRIBED);
            buf.put_u64(*sub);
        }
        Op::Unsubscribe { sub } => {
            buf.put_u8(code::UNSUBSCRIBE);
            buf.put_u64(*sub);
        }
        Op::Deliver { sub, delivery } => {
            begin_deliver(buf, *sub);
            put_wire(buf, delivery);
        }
        Op::Delivers { sub, messages } => {
            let at = begin_delivers(buf, *sub);
            end_delivers(buf, at, messages.len());
            for d in messages {
                put_wire(buf, d);
            }
        }
        Op::Packed { sub, messages } => {
            let at = begin_packed(buf, *sub);
            end_delivers(buf, at, messages.len());
            let mut state = PackState::default();
            for d in messages {
                put_packed_head(
                    buf,
                    &mut state,
                    d.message,
                    d.attempt,
                    d.published_us,
                    &d.topic,
                    &d.headers,
                    d.payload.len(),
                );
                buf.put_slice(&d.payload);
            }
        }
        Op::Acks { sub, messages } => {
            buf.reserve(1 + 8 + 8 * messages.len());
            buf.put_u8(code::ACKS);
            buf.put_u64(*sub);
            put_len(buf, messages.len());
            for m in messages {
                buf.put_u64(*m);
            }
        }
        Op::AckRanges { sub, ranges } => {
            buf.reserve(1 + 8 + 4 + 12 * ranges.len());
            buf.put_u8(code::ACKR);
            buf.put_u64(*sub);
            put_len(buf, ranges.len());
            for &(first, count) in ranges {
                buf.put_u64(first);
                buf.put_u32(count);
            }
        }
        Op::Ack { sub, message } => {
            buf.put_u8(code::ACK);
            buf.put_u64(*sub);
            buf.put_u64(*message);
        }
        Op::Nack {
            sub,
            message,
            requeue,
        } => {
            buf.put_u8(code::NACK);
            buf.put_u64(*sub);
            buf.put_u64(*message);
            buf.put_u8(u8::from(*requeue));
        }
        Op::Ping { nonce } => {
            buf.put_u8(code::PING);
            buf.put_u64(*nonce);
        }
        Op::Pong { nonce } => {
            buf.put_u8(code::PONG);
            buf.put_u64(*nonce);
        }
        Op::Stats { request } => {
            buf.put_u8(code::STATS);
            buf.put_u64(*request);
        }
        Op::StatsReply { request, rows } => {
            buf.put_u8(code::STATS_REPLY);
            buf.put_u64(*request);
            put_len(buf, rows.len());
            for (k, v) in rows {
                put_str(buf, k);
                put_str(buf, v);
            }
        }
        Op::Error {
            request,
            code,
            text,
        } => {
            buf.put_u8(code::ERROR);
            buf.put_u64(*request);
            buf.put_u16(code.to_u16());
            put_str(buf, text);
        }
    }
}

/// A checked cursor over one frame.
struct Reader<'a> {
    /// The frame's bytes: all of `owner`, or a part of it.
    frame: &'a [u8],
    /// The buffer `frame` lies in, which byte blobs are zero-copy slices of.
    owner: &'a Bytes,
    pos: usize,
    op: &'static str,
    /// The topic of the previous delivery in this frame: the next one on the same topic shares it.
    last_topic: Option<Arc<str>>,
}

impl<'a> Reader<'a> {
    fn new(frame: &'a Bytes, op: &'static str) -> Self {
        Reader::within(frame, frame, op)
    }

    /// A reader of `frame`, which lies in `owner`.
    fn within(frame: &'a [u8], owner: &'a Bytes, op: &'static str) -> Self {
        Reader {
            frame,
            owner,
            pos: 1,
            op,
            last_topic: None,
        }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        let rest = self.frame.len().saturating_sub(self.pos);
        if n > rest {
            return Err(ProtocolError::Truncated { op: self.op, field });
        }
        let start = self.pos;
        self.pos += n;
        self.frame
            .get(start..start + n)
            .ok_or(ProtocolError::Truncated { op: self.op, field })
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], ProtocolError> {
        let op = self.op;
        let s = self.take(N, field)?;
        <[u8; N]>::try_from(s).map_err(|_| ProtocolError::Truncated { op, field })
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn flag(&mut self, field: &'static str) -> Result<bool, ProtocolError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(ProtocolError::InvalidValue {
                op: self.op,
                field,
                value: u64::from(v),
            }),
        }
    }

    fn len(&mut self, field: &'static str) -> Result<usize, ProtocolError> {
        let n = self.u32(field)?;
        let n = usize::try_from(n).map_err(|_| ProtocolError::Truncated { op: self.op, field })?;
        if n > self.frame.len().saturating_sub(self.pos) {
            return Err(ProtocolError::Truncated { op: self.op, field });
        }
        Ok(n)
    }

    fn str(&mut self, field: &'static str) -> Result<&'a str, ProtocolError> {
        let n = self.len(field)?;
        let op = self.op;
        let raw = self.take(n, field)?;
        std::str::from_utf8(raw).map_err(|_| ProtocolError::InvalidUtf8 { op, field })
    }

    fn string(&mut self, field: &'static str) -> Result<String, ProtocolError> {
        self.str(field).map(str::to_owned)
    }

    /// Reads a topic of `n` bytes into `last_topic`, keeping the one there if they are equal (a
    /// burst on one topic allocates it once, and takes no reference count per message), and
    /// returns it there.
    fn note_topic(&mut self, n: usize) -> Result<&Arc<str>, ProtocolError> {
        let raw = self.take(n, "topic")?;
        // The same bytes as the last topic are valid UTF-8 already.
        if self
            .last_topic
            .as_ref()
            .is_none_or(|last| last.as_bytes() != raw)
        {
            let op = self.op;
            let topic = std::str::from_utf8(raw)
                .map_err(|_| ProtocolError::InvalidUtf8 { op, field: "topic" })?;
            self.last_topic = Some(Arc::from(topic));
        }
        self.topic_read()
    }

    /// The topic last read ([`note_topic`](Self::note_topic)).
    fn topic_read(&self) -> Result<&Arc<str>, ProtocolError> {
        let op = self.op;
        (self.last_topic.as_ref()).ok_or(ProtocolError::Truncated { op, field: "topic" })
    }

    /// A blob, in place in the frame.
    fn blob(&mut self, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        let n = self.len(field)?;
        self.take(n, field)
    }

    /// Headers: a `u16` count, then that many key/value strings.
    fn headers(&mut self) -> Result<Vec<(String, String)>, ProtocolError> {
        let count = usize::from(self.u16("header_count")?);
        self.pairs(count, "header")
    }

    fn pairs(
        &mut self,
        count: usize,
        field: &'static str,
    ) -> Result<Vec<(String, String)>, ProtocolError> {
        // Each pair takes at least 8 bytes: never reserve more than the frame can hold.
        let room = self.frame.len().saturating_sub(self.pos) / 8;
        let mut out = Vec::with_capacity(count.min(room));
        for _ in 0..count {
            let k = self.string(field)?;
            let v = self.string(field)?;
            out.push((k, v));
        }
        Ok(out)
    }

    fn ms(&mut self, field: &'static str) -> Result<Duration, ProtocolError> {
        Ok(Duration::from_millis(self.u64(field)?))
    }

    fn options(&mut self) -> Result<SubscribeOptions, ProtocolError> {
        let mode = match self.u8("mode")? {
            0 => DeliveryMode::Broadcast,
            1 => DeliveryMode::Group(self.string("group")?),
            v => {
                return Err(ProtocolError::InvalidValue {
                    op: self.op,
                    field: "mode",
                    value: u64::from(v),
                });
            }
        };
        let ack_mode = match self.u8("ack_mode")? {
            0 => AckMode::Auto,
            1 => AckMode::Manual,
            v => {
                return Err(ProtocolError::InvalidValue {
                    op: self.op,
                    field: "ack_mode",
                    value: u64::from(v),
                });
            }
        };
        let ack_wait = self.ms("ack_wait_ms")?;
        let max_attempts = self.u32("max_attempts")?;
        let max_in_flight = self.u32("max_in_flight")?;
        let backoff = Backoff {
            initial: self.ms("backoff_initial_ms")?,
            max: self.ms("backoff_max_ms")?,
            multiplier: self.u32("backoff_multiplier")?,
        };
        let dead_letter_topic = if self.flag("has_dead_letter")? {
            Some(self.string("dead_letter_topic")?)
        } else {
            None
        };
        let mut options = SubscribeOptions::default()
            .with_mode(mode)
            .with_ack_mode(ack_mode)
            .with_ack_wait(ack_wait)
            .with_max_attempts(max_attempts)
            .with_max_in_flight(usize::try_from(max_in_flight).unwrap_or(usize::MAX))
            .with_backoff(backoff);
        options.dead_letter_topic = dead_letter_topic;
        Ok(options)
    }

    fn remaining(&self) -> usize {
        self.frame.len().saturating_sub(self.pos)
    }

    /// A `u32` count of entries that must be at least 1.
    fn count(&mut self, field: &'static str) -> Result<usize, ProtocolError> {
        match self.u32(field)? {
            0 => Err(ProtocolError::InvalidValue {
                op: self.op,
                field,
                value: 0,
            }),
            n => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        }
    }

    /// The fields of a PUBLISH, after the op byte; the topic is left in `last_topic`.
    fn publish(&mut self) -> Result<Publish<'a>, ProtocolError> {
        let request = self.u64("request")?;
        let n = self.len("topic")?;
        self.note_topic(n)?;
        Ok(Publish {
            request,
            headers: self.headers()?,
            payload: self.blob("payload")?,
        })
    }

    /// The fields of a PUB, after the op byte; the topic is left in `last_topic`.
    fn short_publish(&mut self) -> Result<Publish<'a>, ProtocolError> {
        let flags = self.u8("flags")?;
        if flags & !pub_flags::ALL != 0 {
            return Err(ProtocolError::InvalidValue {
                op: self.op,
                field: "flags",
                value: u64::from(flags),
            });
        }
        let request = if flags & pub_flags::REQUEST != 0 {
            self.u64("request")?
        } else {
            0
        };
        let n = usize::from(self.u8("topic")?);
        self.note_topic(n)?;
        let headers = if flags & pub_flags::HEADERS != 0 {
            self.headers()?
        } else {
            Vec::new()
        };
        Ok(Publish {
            request,
            headers,
            payload: self.blob("payload")?,
        })
    }

    /// The fields of one delivery, after the sub id.
    fn delivery(&mut self) -> Result<WireDelivery, ProtocolError> {
        let raw = self.delivery_raw()?;
        self.owned(raw)
    }

    /// [`delivery`](Self::delivery) read in place: the topic is left in `last_topic`.
    fn delivery_raw(&mut self) -> Result<RawDelivery<'a>, ProtocolError> {
        let message = self.u64("message")?;
        let attempt = self.u32("attempt")?;
        let published_us = self.u64("published_us")?;
        let n = self.len("topic")?;
        self.note_topic(n)?;
        Ok(RawDelivery {
            message,
            attempt,
            published_us,
            headers: self.headers()?,
            payload: self.blob("payload")?,
        })
    }

    /// The fields of one delivery of a PACKED frame; `prev` holds the previous delivery's id
    /// and publish time (0 and 0 before the first), and `last_topic` its topic.
    fn packed(&mut self, prev: &mut (u64, u64)) -> Result<WireDelivery, ProtocolError> {
        let raw = self.packed_raw(prev)?;
        self.owned(raw)
    }

    /// [`packed`](Self::packed) read in place: the topic is left in `last_topic`.
    fn packed_raw(&mut self, prev: &mut (u64, u64)) -> Result<RawDelivery<'a>, ProtocolError> {
        let flags = self.u8("flags")?;
        let invalid = |op, field| ProtocolError::InvalidValue {
            op,
            field,
            value: u64::from(flags),
        };
        if flags & !packed::ALL != 0 {
            return Err(invalid(self.op, "flags"));
        }
        let message = if flags & packed::NEXT_ID != 0 {
            prev.0.checked_add(1).ok_or(invalid(self.op, "flags"))?
        } else {
            self.u64("message")?
        };
        let attempt = if flags & packed::FIRST_ATTEMPT != 0 {
            1
        } else {
            self.u32("attempt")?
        };
        let published_us = if flags & packed::SAME_TIME != 0 {
            prev.1
        } else {
            self.u64("published_us")?
        };
        if flags & packed::SAME_TOPIC != 0 {
            if self.last_topic.is_none() {
                return Err(invalid(self.op, "flags"));
            }
        } else {
            let n = self.len("topic")?;
            self.note_topic(n)?;
        }
        let headers = if flags & packed::HEADERS != 0 {
            self.headers()?
        } else {
            Vec::new()
        };
        let payload = self.blob("payload")?;
        *prev = (message, published_us);
        Ok(RawDelivery {
            message,
            attempt,
            published_us,
            headers,
            payload,
        })
    }

    /// A delivery read in place, made owned: its topic shared, its payload a slice of `owner`.
    fn owned(&self, raw: RawDelivery<'a>) -> Result<WireDelivery, ProtocolError> {
        Ok(WireDelivery {
            message: raw.message,
            attempt: raw.attempt,
            published_us: raw.published_us,
            topic: self.topic_read()?.clone(),
            headers: raw.headers,
            payload: self.owner.slice_ref(raw.payload),
        })
    }

    fn finish<T>(self, op: T) -> Result<T, ProtocolError> {
        let extra = self.frame.len().saturating_sub(self.pos);
        if extra > 0 {
            return Err(ProtocolError::TrailingBytes { op: self.op, extra });
        }
        Ok(op)
    }
}

/// A delivery as read in place, its topic in the reader's `last_topic`.
struct RawDelivery<'a> {
    message: u64,
    attempt: u32,
    published_us: u64,
    headers: Vec<(String, String)>,
    payload: &'a [u8],
}

/// One delivery of a frame, as [`decode_delivers`] hands it over: its topic shared with the
/// deliveries before it, its payload in place in the frame.
pub(crate) struct DeliveryRef<'r> {
    pub message: u64,
    pub attempt: u32,
    pub published_us: u64,
    pub topic: &'r Arc<str>,
    pub headers: Vec<(String, String)>,
    pub payload: &'r [u8],
}

/// A PUBLISH decoded by [`decode_publish`]: the fields of [`Op::Publish`], with a shared topic.
#[derive(Debug)]
pub(crate) struct Publish<'a> {
    pub request: u64,
    pub headers: Vec<(String, String)>,
    /// In place in the frame.
    pub payload: &'a [u8],
}

/// Decodes `frame` if it is a PUBLISH, as [`decode`] would, but with its topic shared with
/// `last_topic` when they are equal (and remembered there): a burst of publishes on one topic
/// allocates it once, and takes no reference count per message. Returns the publish and its
/// topic; `None` for any other op. `frame` lies in `owner`, and the payload is a zero-copy
/// slice of it: a batch of frames read together is decoded with no handle per frame.
pub(crate) fn decode_publish<'f, 't>(
    frame: &'f [u8],
    owner: &'f Bytes,
    last_topic: &'t mut Option<Arc<str>>,
) -> Option<Result<(Publish<'f>, &'t Arc<str>), ProtocolError>> {
    let short = match frame.first() {
        Some(&code::PUB) => true,
        Some(&code::PUBLISH) => false,
        _ => return None,
    };
    let mut r = Reader::within(frame, owner, if short { "PUB" } else { "PUBLISH" });
    r.last_topic = last_topic.take();
    let publish = if short {
        r.short_publish()
    } else {
        r.publish()
    };
    *last_topic = r.last_topic.take();
    let (op, extra) = (r.op, r.remaining());
    Some(match publish {
        Ok(_) if extra > 0 => Err(ProtocolError::TrailingBytes { op, extra }),
        Ok(p) => match last_topic.as_ref() {
            Some(topic) => Ok((p, topic)),
            None => Err(ProtocolError::Truncated { op, field: "topic" }),
        },
        Err(err) => Err(err),
    })
}

/// Decodes one frame (op byte and fields). Never panics, whatever the input; byte blobs are
/// slices of `frame`, not copies.
///
/// # Errors
///
/// A [`ProtocolError`] naming the fault: empty frame, unknown op, a field cut short, trailing
/// bytes, invalid UTF-8 or an out-of-range value.
pub fn decode(frame: Bytes) -> Result<Op, ProtocolError> {
    let Some(&op) = frame.first() else {
        return Err(ProtocolError::Empty);
    };
    let name = match op {
        code::HELLO => "HELLO",
        code::WELCOME => "WELCOME",
        code::PUBLISH => "PUBLISH",
        code::PUB => "PUB",
        code::CONFIRM => "CONFIRM",
        code::SUBSCRIBE => "SUBSCRIBE",
        code::SUBSCRIBED => "SUBSCRIBED",
        code::UNSUBSCRIBE => "UNSUBSCRIBE",
        code::DELIVER => "DELIVER",
        code::ACK => "ACK",
        code::NACK => "NACK",
        code::PING => "PING",
        code::PONG => "PONG",
        code::STATS => "STATS",
        code::STATS_REPLY => "STATS_REPLY",
        code::ERROR => "ERROR",
        code::DELIVERS => "DELIVERS",
        code::ACKS => "ACKS",
        code::PACKED => "PACKED",
        code::ACKR => "ACKR",
        other => return Err(ProtocolError::UnknownOp(other)),
    };
    let mut r = Reader::new(&frame, name);
    let decoded = match op {
        code::HELLO => {
            let version = r.u16("version")?;
            let token = if r.flag("has_token")? {
                Some(r.string("token")?)
            } else {
                None
            };
            let client = r.string("client")?;
            Op::Hello {
                version,
                token,
                client,
            }
        }
        code::WELCOME => Op::Welcome {
            version: r.u16("version")?,
            server: r.string("server")?,
        },
        code::PUBLISH | code::PUB => {
            let p = if op == code::PUB {
                r.short_publish()?
            } else {
                r.publish()?
            };
            Op::Publish {
                request: p.request,
                topic: r.topic_read()?.to_string(),
                headers: p.headers,
                payload: frame.slice_ref(p.payload),
            }
        }
        code::CONFIRM => Op::Confirm {
            request: r.u64("request")?,
            message: r.u64("message")?,
        },
        code::SUBSCRIBE => Op::Subscribe {
            sub: r.u64("sub")?,
            pattern: r.string("pattern")?,
            options: r.options()?,
        },
        code::SUBSCRIBED => Op::Subscribed { sub: r.u64("sub")? },
        code::UNSUBSCRIBE => Op::Unsubscribe { sub: r.u64("sub")? },
        code::DELIVER => Op::Deliver {
            sub: r.u64("sub")?,
            delivery: r.delivery()?,
        },
        code::DELIVERS => {
            let sub = r.u64("sub")?;
            let count = r.count("count")?;
            // A delivery takes at least 38 bytes: never reserve more than the frame can hold.
            let mut messages = Vec::with_capacity(count.min(r.remaining() / 38));
            for _ in 0..count {
                messages.push(r.delivery()?);
            }
            Op::Delivers { sub, messages }
        }
        code::PACKED => {
            let sub = r.u64("sub")?;
            let count = r.count("count")?;
            // A packed delivery takes at least 5 bytes: never reserve more than the frame holds.
            let mut messages = Vec::with_capacity(count.min(r.remaining() / 5));
            let mut prev = (0, 0);
            for _ in 0..count {
                messages.push(r.packed(&mut prev)?);
            }
            Op::Packed { sub, messages }
        }
        code::ACKS => {
            let sub = r.u64("sub")?;
            let count = r.count("count")?;
            let mut messages = Vec::with_capacity(count.min(r.remaining() / 8));
            for _ in 0..count {
                messages.push(r.u64("message")?);
            }
            Op::Acks { sub, messages }
        }
        code::ACKR => {
            let sub = r.u64("sub")?;
            let count = r.count("count")?;
            let mut ranges = Vec::with_capacity(count.min(r.remaining() / 12));
            for _ in 0..count {
                let first = r.u64("first")?;
                let n = r.count("range_count")?;
                ranges.push((first, u32::try_from(n).unwrap_or(u32::MAX)));
            }
            Op::AckRanges { sub, ranges }
        }
        code::ACK => Op::Ack {
            sub: r.u64("sub")?,
            message: r.u64("message")?,
        },
        code::NACK => Op::Nack {
            sub: r.u64("sub")?,
            message: r.u64("message")?,
            requeue: r.flag("requeue")?,
        },
        code::PING => Op::Ping {
            nonce: r.u64("nonce")?,
        },
        code::PONG => Op::Pong {
            nonce: r.u64("nonce")?,
        },
        code::STATS => Op::Stats {
            request: r.u64("request")?,
        },
        code::STATS_REPLY => {
            let request = r.u64("request")?;
            let n = usize::try_from(r.u32("row_count")?).unwrap_or(usize::MAX);
            let rows = r.pairs(n, "row")?;
            Op::StatsReply { request, rows }
        }
        _ => {
            let request = r.u64("request")?;
            let code = ErrorCode::from_u16(r.u16("code")?);
            let text = r.string("text")?;
            Op::Error {
                request,
                code,
                text,
            }
        }
    };
    r.finish(decoded)
}

/// Decodes `frame` if it is a DELIVERS or a PACKED, as [`decode`] would, but hands each delivery
/// to `each` (with the subscription) as it is read, in place: the client turns deliveries into
/// messages with no vector of them in between, and no reference count taken for a topic or a
/// payload it copies. Returns the subscription; `None` for any other op. On an error, `each`
/// may have had some of the frame's deliveries.
pub(crate) fn decode_delivers(
    frame: &Bytes,
    mut each: impl FnMut(u64, DeliveryRef<'_>),
) -> Option<Result<u64, ProtocolError>> {
    let packed = match frame.first() {
        Some(&code::DELIVERS) => false,
        Some(&code::PACKED) => true,
        _ => return None,
    };
    let mut r = Reader::new(frame, if packed { "PACKED" } else { "DELIVERS" });
    let mut read = || {
        let sub = r.u64("sub")?;
        let count = r.count("count")?;
        let mut prev = (0, 0);
        for _ in 0..count {
            let raw = if packed {
                r.packed_raw(&mut prev)?
            } else {
                r.delivery_raw()?
            };
            let topic = r.topic_read()?;
            let delivery = DeliveryRef {
                message: raw.message,
                attempt: raw.attempt,
                published_us: raw.published_us,
                topic,
                headers: raw.headers,
                payload: raw.payload,
            };
            each(sub, delivery);
        }
        Ok(sub)
    };
    let decoded = read();
    Some(decoded.and_then(|decoded| r.finish(decoded)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One header, or none.
    fn sample_headers(on: bool) -> Vec<(String, String)> {
        if on {
            vec![("k".into(), "v".into())]
        } else {
            Vec::new()
        }
    }

    pub(super) fn samples() -> Vec<Op> {
        let opts = SubscribeOptions::group("workers")
            .manual_ack()
            .with_ack_wait(Duration::from_millis(1500))
            .with_max_attempts(3)
            .with_max_in_flight(10)
            .with_backoff(Backoff::fixed(Duration::from_millis(20)))
            .with_dead_letter_topic("dead.jobs");
        vec![
            Op::Hello {
                version: VERSION,
                token: Some("s3cret".into()),
                client: "test".into(),
            },
            Op::Hello {
                version: 9,
                token: None,
                client: String::new(),
            },
            Op::Welcome {
                version: VERSION,
                server: "srv".into(),
            },
            Op::Publish {
                request: 5,
                topic: "a.b".into(),
                headers: vec![("k".into(), "v".into()), ("é".into(), String::new())],
                payload: Bytes::from_static(b"hello"),
            },
            Op::Publish {
                request: 6,
                topic: "x".repeat(300),
                headers: vec![("k".into(), "v".into())],
                payload: Bytes::from_static(b"on a topic too long for a PUB"),
            },
            Op::Confirm {
                request: 5,
                message: 77,
            },
            Op::Subscribe {
                sub: 3,
                pattern: "a.>".into(),
                options: opts,
            },
            Op::Subscribe {
                sub: 4,
                pattern: "x".into(),
                options: SubscribeOptions::default(),
            },
            Op::Subscribed { sub: 3 },
            Op::Unsubscribe { sub: 3 },
            Op::Deliver {
                sub: 3,
                delivery: WireDelivery {
                    message: 77,
                    attempt: 2,
                    published_us: 1_700_000_000_000_000,
                    topic: "a.b".into(),
                    headers: vec![("k".into(), "v".into())],
                    payload: Bytes::from_static(b"\0\x01\x02"),
                },
            },
            Op::Delivers {
                sub: 3,
                messages: vec![
                    WireDelivery {
                        message: 78,
                        attempt: 1,
                        published_us: 1_700_000_000_000_001,
                        topic: "a.b".into(),
                        headers: Vec::new(),
                        payload: Bytes::from_static(b"first"),
                    },
                    WireDelivery {
                        message: 79,
                        attempt: 3,
                        published_us: 1_700_000_000_000_002,
                        topic: "a.c".into(),
                        headers: vec![("k".into(), "v".into())],
                        payload: Bytes::new(),
                    },
                ],
            },
            Op::Packed {
                sub: 3,
                messages: [
                    // Every field written: an id, attempt and time not like the previous.
                    (80, 2, 9, "a.b", true, &b"one"[..]),
                    // Every field left out but the payload.
                    (81, 1, 9, "a.b", false, b"two"),
                    // A new topic, a later attempt, an id further on.
                    (90, 4, 9, "a.c", false, b""),
                    // Back to the first topic, a new time.
                    (91, 1, 12, "a.b", true, b"four"),
                    // The largest id, then a wrap that must be written out.
                    (u64::MAX, 1, 12, "a.b", false, b"five"),
                    (0, 1, 12, "a.b", false, b"six"),
                ]
                .into_iter()
                .map(
                    |(message, attempt, published_us, topic, headers, payload)| WireDelivery {
                        message,
                        attempt,
                        published_us,
                        topic: topic.into(),
                        headers: sample_headers(headers),
                        payload: Bytes::from_static(payload),
                    },
                )
                .collect(),
            },
            Op::Acks {
                sub: 3,
                messages: vec![77, 78, u64::MAX],
            },
            Op::AckRanges {
                sub: 3,
                ranges: vec![(77, 2), (90, 1), (u64::MAX - 1, u32::MAX)],
            },
            Op::Ack {
                sub: 3,
                message: 77,
            },
            Op::Nack {
                sub: 3,
                message: 77,
                requeue: true,
            },
            Op::Ping { nonce: u64::MAX },
            Op::Pong { nonce: 0 },
            Op::Stats { request: 9 },
            Op::StatsReply {
                request: 9,
                rows: vec![("connections".into(), "2".into())],
            },
            Op::Error {
                request: 0,
                code: ErrorCode::SlowConsumer,
                text: "outbound queue above 1024 bytes".into(),
            },
            Op::Error {
                request: 1,
                code: ErrorCode::Other(999),
                text: String::new(),
            },
        ]
    }

    #[test]
    fn every_op_round_trips() {
        for op in samples() {
            let bytes = op.to_bytes();
            assert_eq!(decode(bytes), Ok(op.clone()), "{}", op.name());
        }
    }

    #[test]
    fn every_truncation_errors() {
        for op in samples() {
            let bytes = op.to_bytes();
            for cut in 0..bytes.len() {
                assert!(
                    decode(bytes.slice(..cut)).is_err(),
                    "{} cut at {cut}",
                    op.name()
                );
            }
        }
    }

    #[test]
    fn decode_delivers_agrees_with_decode_on_every_op_and_cut() {
        for op in samples() {
            let bytes = op.to_bytes();
            let mut frames: Vec<Bytes> = (0..bytes.len()).map(|cut| bytes.slice(..cut)).collect();
            frames.push(bytes.clone());
            let mut extra = BytesMut::from(&bytes[..]);
            extra.put_u8(0);
            frames.push(extra.freeze());
            for frame in frames {
                let mut got = Vec::new();
                let fast = decode_delivers(&frame, |sub, d| {
                    got.push((
                        sub,
                        WireDelivery {
                            message: d.message,
                            attempt: d.attempt,
                            published_us: d.published_us,
                            topic: d.topic.clone(),
                            headers: d.headers,
                            payload: frame.slice_ref(d.payload),
                        },
                    ));
                });
                match decode(frame.clone()) {
                    Ok(Op::Delivers { sub, messages } | Op::Packed { sub, messages }) => {
                        let expected: Vec<_> = messages.into_iter().map(|d| (sub, d)).collect();
                        assert_eq!(fast, Some(Ok(sub)));
                        assert_eq!(got, expected);
                    }
                    Err(err) if matches!(frame.first(), Some(&code::DELIVERS | &code::PACKED)) => {
                        assert_eq!(fast, Some(Err(err)), "{} bytes", frame.len());
                    }
                    _ => assert!(fast.is_none(), "{}: {} bytes", op.name(), frame.len()),
                }
            }
        }
    }

    #[test]
    fn a_packed_run_of_one_topic_costs_a_flag_and_the_payload_per_message() {
        let run = |n: u64| Op::Packed {
            sub: 1,
            messages: (1..=n)
                .map(|id| WireDelivery {
                    message: 1_000 + id,
                    attempt: 1,
                    published_us: 1_700_000_000_000_000,
                    topic: "bench.t0".into(),
                    headers: Vec::new(),
                    payload: Bytes::from(vec![id as u8; 16]),
                })
                .collect(),
        };
        let (one, hundred) = (run(1).to_bytes(), run(100).to_bytes());
        // The first delivery carries its id, time and topic; each further one a flag byte,
        // the payload's length and the payload.
        assert_eq!(hundred.len() - one.len(), 99 * (1 + 4 + 16));
        let delivers = match run(100) {
            Op::Packed { sub, messages } => Op::Delivers { sub, messages },
            _ => unreachable!(),
        };
        assert!(hundred.len() * 2 < delivers.to_bytes().len());
        assert_eq!(decode(hundred), Ok(run(100)));
    }

    #[test]
    fn packed_flags_that_cannot_hold_are_errors() {
        let frame = |records: &[&[u8]]| {
            let mut buf = BytesMut::new();
            let at = begin_packed(&mut buf, 1);
            end_delivers(&mut buf, at, records.len());
            for r in records {
                buf.put_slice(r);
            }
            buf.freeze()
        };
        let empty_payload = [0u8, 0, 0, 0];
        let first = |flags: u8| {
            let mut r = vec![flags];
            if flags & packed::NEXT_ID == 0 {
                r.extend_from_slice(&u64::MAX.to_be_bytes());
            }
            if flags & packed::SAME_TOPIC == 0 {
                r.extend_from_slice(&[0, 0, 0, 1, b't']);
            }
            r.extend_from_slice(&empty_payload);
            r
        };
        let both = packed::FIRST_ATTEMPT | packed::SAME_TIME;
        // A well-formed first delivery decodes.
        assert!(decode(frame(&[&first(both)])).is_ok());
        // No previous topic to repeat.
        let invalid = |value| {
            Err(ProtocolError::InvalidValue {
                op: "PACKED",
                field: "flags",
                value,
            })
        };
        let flags = both | packed::SAME_TOPIC;
        assert_eq!(decode(frame(&[&first(flags)])), invalid(u64::from(flags)));
        // Reserved bits.
        let flags = both | 0x20;
        assert_eq!(decode(frame(&[&first(flags)])), invalid(u64::from(flags)));
        // The id after u64::MAX.
        let flags = both | packed::NEXT_ID | packed::SAME_TOPIC;
        assert_eq!(
            decode(frame(&[&first(both), &first(flags)])),
            invalid(u64::from(flags))
        );
    }

    #[test]
    fn a_publish_goes_short_unless_its_topic_is_too_long_for_it() {
        let publish = |request, topic: &str, headers: bool| Op::Publish {
            request,
            topic: topic.into(),
            headers: sample_headers(headers),
            payload: Bytes::from_static(&[7; 16]),
        };
        let long = "t".repeat(PUB_TOPIC_MAX + 1);
        for (op, short, unconfirmed) in [
            (publish(0, "bench.t0", false), true, true),
            (publish(9, "bench.t0", true), true, false),
            (publish(0, &long, false), false, true),
            (publish(9, &long, true), false, false),
        ] {
            let frame = op.to_bytes();
            let code = if short { code::PUB } else { code::PUBLISH };
            assert_eq!(frame[0], code, "{op:?}");
            assert_eq!(is_unconfirmed_publish(&frame), unconfirmed);
            assert_eq!(decode(frame.clone()), Ok(op.clone()));
            let Op::Publish {
                request,
                topic,
                headers,
                payload,
            } = op
            else {
                unreachable!()
            };
            let mut last = None;
            let (fast, fast_topic) = decode_publish(&frame, &frame, &mut last).unwrap().unwrap();
            assert_eq!(
                (fast.request, &**fast_topic, fast.headers, fast.payload),
                (request, topic.as_str(), headers, &payload[..])
            );
        }
        // Op byte, flags, topic length and topic, payload length and payload: 16 bytes fewer
        // than a PUBLISH of the same message (request, 32-bit topic length, header count).
        let short = publish(0, "bench.t0", false).to_bytes();
        assert_eq!(short.len(), 1 + 1 + 1 + 8 + 4 + 16);
        let mut flags = BytesMut::from(&short[..]);
        flags[1] = 0x04;
        assert_eq!(
            decode(flags.freeze()),
            Err(ProtocolError::InvalidValue {
                op: "PUB",
                field: "flags",
                value: 4
            })
        );
    }

    #[test]
    fn the_in_place_decoders_agree_with_decode_on_mutated_frames() {
        // A fixed xorshift sequence: deterministic, and many mutations of every op's frame.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for op in samples() {
            let bytes = op.to_bytes();
            for _ in 0..300 {
                let mut frame = BytesMut::from(&bytes[..]);
                for _ in 0..1 + next() % 4 {
                    let at = (next() % frame.len() as u64) as usize;
                    frame[at] = next() as u8;
                }
                let frame = frame.freeze();
                let whole = decode(frame.clone());
                let mut got = Vec::new();
                if let Some(fast) = decode_delivers(&frame, |sub, d| {
                    got.push((sub, d.message, d.topic.to_string(), d.payload.to_vec()));
                }) {
                    match &whole {
                        Ok(Op::Delivers { sub, messages } | Op::Packed { sub, messages }) => {
                            assert_eq!(fast, Ok(*sub));
                            let expected: Vec<_> = messages
                                .iter()
                                .map(|d| (*sub, d.message, d.topic.to_string(), d.payload.to_vec()))
                                .collect();
                            assert_eq!(got, expected);
                        }
                        _ => assert!(fast.is_err(), "{frame:?}"),
                    }
                }
                let mut last = None;
                if let Some(fast) = decode_publish(&frame, &frame, &mut last) {
                    match &whole {
                        Ok(Op::Publish { topic, payload, .. }) => {
                            let (p, t) = fast.expect("decode took it");
                            assert_eq!((&**t, p.payload), (topic.as_str(), &payload[..]));
                        }
                        _ => assert!(fast.is_err(), "{frame:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn an_empty_ack_range_is_an_error() {
        let mut buf = BytesMut::new();
        encode(
            &Op::AckRanges {
                sub: 1,
                ranges: vec![(7, 0)],
            },
            &mut buf,
        );
        assert_eq!(
            decode(buf.freeze()),
            Err(ProtocolError::InvalidValue {
                op: "ACKR",
                field: "range_count",
                value: 0
            })
        );
    }

    #[test]
    fn trailing_bytes_and_unknown_ops_are_errors() {
        let mut buf = BytesMut::new();
        encode(&Op::Ping { nonce: 1 }, &mut buf);
        buf.put_u8(0);
        assert_eq!(
            decode(buf.freeze()),
            Err(ProtocolError::TrailingBytes {
                op: "PING",
                extra: 1
            })
        );
        assert_eq!(
            decode(Bytes::from_static(&[200])),
            Err(ProtocolError::UnknownOp(200))
        );
        assert_eq!(decode(Bytes::new()), Err(ProtocolError::Empty));
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        let mut buf = BytesMut::new();
        buf.put_u8(code::WELCOME);
        buf.put_u16(1);
        buf.put_u32(2);
        buf.put_slice(&[0xff, 0xfe]);
        assert!(matches!(
            decode(buf.freeze()),
            Err(ProtocolError::InvalidUtf8 { .. })
        ));
    }

    #[test]
    fn payload_is_sliced_without_copy() {
        let op = Op::Publish {
            request: 0,
            topic: "t".into(),
            headers: Vec::new(),
            payload: Bytes::from(vec![7u8; 64]),
        };
        let frame = op.to_bytes();
        let range = frame.as_ptr_range();
        let Ok(Op::Publish { payload, .. }) = decode(frame.clone()) else {
            panic!("decode failed");
        };
        assert!(range.contains(&payload.as_ptr()));
    }
}
