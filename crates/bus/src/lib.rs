//! Message bus for mixbus: topics, publish/subscribe, consumer groups, ack/nack, listeners and stats.
//!
//! This layer is being built; see BRIEF section 5.
#![forbid(unsafe_code)]

pub use mixbus_queue as queue;
