//! What the pump runs: the [`Task`] trait, what a run asks for next ([`Next`]), and the [`Context`]
//! a run sees.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use crate::eventq::Event;
use crate::owner::Owner;
use crate::pump::{Job, PumpHandle};

/// A unit of work run on the pump thread.
///
/// `run` is called on the pump thread and must return promptly: loop while
/// [`Context::should_yield`] is false, then return [`Next::Repost`] to let other tasks have their
/// turn. Blocking work belongs on a worker ([`PumpHandle::offload`]).
pub trait Task: Send + 'static {
    /// A short name for logs, statistics and shutdown reports.
    fn name(&self) -> &str;

    /// Runs once; the result says what happens next.
    fn run(&mut self, cx: &mut Context<'_>) -> Next;
}

/// What a task asks for when a run returns.
#[derive(Debug)]
#[must_use]
pub enum Next {
    /// Finished: the task is dropped.
    Done,
    /// Not finished: run again after the tasks already queued (the back of the queue).
    Repost,
    /// Run again after a delay (never earlier).
    RepostAfter(Duration),
    /// Run again when an I/O source is ready (made by [`crate::IoSource::wait`]).
    Wait(IoWait),
}

/// A wait for readiness of one source, optionally bounded in time. Made by
/// [`crate::IoSource::wait`] and its shortcuts.
#[derive(Debug, Clone, Copy)]
pub struct IoWait {
    pub(crate) token: usize,
    pub(crate) timeout: Option<Duration>,
}

/// Why a task runs now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wake {
    /// It was posted (or re-posted) and reached the front of the queue.
    Posted,
    /// Its delay passed.
    Timer,
    /// The source it waited for is ready (readiness is a hint: `WouldBlock` means wait again).
    Ready(Event),
    /// It waited for a source with a timeout, and the timeout passed first.
    TimedOut,
}

/// What a run of a task sees: why it runs, how much budget is left, and a way to post more work.
pub struct Context<'a> {
    pub(crate) handle: &'a PumpHandle,
    pub(crate) local: &'a mut VecDeque<Job>,
    pub(crate) owner: Option<&'a Owner>,
    pub(crate) wake: Wake,
    pub(crate) start: Instant,
    pub(crate) budget: Duration,
}

impl Context<'_> {
    /// Why this run happens.
    pub fn wake(&self) -> Wake {
        self.wake
    }

    /// A handle to the pump this task runs on.
    pub fn handle(&self) -> &PumpHandle {
        self.handle
    }

    /// The owner the running task belongs to, if any.
    pub fn owner(&self) -> Option<&Owner> {
        self.owner
    }

    /// True once this run has used its time budget: finish the current item and return
    /// [`Next::Repost`].
    pub fn should_yield(&self) -> bool {
        self.start.elapsed() >= self.budget
    }

    /// Budget left in this run.
    pub fn budget_left(&self) -> Duration {
        self.budget.saturating_sub(self.start.elapsed())
    }

    /// Posts a task to the back of the queue, owned by the running task's owner; no system call.
    pub fn post(&mut self, task: impl Task) {
        let job = Job {
            task: Box::new(task),
            owner: self.owner.cloned(),
            wake: Wake::Posted,
        };
        // Behind any posts from other threads that are queued but not yet drained.
        self.handle.push_local(self.local, job);
    }

    /// Posts a closure to run once, owned by the running task's owner; no system call.
    pub fn post_fn(
        &mut self,
        name: &'static str,
        f: impl FnOnce(&mut Context<'_>) + Send + 'static,
    ) {
        self.post(OnceTask::new(name, f));
    }
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("wake", &self.wake)
            .field("budget_left", &self.budget_left())
            .finish_non_exhaustive()
    }
}

/// A task made of a name and a closure that runs until it returns [`Next::Done`].
pub struct FnTask<F> {
    name: Cow<'static, str>,
    f: F,
}

impl<F> FnTask<F>
where
    F: FnMut(&mut Context<'_>) -> Next + Send + 'static,
{
    /// A named task from a closure.
    pub fn new(name: impl Into<Cow<'static, str>>, f: F) -> Self {
        FnTask {
            name: name.into(),
            f,
        }
    }
}

impl<F> Task for FnTask<F>
where
    F: FnMut(&mut Context<'_>) -> Next + Send + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn run(&mut self, cx: &mut Context<'_>) -> Next {
        (self.f)(cx)
    }
}

impl<F> fmt::Debug for FnTask<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnTask").field("name", &self.name).finish()
    }
}

/// A task that runs a closure once.
pub struct OnceTask<F> {
    name: &'static str,
    f: Option<F>,
}

impl<F> OnceTask<F>
where
    F: FnOnce(&mut Context<'_>) + Send + 'static,
{
    /// A named one-shot task.
    pub fn new(name: &'static str, f: F) -> Self {
        OnceTask { name, f: Some(f) }
    }

    /// The closure, if it has not run.
    pub fn into_inner(self) -> Option<F> {
        self.f
    }
}

impl<F> Task for OnceTask<F>
where
    F: FnOnce(&mut Context<'_>) + Send + 'static,
{
    fn name(&self) -> &str {
        self.name
    }

    fn run(&mut self, cx: &mut Context<'_>) -> Next {
        if let Some(f) = self.f.take() {
            f(cx);
        }
        Next::Done
    }
}

impl<F> fmt::Debug for OnceTask<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnceTask")
            .field("name", &self.name)
            .finish()
    }
}
