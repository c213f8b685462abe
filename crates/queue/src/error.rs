//! The error types of the queue layer.

use std::net::SocketAddr;

/// What went wrong in the queue broker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Binding failed (for example: the address is already in use).
    #[error("bind to {addr} failed")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the event queue reported.
        #[source]
        source: crate::task::pump::eventq::Error,
    },
    /// `unbind` of an address this broker does not listen on.
    #[error("not bound to {0}")]
    NotBound(SocketAddr),
    /// The pump refused (it has shut down) or a registration failed.
    #[error(transparent)]
    Pump(#[from] crate::task::pump::Error),
    /// Setting up a connection failed.
    #[error("setting up the connection with {peer} failed")]
    Setup {
        /// The peer.
        peer: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A blocking connect was refused.
    #[error(transparent)]
    Refused(#[from] crate::task::ConnectError),
    /// A blocking connect got no answer in time.
    #[error("no answer from the connect within {0:?}")]
    ConnectTimeout(std::time::Duration),
}

/// The result type of the queue layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error of [`crate::MessageQueue::send`]; the message is always handed back.
pub use crate::task::PushError as SendError;
