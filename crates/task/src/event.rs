//! The [`TaskEvent`] abstraction: a named unit of work that posts and re-posts itself on a pump.

use std::time::Duration;

use crate::pump::{Owner, PostError, PumpHandle, Task, TimerHandle};

/// A named unit of work run by the event pump, with `post` and re-post through it.
///
/// Every [`Task`] of the pump is a `TaskEvent`: implement [`Task::name`] and [`Task::run`] (which
/// returns what happens next: done, re-post now, re-post after a delay, or wait until a source is
/// readable or writable) and the posting methods come with it. The specializations of this crate
/// ([`crate::AcceptTask`], [`crate::ConnectTask`], [`crate::SendTask`], [`crate::ReceiveTask`],
/// [`crate::CloseTask`]) are `TaskEvent`s.
///
/// `run` is called on the pump thread and must return promptly; see [`crate::pump::Context`].
///
/// # Examples
/// ```
/// use mixbus_task::pump::{Context, EventPump, Next, Task};
/// use mixbus_task::TaskEvent;
///
/// struct Hello(flume::Sender<&'static str>);
/// impl Task for Hello {
///     fn name(&self) -> &str { "hello" }
///     fn run(&mut self, _cx: &mut Context<'_>) -> Next {
///         self.0.send("hello from the pump").unwrap();
///         Next::Done
///     }
/// }
///
/// let pump = EventPump::new()?;
/// let (tx, rx) = flume::unbounded();
/// Hello(tx).post(&pump).unwrap();
/// assert_eq!(rx.recv().unwrap(), "hello from the pump");
/// # Ok::<(), mixbus_task::pump::Error>(())
/// ```
pub trait TaskEvent: Task + Sized {
    /// Posts this task to the back of the pump's queue.
    ///
    /// # Errors
    /// [`PostError::Closed`] with the task if the pump has shut down.
    fn post(self, pump: &PumpHandle) -> Result<(), PostError<Self>> {
        pump.post(self)
    }

    /// Posts this task on behalf of `owner`: killing the owner cancels it, wherever it waits.
    ///
    /// # Errors
    /// [`PostError::Killed`] or [`PostError::Closed`] with the task.
    fn post_owned(self, pump: &PumpHandle, owner: &Owner) -> Result<(), PostError<Self>> {
        pump.post_owned(owner, self)
    }

    /// Posts this task to run after `delay`.
    ///
    /// # Errors
    /// [`PostError::Closed`] with the task if the pump has shut down.
    fn post_after(
        self,
        pump: &PumpHandle,
        delay: Duration,
    ) -> Result<TimerHandle, PostError<Self>> {
        pump.post_after(delay, self)
    }
}

impl<T: Task> TaskEvent for T {}
