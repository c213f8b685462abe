//! Task events for mixbus: accepting, connecting, sending, receiving and closing, and the codec.
//!
//! A [`TaskEvent`] is a named unit of work run by the event pump (`mixbus-pump`): its `run`
//! returns what happens next (done, re-post now, re-post after a delay, or wait until a source is
//! readable or writable), and it posts and re-posts itself through the pump. This crate holds the
//! specializations the message queue is built from, each usable on its own:
//!
//! | task | what it does |
//! |---|---|
//! | [`AcceptTask`] | accepts every pending connection up to the budget, then waits again; backs off when out of descriptors |
//! | [`ConnectTask`] | non-blocking connect, retried with back-off while nothing listens, then connected or refused with the reason |
//! | [`SendTask`] | writes frames queued in its [`Outbox`] with vectored writes, resumes partial writes, reports each message sent, fails a peer that stalls |
//! | [`ReceiveTask`] | reads large chunks, decodes every whole frame, delivers them in order, enforces the maximum frame size |
//! | [`CloseTask`] | flushes what is queued up to a linger time, shuts the socket down, notifies once |
//!
//! Frames are a 4-byte big-endian length, then the payload:
//!
//! ```text
//! +--------+--------+--------+--------+----------------------+
//! |        length (u32, big-endian)   |  payload (length B)  |
//! +--------+--------+--------+--------+----------------------+
//! ```
//!
//! # Examples
//! A connect that waits for a listener that is not there yet, then a frame each way:
//! ```
//! use std::time::Duration;
//! use mixbus_task::{ConnectOptions, ConnectTask, TaskEvent};
//! use mixbus_task::pump::EventPump;
//!
//! let pump = EventPump::new()?;
//! let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
//! let (tx, rx) = flume::bounded(1);
//! let options = ConnectOptions::default().with_connect_timeout(Duration::from_secs(5));
//! ConnectTask::new(port, options, move |result, _cx| {
//!     tx.send(result.is_ok()).unwrap();
//! }).post(&pump).unwrap();
//! // The port starts listening only now; the connect retries until it does.
//! let listener = std::net::TcpListener::bind(port).unwrap();
//! assert!(rx.recv().unwrap());
//! drop(listener);
//! # Ok::<(), mixbus_task::pump::Error>(())
//! ```
#![forbid(unsafe_code)]

mod accept;
mod close;
mod codec;
mod connect;
mod error;
mod event;
mod receive;
mod send;

pub use mixbus_pump as pump;

pub use accept::AcceptTask;
pub use bytes::{Bytes, BytesMut};
pub use close::CloseTask;
pub use codec::{
    DEFAULT_MAX_FRAME_LEN, FrameDecoder, Frames, HEADER_LEN, check_len, encode, encode_header,
};
pub use connect::{ConnectError, ConnectOptions, ConnectTask};
pub use error::{Error, FrameError, Result};
pub use event::TaskEvent;
pub use receive::{Flow, HOLD_RECHECK, READ_CHUNK, ReceiveEvents, ReceiveOutcome, ReceiveTask};
pub use send::{MAX_PARTS, Outbox, PushError, SendEvents, SendOptions, SendOutcome, SendTask};
