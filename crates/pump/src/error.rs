//! The error types of the event pump.

use std::fmt;

/// What went wrong starting or using a pump.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The event queue failed (creating the poller, registering a source, waking).
    #[error(transparent)]
    Eventq(#[from] crate::eventq::Error),
    /// A thread could not be spawned.
    #[error("could not spawn thread {name}")]
    Spawn {
        /// The thread's name.
        name: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The pump has shut down.
    #[error("the event pump has shut down")]
    Closed,
}

/// The result type of the event pump.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A post that was refused; the task is handed back.
#[derive(thiserror::Error)]
pub enum PostError<T> {
    /// The pump is shutting down or gone.
    #[error("the event pump has shut down")]
    Closed(T),
    /// The owner the task was posted for has been killed.
    #[error("the task's owner has been killed")]
    Killed(T),
}

impl<T> PostError<T> {
    /// The refused task.
    pub fn into_inner(self) -> T {
        match self {
            PostError::Closed(t) | PostError::Killed(t) => t,
        }
    }

    /// Maps the task inside.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> PostError<U> {
        match self {
            PostError::Closed(t) => PostError::Closed(f(t)),
            PostError::Killed(t) => PostError::Killed(f(t)),
        }
    }
}

impl<T> fmt::Debug for PostError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PostError::Closed(_) => f.write_str("Closed(..)"),
            PostError::Killed(_) => f.write_str("Killed(..)"),
        }
    }
}
