//! Message bus for mixbus: topics, publish/subscribe, consumer groups, ack/nack, listeners and stats.
//!
//! The [`Broker`] trait is the one contract of this layer: [`publish`](Broker::publish) a
//! [`Message`] on a dot-separated topic, [`subscribe`](Broker::subscribe) a [`Handler`] to a topic
//! or pattern (`*` is one token, `>` the rest), and [`ack`](Broker::ack) or
//! [`nack`](Broker::nack) deliveries. A subscription is either broadcast (every subscription gets
//! a copy, sharing one payload) or a member of a consumer group (each message goes to exactly one
//! member; the group keeps messages while it has no member, up to a limit past which `publish`
//! fails). Deliveries are acknowledged automatically when the handler returns `Ok`, or manually;
//! failed, nacked or un-acked deliveries come again with a raised attempt count after a back-off,
//! and go to a dead-letter topic after the maximum attempts. [`close`](Broker::close) stops
//! publishing, lets in-flight work finish within a timeout and reports what was left.
//!
//! [`InMemoryBroker`] is the first backend: threads in one process, handlers on a pool of dispatch
//! threads. [`BusServer`] serves an in-memory bus over TCP and [`RemoteBroker`] is the second
//! backend, the same trait over a connection to it: handlers run on the client, the server's
//! delivery rules (groups, retention, ack wait, re-delivery, dead letters) apply unchanged, the
//! client reconnects with back-off and re-subscribes, and a consumer that falls too far behind or
//! disappears has its un-acked group messages handed to another member. The versioned wire
//! protocol is in [`protocol`] (and `docs/PROTOCOL.md`); its decoder never panics. A Redis backend
//! comes later. [`BrokerListener`] hooks observe every event; [`StatsCollector`] is a listener
//! counting them.
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::time::Duration;
//! use mixbus_bus::{Broker, Handler, InMemoryBroker, Message, StatsCollector, SubscribeOptions};
//!
//! let broker = InMemoryBroker::new()?;
//! let stats = Arc::new(StatsCollector::new());
//! broker.add_listener(stats.clone());
//!
//! // Two workers share the jobs; an auditor sees every one.
//! let done = Arc::new(AtomicUsize::new(0));
//! let mut subs = Vec::new();
//! for _ in 0..2 {
//!     let done = done.clone();
//!     subs.push(broker.subscribe("jobs.>", SubscribeOptions::group("workers"), Handler::new(move |_| {
//!         done.fetch_add(1, Ordering::SeqCst);
//!         Ok(())
//!     }))?);
//! }
//! subs.push(broker.subscribe("jobs.*", SubscribeOptions::default(), Handler::new(|msg| {
//!     assert!(msg.topic().starts_with("jobs."));
//!     Ok(())
//! }))?);
//!
//! for i in 0..10 {
//!     broker.publish(Message::new("jobs.resize", format!("image {i}")).with_header("source", "doc"))?;
//! }
//! let report = broker.close(Duration::from_secs(5));
//! assert_eq!(done.load(Ordering::SeqCst), 10);
//! assert_eq!(report.delivered, 20);
//! assert_eq!(stats.snapshot().total.processed, 20);
//! # Ok::<(), mixbus_bus::Error>(())
//! ```
#![forbid(unsafe_code)]

mod broker;
mod error;
mod idhash;
mod listener;
mod memory;
mod message;
mod options;
pub mod protocol;
mod remote;
mod server;
mod stats;
mod topic;

pub use mixbus_queue as queue;

/// The shared byte buffer used for payloads, re-exported so users need no `bytes` dependency.
pub use bytes::Bytes;

pub use broker::{
    Broker, CloseReport, Handler, HandlerError, HandlerResult, ListenerId, Subscription,
};
pub use error::{Error, Result};
pub use listener::{BrokerListener, DropReason, SubscriptionInfo};
pub use memory::{InMemoryBroker, InMemoryConfig};
pub use message::{DeliveryId, Message, MessageId, SubscriptionId};
pub use options::{AckMode, Backoff, DeliveryMode, SubscribeOptions};
pub use remote::{RemoteBroker, RemoteConfig};
pub use server::{BusServer, ServerConfig, ServerStats};
pub use stats::{QueueStats, StatsCollector, StatsSnapshot, TopicStats};
pub use topic::{MAX_TOPIC_LEN, Pattern, validate_topic};
