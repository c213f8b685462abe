//! mixbus: a message bus built on a hybrid of threads and events.
//!
//! This facade re-exports every layer, bottom first, so that one dependency reaches them all:
//!
//! | module | crate | what it is |
//! |---|---|---|
//! | [`eventq`] | `mixbus-eventq` | `Poll`, `Registry`, `Token`, `Event`, `Waker`, non-blocking TCP |
//! | [`pump`] | `mixbus-pump` | one thread running posted tasks, timers and I/O readiness |
//! | [`task`] | `mixbus-task` | accepting, connecting, sending, receiving and closing tasks |
//! | [`queue`] | `mixbus-queue` | `QueueBroker` and `MessageQueue`: framed messages over TCP |
//! | [`bus`] | `mixbus-bus` | topics, publish/subscribe, consumer groups, ack/nack, stats |
#![forbid(unsafe_code)]

pub use mixbus_bus as bus;
pub use mixbus_eventq as eventq;
pub use mixbus_pump as pump;
pub use mixbus_queue as queue;
pub use mixbus_task as task;

/// The README's code blocks, compiled and run as doc tests so that they cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
