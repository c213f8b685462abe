//! Readiness event queue for mixbus: one [`Poll`] per loop thread, cloneable [`Registry`] handles.
//!
//! A [`Poll`] waits until registered sources are ready to read or write, and reports each as an
//! [`Event`] carrying the [`Token`] chosen at registration. The [`Registry`] is `Send + Sync` and
//! registers sources from any thread, also while another thread is blocked in [`Poll::poll`]. A
//! [`Waker`] ends a blocked poll from any thread; many wakes before one poll cost one wake-up.
//!
//! Registration is owning: [`Registry::register`] moves the source into a [`Registration`] that
//! deregisters it on drop, so a source is never closed while the poller still watches it, and no
//! user ever writes `unsafe`. Readiness can be spurious: treat `WouldBlock` as "wait again".
//! Everything above readiness (tasks, timers, framing) belongs to the layers above.
//!
//! # Examples
//! An echo between a listener and a stream, driven by one poll loop:
//! ```
//! use std::io::{Read, Write};
//! use std::time::Duration;
//! use mixbus_eventq::net::{TcpListener, TcpStream};
//! use mixbus_eventq::{Events, Interest, Poll, Token};
//!
//! let mut poll = Poll::new()?;
//! let registry = poll.registry();
//! let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
//! let addr = listener.local_addr().unwrap();
//! let listener = registry.register(listener, Token(0), Interest::READABLE)?;
//! let client = registry.register(TcpStream::connect(addr)?, Token(1), Interest::BOTH)?;
//!
//! let mut server = None;
//! let (mut sent, mut echoed) = (false, Vec::new());
//! let mut events = Events::with_capacity(64);
//! while echoed.len() < 5 {
//!     poll.poll(&mut events, Some(Duration::from_secs(5)))?;
//!     for event in &events {
//!         match event.token() {
//!             Token(0) => {
//!                 while let Ok((stream, _)) = listener.accept() {
//!                     server = Some(registry.register(stream, Token(2), Interest::READABLE)?);
//!                 }
//!             }
//!             Token(1) => {
//!                 if event.is_writable() && !sent {
//!                     (&*client).write_all(b"hello").unwrap();
//!                     sent = true;
//!                 }
//!                 let mut buf = [0; 64];
//!                 while let Ok(n @ 1..) = (&*client).read(&mut buf) {
//!                     echoed.extend_from_slice(&buf[..n]);
//!                 }
//!             }
//!             Token(2) => {
//!                 let conn = server.as_ref().unwrap();
//!                 let mut buf = [0; 64];
//!                 while let Ok(n @ 1..) = (&**conn).read(&mut buf) {
//!                     (&**conn).write_all(&buf[..n]).unwrap();
//!                 }
//!             }
//!             _ => unreachable!(),
//!         }
//!     }
//! }
//! assert_eq!(echoed, b"hello");
//! # Ok::<(), mixbus_eventq::Error>(())
//! ```
mod error;
#[cfg(target_os = "linux")]
mod linux;
mod poll;
mod sys;

pub mod net;

/// The buffer [`net::TcpStream::read_buf`] appends to (the `bytes` crate's).
pub use bytes::BytesMut;
pub use error::{Error, Result};
pub use poll::{Event, Events, Interest, Poll, Registry, Token, Waker};
pub use sys::{Registration, Source};
