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
