//! Queue broker and message queue for mixbus: framed full-duplex messaging over TCP.
//!
//! A [`QueueBroker`] binds addresses and keeps accepting on them (`accepted(queue)` for each
//! connection), and connects to others (exactly one of `connected(queue)` or `refused(reason)`,
//! retrying while nothing listens yet, up to the connect timeout). Each connection is a
//! [`MessageQueue`]: full duplex, messages whole, in order, exactly once. `send` never blocks; the
//! outbound queue is bounded in bytes and hands the message back when full (backpressure, not
//! loss). Listeners ([`QueueListener`]) run on the pump and must return quickly; threaded code uses
//! the blocking face, [`BlockingQueue`], with `send_timeout` and `recv_timeout`.
//!
//! On the wire every message is one frame: a 4-byte big-endian length, then the payload. A larger
//! `send` than the maximum frame size is refused; a peer announcing a larger frame is disconnected
//! with a protocol error, and the broker keeps serving everyone else.
//!
//! # Examples
//! An event-driven server and a threaded client:
//! ```
//! use std::time::Duration;
//! use mixbus_queue::{MessageQueue, QueueBroker, QueueConfig, QueueListener};
//! use mixbus_queue::task::{Bytes, pump::EventPump};
//!
//! struct Upper;
//! impl QueueListener for Upper {
//!     fn received(&mut self, queue: &MessageQueue, msg: Bytes) {
//!         let _ = queue.send(msg.to_ascii_uppercase());
//!     }
//! }
//!
//! let pump = EventPump::new()?;
//! let broker = QueueBroker::new(pump.handle(), QueueConfig::default());
//! let addr = broker.bind("127.0.0.1:0".parse().unwrap(), |q: MessageQueue| {
//!     q.set_listener(Upper).unwrap();
//! })?;
//! let client = broker.connect_blocking(addr)?.into_blocking()?;
//! client.send_timeout("hello", Duration::from_secs(5)).unwrap();
//! assert_eq!(client.recv_timeout(Duration::from_secs(5)).unwrap(), "HELLO");
//! client.close();
//! assert!(client.wait_closed(Duration::from_secs(5)).is_some());
//! # Ok::<(), mixbus_queue::Error>(())
//! ```
#![forbid(unsafe_code)]

mod blocking;
mod broker;
mod config;
mod error;
mod queue;

pub use mixbus_task as task;

pub use blocking::{BlockingQueue, RecvTimeoutError, SendTimeoutError};
pub use broker::{AcceptListener, ConnectListener, QueueBroker};
pub use config::QueueConfig;
pub use error::{Error, Result, SendError};
pub use queue::{CloseInfo, CloseReason, MessageQueue, QueueListener};
