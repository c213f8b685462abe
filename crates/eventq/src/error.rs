//! The error type of the event queue.

use std::io;
use std::net::SocketAddr;

/// What went wrong in the event queue.
///
/// Every variant keeps the operating system's [`io::Error`] as its source, so `source()` reaches it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The poller could not be created.
    #[error("could not create the poller")]
    NewPoll(#[source] io::Error),
    /// Waiting for events failed.
    #[error("waiting for events failed")]
    Wait(#[source] io::Error),
    /// Registering, re-registering or deregistering a source failed.
    #[error("could not {op} {token:?} with the poller")]
    Register {
        /// What we were doing: `register`, `reregister` or `deregister`.
        op: &'static str,
        /// The token of the source.
        token: crate::Token,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A waker could not wake the poller.
    #[error("could not wake the poller")]
    Wake(#[source] io::Error),
    /// Binding a listener failed (for example: the address is already in use).
    #[error("bind to {addr} failed")]
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Starting a connection failed before it was in progress.
    #[error("connect to {addr} failed")]
    Connect {
        /// The address we tried to reach.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Setting a socket option failed.
    #[error("could not set socket option {option}")]
    SocketOption {
        /// The option's name.
        option: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}

/// The result type of the event queue.
pub type Result<T, E = Error> = std::result::Result<T, E>;
