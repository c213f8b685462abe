//! The bus error type and its `Result` alias.

use crate::message::Message;

/// Everything that can go wrong when talking to a broker.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The broker was closed: no publish or subscribe is accepted any more.
    #[error("broker is closed")]
    Closed,
    /// A consumer group queue is at its limit; the message is handed back, nothing was delivered.
    #[error("queue {queue} is full ({capacity} messages)")]
    QueueFull {
        /// The queue that refused the message (the consumer group's queue name).
        queue: String,
        /// The queue's limit in messages.
        capacity: usize,
        /// The message that was refused, handed back to the caller.
        message: Box<Message>,
    },
    /// A topic name is not valid.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The refused topic.
        topic: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A subscription pattern is not valid.
    #[error("invalid pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The refused pattern.
        pattern: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Subscription options that cannot work together.
    #[error("invalid subscribe options: {0}")]
    InvalidOptions(&'static str),
    /// A server was asked to listen on a non-loopback address without a token.
    #[error("listening on {addr} (not loopback) requires a token")]
    TokenRequired {
        /// The refused address.
        addr: std::net::SocketAddr,
    },
    /// The queue layer failed (bind, connect, set-up).
    #[error(transparent)]
    Queue(#[from] crate::queue::Error),
    /// The event pump could not start or has stopped.
    #[error(transparent)]
    Pump(#[from] crate::queue::task::pump::Error),
    /// The connection to the server is down and did not come back within the wait.
    #[error("disconnected from the server (waited {waited:?} for a reconnection)")]
    Disconnected {
        /// How long the call waited for the connection.
        waited: std::time::Duration,
    },
    /// The call would wait for the connection from the connection's own I/O thread (an
    /// [inline](crate::Handler::inline) handler), where nothing could come.
    #[error(
        "{what} would wait on the connection's own I/O thread (an inline handler must not block)"
    )]
    WouldBlock {
        /// What would have waited.
        what: &'static str,
    },
    /// The server did not answer within the wait.
    #[error("no answer from the server to {what} within {after:?}")]
    Timeout {
        /// The request that went unanswered.
        what: &'static str,
        /// How long it waited.
        after: std::time::Duration,
    },
    /// The server refused a request or the handshake.
    #[error("server refused: {code}: {text}")]
    Refused {
        /// The server's error code.
        code: crate::protocol::ErrorCode,
        /// The server's explanation.
        text: String,
    },
    /// The server sent something this client cannot understand.
    #[error(transparent)]
    Protocol(#[from] crate::protocol::ProtocolError),
    /// A dispatch or timer thread could not be started.
    #[error("could not spawn thread {name}")]
    Spawn {
        /// The name of the thread.
        name: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// The bus result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
