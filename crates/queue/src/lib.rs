//! Queue broker and message queue for mixbus: framed full-duplex messaging over TCP.
//!
//! This layer is being built; see BRIEF section 4.
#![forbid(unsafe_code)]

pub use mixbus_task as task;
