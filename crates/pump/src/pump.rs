//! The pump itself: [`EventPump`] owns the thread, [`PumpHandle`] posts to it from anywhere.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::ops::Deref;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crate::eventq::{Events, Interest, Poll, Registry, Source, Token, Waker};
use crate::io::IoSource;
use crate::owner::Owner;
use crate::spin::AdaptiveSpin;
use crate::stats::{Counters, PumpStats};
use crate::task::{Context, Next, OnceTask, Task, Wake};
use crate::timer::{TimerHandle, TimerKind, Timers};
use crate::{Error, PostError, Result};

/// While tasks are runnable, the longest the pump goes without looking for I/O readiness.
const BUSY_POLL_INTERVAL: Duration = Duration::from_micros(100);

/// How long an idle pump watches for posts and ready sockets before it sleeps in `poll`, at the
/// least, by default ([`PumpConfig::spin`]).
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(20);

/// How far an idle pump's spin may grow while its work keeps coming back soon after it fell
/// asleep, by default ([`PumpConfig::spin_max`]).
const SPIN_MAX: Duration = Duration::from_micros(200);

/// What an idle pump found while it watched before sleeping.
enum Spin {
    /// Nothing: go to sleep.
    Idle,
    /// Posts from other threads arrived.
    Posted,
    /// Sources became ready; their tasks were made runnable.
    Ready,
}

/// The token of the pump's own waker; sources get tokens from 1 up.
const WAKER_TOKEN: Token = Token(0);

/// How a pump is set up. Plain data with defaults; change it with the `with_*` methods.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PumpConfig {
    /// The pump thread's name (default `mixbus-pump`).
    pub name: String,
    /// Time budget of one run of a task (default 1 ms); see [`Context::should_yield`].
    pub budget: Duration,
    /// A run longer than this is logged with the task's name and counted (default 10 ms).
    pub overrun_threshold: Duration,
    /// Worker threads for [`PumpHandle::offload`] (default 2).
    pub workers: usize,
    /// Events read per `poll` (default 1024).
    pub events_capacity: usize,
    /// How long dropping the [`EventPump`] waits for queued work (default 5 s).
    pub drop_timeout: Duration,
    /// How long an idle pump keeps watching its inbox and sockets before it sleeps, at the
    /// least (default 20 µs, never past its next timer). See [`with_spin`](Self::with_spin).
    pub spin: Duration,
    /// How far the spin may grow while work keeps arriving soon after the pump fell asleep
    /// (default 200 µs; less than [`spin`](Self::spin) is taken as `spin`). See
    /// [`with_spin_range`](Self::with_spin_range).
    pub spin_max: Duration,
}

impl Default for PumpConfig {
    fn default() -> Self {
        PumpConfig {
            name: "mixbus-pump".into(),
            budget: Duration::from_millis(1),
            overrun_threshold: Duration::from_millis(10),
            workers: 2,
            events_capacity: 1024,
            drop_timeout: Duration::from_secs(5),
            spin: SPIN_BEFORE_SLEEP,
            spin_max: SPIN_MAX,
        }
    }
}

impl PumpConfig {
    /// Sets the thread name.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the time budget of one run.
    #[must_use]
    pub fn with_budget(mut self, budget: Duration) -> Self {
        self.budget = budget;
        self
    }

    /// Sets the overrun threshold.
    #[must_use]
    pub fn with_overrun_threshold(mut self, threshold: Duration) -> Self {
        self.overrun_threshold = threshold;
        self
    }

    /// Sets the number of worker threads.
    #[must_use]
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Sets how long dropping the pump waits for queued work.
    #[must_use]
    pub fn with_drop_timeout(mut self, timeout: Duration) -> Self {
        self.drop_timeout = timeout;
        self
    }

    /// Sets how long an idle pump spins, watching its inbox and polling its sockets without
    /// blocking, before it goes to sleep: always `spin`, never more (never past its next timer
    /// either). [`Duration::ZERO`] turns the spin off. See [`with_spin_range`](Self::with_spin_range)
    /// for a spin that adapts, which is the default.
    ///
    /// Work that arrives while it spins is taken at once: no thread wake-up, which costs tens of
    /// microseconds on a virtual machine. Between looks it yields its core to any other runnable
    /// thread, so a spinning pump delays no other thread by more than one look (a zero-timeout
    /// poll). A longer spin trades CPU for latency: a pump that hears from a peer within the
    /// spin never sleeps, so it can keep a core busy while messages come more often than the
    /// spin lasts. An idle pump still sleeps once the spin ends.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use mixbus_pump::{EventPump, PumpConfig};
    ///
    /// // A hub that answers quickly: it stays awake 150 µs after its last piece of work.
    /// let pump = EventPump::with_config(PumpConfig::default().with_spin(Duration::from_micros(150)))?;
    /// # pump.shutdown(Duration::from_secs(1));
    /// # Ok::<(), mixbus_pump::Error>(())
    /// ```
    #[must_use]
    pub fn with_spin(mut self, spin: Duration) -> Self {
        self.spin = spin;
        self.spin_max = spin;
        self
    }

    /// Sets a spin that adapts between `min` and `max` (default 20 to 200 µs): the pump always
    /// spins `min` before it sleeps, and longer while spinning would have paid.
    ///
    /// When the pump slept and its next work came within `max` of its going idle, a spin of
    /// `max` would have caught that work without a wake-up, so the spin becomes `max`. When the
    /// pump stays idle past `max`, the spin halves, down to `min` ([`AdaptiveSpin`] is the
    /// rule). So a pump in a request/reply exchange, whose peer answers within a hundred
    /// microseconds or so, soon stops sleeping between messages, while a pump that hears from
    /// its peers now and then spins only `min` after each piece of work. The price is CPU: a pump
    /// whose work comes more often than every `max` spins through the gaps, yielding its core to
    /// any other runnable thread between looks. [`with_spin`](Self::with_spin) sets a fixed
    /// spin instead; a `max` below `min` is taken as `min`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use mixbus_pump::{EventPump, PumpConfig};
    ///
    /// // Spin at least 10 µs and at most 1 ms.
    /// let config = PumpConfig::default()
    ///     .with_spin_range(Duration::from_micros(10), Duration::from_millis(1));
    /// let pump = EventPump::with_config(config)?;
    /// # pump.shutdown(Duration::from_secs(1));
    /// # Ok::<(), mixbus_pump::Error>(())
    /// ```
    #[must_use]
    pub fn with_spin_range(mut self, min: Duration, max: Duration) -> Self {
        self.spin = min;
        self.spin_max = max.max(min);
        self
    }
}

/// What [`EventPump::shutdown`] reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Task runs over the pump's whole life.
    pub ran: u64,
    /// Names of runnable tasks that had not finished when the timeout passed.
    pub left: Vec<String>,
    /// Names of tasks dropped without running: pending timers and I/O waits.
    pub cancelled: Vec<String>,
    /// True if the pump thread did not stop in time (a run never returned); it was left running.
    pub timed_out: bool,
}

/// A posted task with who it belongs to and why it will run.
pub(crate) struct Job {
    pub(crate) task: Box<dyn Task>,
    pub(crate) owner: Option<Owner>,
    pub(crate) wake: Wake,
}

impl Job {
    fn killed(&self) -> bool {
        self.owner.as_ref().is_some_and(Owner::is_killed)
    }

    fn owned_by(&self, id: u64) -> bool {
        self.owner.as_ref().is_some_and(|o| o.id() == id)
    }
}

enum Item {
    Run(Job),
    Timer(Instant, TimerKind),
    Purge(u64),
    Stop(Instant),
}

type Work = Box<dyn FnOnce() + Send>;

struct Shared {
    inbox: Mutex<VecDeque<Item>>,
    /// True while the inbox holds items: set under the inbox lock by every push, cleared under it
    /// by the drain. The pump thread reads it without the lock to decide whether a local post can
    /// skip the inbox (see [`PumpHandle::push_local`]).
    inbox_pending: AtomicBool,
    sleeping: AtomicBool,
    closed: AtomicBool,
    waker: Waker,
    registry: Registry,
    next_token: AtomicUsize,
    counters: Counters,
    budget: Duration,
    overrun_threshold: Duration,
    thread_id: OnceLock<ThreadId>,
    workers: Mutex<Option<flume::Sender<Work>>>,
    /// The name of the task running while the pump shuts down, for the report if it never returns.
    stopping_current: Mutex<Option<String>>,
}

thread_local! {
    /// The address of the `Shared` of the pump this thread runs, or 0.
    static PUMP_OF_THREAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Set when this pump thread posts to its own pump through a handle (into the inbox).
    static SELF_POSTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A cloneable, `Send + Sync` handle that posts work to an [`EventPump`] from any thread.
#[derive(Clone)]
pub struct PumpHandle {
    shared: Arc<Shared>,
}

impl PumpHandle {
    /// Queues an item unless the pump is closed; wakes the pump only if it sleeps.
    fn push(&self, item: Item) -> std::result::Result<(), Item> {
        {
            let mut inbox = lock(&self.shared.inbox);
            if self.shared.closed.load(Ordering::Relaxed) {
                return Err(item);
            }
            inbox.push_back(item);
            self.shared.inbox_pending.store(true, Ordering::Relaxed);
        }
        self.notify();
        Ok(())
    }

    /// Queues a job made on the pump thread (a [`Context::post`] or a [`Next::Repost`]) at the back
    /// of the queue, behind everything already posted.
    ///
    /// Posts from other threads that the pump has not drained yet are already queued, so a local
    /// job must go behind them: it goes through the inbox while that holds anything. Only when the
    /// inbox is empty does it go straight onto the run queue (no lock). No wake-up either way: the
    /// pump thread is running, not asleep.
    pub(crate) fn push_local(&self, local: &mut VecDeque<Job>, job: Job) {
        if self.shared.inbox_pending.load(Ordering::Acquire) {
            let mut inbox = lock(&self.shared.inbox);
            inbox.push_back(Item::Run(job));
            self.shared.inbox_pending.store(true, Ordering::Relaxed);
        } else {
            local.push_back(job);
        }
    }

    fn notify(&self) {
        // Pairs with the pump's SeqCst store of `sleeping` before it re-checks the inbox: either
        // the pump sees our item, or we see it asleep and wake it.
        if self.shared.sleeping.load(Ordering::SeqCst)
            && self.shared.sleeping.swap(false, Ordering::SeqCst)
        {
            Counters::add(&self.shared.counters.wakeups, 1);
            if let Err(err) = self.shared.waker.wake() {
                tracing::error!(error = %err, "could not wake the pump");
            }
        }
    }

    fn post_job<T: Task>(
        &self,
        task: T,
        owner: Option<&Owner>,
        delay: Option<Duration>,
        handle: Option<TimerHandle>,
    ) -> std::result::Result<(), PostError<T>> {
        if owner.is_some_and(Owner::is_killed) {
            return Err(PostError::Killed(task));
        }
        let boxed = Box::new(task);
        let mut inbox = lock(&self.shared.inbox);
        if self.shared.closed.load(Ordering::Relaxed) {
            return Err(PostError::Closed(*boxed));
        }
        let job = Job {
            task: boxed,
            owner: owner.cloned(),
            wake: if delay.is_some() {
                Wake::Timer
            } else {
                Wake::Posted
            },
        };
        inbox.push_back(match delay {
            None => Item::Run(job),
            Some(d) => Item::Timer(deadline_after(d), TimerKind::Job(job, handle)),
        });
        self.shared.inbox_pending.store(true, Ordering::Relaxed);
        drop(inbox);
        if self.on_pump_thread() {
            SELF_POSTED.set(true);
        }
        Counters::add(&self.shared.counters.posted, 1);
        self.notify();
        Ok(())
    }

    /// Posts a task to the back of the queue; tasks posted from one thread run in posting order.
    ///
    /// # Errors
    /// [`PostError::Closed`] with the task if the pump has shut down.
    pub fn post<T: Task>(&self, task: T) -> std::result::Result<(), PostError<T>> {
        self.post_job(task, None, None, None)
    }

    /// Posts a closure that runs once on the pump.
    ///
    /// # Errors
    /// [`PostError::Closed`] with the task if the pump has shut down.
    pub fn post_fn<F>(
        &self,
        name: &'static str,
        f: F,
    ) -> std::result::Result<(), PostError<OnceTask<F>>>
    where
        F: FnOnce(&mut Context<'_>) + Send + 'static,
    {
        self.post(OnceTask::new(name, f))
    }

    /// Posts a task on behalf of `owner`: killing the owner cancels it.
    ///
    /// # Errors
    /// [`PostError::Killed`] if the owner is dead, [`PostError::Closed`] if the pump is.
    pub fn post_owned<T: Task>(
        &self,
        owner: &Owner,
        task: T,
    ) -> std::result::Result<(), PostError<T>> {
        self.post_job(task, Some(owner), None, None)
    }

    /// Runs a task after `delay` (never earlier); timers fire in deadline order.
    ///
    /// # Errors
    /// [`PostError::Closed`] with the task if the pump has shut down.
    pub fn post_after<T: Task>(
        &self,
        delay: Duration,
        task: T,
    ) -> std::result::Result<TimerHandle, PostError<T>> {
        let handle = TimerHandle::new();
        self.post_job(task, None, Some(delay), Some(handle.clone()))?;
        Ok(handle)
    }

    /// Runs a task after `delay` on behalf of `owner`.
    ///
    /// # Errors
    /// [`PostError::Killed`] if the owner is dead, [`PostError::Closed`] if the pump is.
    pub fn post_after_owned<T: Task>(
        &self,
        owner: &Owner,
        delay: Duration,
        task: T,
    ) -> std::result::Result<TimerHandle, PostError<T>> {
        let handle = TimerHandle::new();
        self.post_job(task, Some(owner), Some(delay), Some(handle.clone()))?;
        Ok(handle)
    }

    /// A new owner for posts, timers and I/O waits that should be cancellable together.
    pub fn owner(&self, name: impl Into<String>) -> Owner {
        Owner::new(name.into())
    }

    /// Kills `owner`: its pending posts, timers and I/O waits are dropped without running, and
    /// later posts for it are refused. Returns false if it was already dead.
    pub fn kill(&self, owner: &Owner) -> bool {
        if !owner.mark_killed() {
            return false;
        }
        // The flag alone already stops every queued job at its turn; the purge frees waits and
        // timers at once. A closed pump has nothing left to purge.
        let _ = self.push(Item::Purge(owner.id()));
        true
    }

    /// Registers an I/O source with this pump's poller; a task waits on it with
    /// [`IoSource::wait`].
    ///
    /// # Errors
    /// [`Error::Eventq`] if the operating system refuses the registration.
    pub fn register<S: Source>(&self, source: S) -> Result<IoSource<S>> {
        let token = self.shared.next_token.fetch_add(1, Ordering::Relaxed);
        let reg = self
            .shared
            .registry
            .register(source, Token(token), Interest::READABLE)?;
        Ok(IoSource::new(reg))
    }

    /// Runs blocking `work` on a worker thread, then posts `then` with its result back to the
    /// pump: the thread half of the hybrid model.
    ///
    /// # Errors
    /// [`Error::Closed`] if the pump has shut down or has no workers.
    pub fn offload<T, W, C>(&self, name: &'static str, work: W, then: C) -> Result<()>
    where
        T: Send + 'static,
        W: FnOnce() -> T + Send + 'static,
        C: FnOnce(T, &mut Context<'_>) + Send + 'static,
    {
        let handle = self.clone();
        let job: Work = Box::new(move || {
            let value = work();
            if handle
                .post(OnceTask::new(name, move |cx| then(value, cx)))
                .is_err()
            {
                tracing::debug!(task.name = name, "offloaded work finished after shutdown");
            }
        });
        let workers = lock(&self.shared.workers);
        let sender = workers.as_ref().ok_or(Error::Closed)?;
        sender.send(job).map_err(|_| Error::Closed)?;
        Counters::add(&self.shared.counters.offloaded, 1);
        Ok(())
    }

    /// A snapshot of the pump's statistics.
    pub fn stats(&self) -> PumpStats {
        self.shared.counters.snapshot()
    }

    /// Whether the caller runs on this pump's thread.
    pub fn is_pump_thread(&self) -> bool {
        self.shared.thread_id.get() == Some(&thread::current().id())
    }

    /// [`is_pump_thread`](Self::is_pump_thread) for every post: one thread-local read.
    fn on_pump_thread(&self) -> bool {
        PUMP_OF_THREAD.get() == Arc::as_ptr(&self.shared) as usize
    }

    /// Whether the pump is asleep, waiting for I/O, a timer or a post (a post from another
    /// thread would wake it): a hint, true at the moment of the read. A thread that would post
    /// it a small job may do the job itself instead and spare the wake-up.
    pub fn is_sleeping(&self) -> bool {
        self.shared.sleeping.load(Ordering::Acquire)
    }

    /// Whether the caller runs on the thread of some pump (this one or another).
    pub fn on_any_pump_thread() -> bool {
        PUMP_OF_THREAD.get() != 0
    }

    /// Whether the pump has stopped taking posts.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

impl fmt::Debug for PumpHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PumpHandle")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

fn deadline_after(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365))
}

/// The event pump: one thread running posted tasks in FIFO order, timers and I/O readiness.
///
/// Dereferences to its [`PumpHandle`]. Dropping it shuts the pump down (waiting up to
/// [`PumpConfig::drop_timeout`]).
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use mixbus_pump::{EventPump, Next, FnTask};
///
/// let pump = EventPump::new()?;
/// let (tx, rx) = flume::unbounded();
/// let mut left = 3;
/// pump.post(FnTask::new("countdown", move |_cx| {
///     tx.send(left).unwrap();
///     left -= 1;
///     if left == 0 { Next::Done } else { Next::RepostAfter(Duration::from_millis(1)) }
/// })).unwrap();
/// let got: Vec<i32> = rx.iter().take(3).collect();
/// assert_eq!(got, vec![3, 2, 1]);
/// let report = pump.shutdown(Duration::from_secs(5));
/// assert!(report.left.is_empty());
/// # Ok::<(), mixbus_pump::Error>(())
/// ```
pub struct EventPump {
    handle: PumpHandle,
    thread: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
    report: Option<flume::Receiver<ShutdownReport>>,
    drop_timeout: Duration,
}

impl EventPump {
    /// Starts a pump with the default configuration.
    ///
    /// # Errors
    /// [`Error::Eventq`] if the poller cannot be made, [`Error::Spawn`] if a thread cannot start.
    pub fn new() -> Result<EventPump> {
        EventPump::with_config(PumpConfig::default())
    }

    /// Starts a pump with `config`.
    ///
    /// # Errors
    /// [`Error::Eventq`] if the poller cannot be made, [`Error::Spawn`] if a thread cannot start.
    pub fn with_config(config: PumpConfig) -> Result<EventPump> {
        let poll = Poll::new()?;
        let registry = poll.registry();
        let waker = Waker::new(&registry, WAKER_TOKEN)?;
        let (work_tx, work_rx) = flume::unbounded::<Work>();
        let shared = Arc::new(Shared {
            inbox: Mutex::new(VecDeque::with_capacity(1024)),
            inbox_pending: AtomicBool::new(false),
            sleeping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            waker,
            registry,
            next_token: AtomicUsize::new(1),
            counters: Counters::default(),
            budget: config.budget,
            overrun_threshold: config.overrun_threshold,
            thread_id: OnceLock::new(),
            workers: Mutex::new(Some(work_tx)),
            stopping_current: Mutex::new(None),
        });
        let handle = PumpHandle { shared };

        let mut workers = Vec::with_capacity(config.workers);
        for i in 0..config.workers {
            let rx = work_rx.clone();
            let counters = handle.clone();
            let name = format!("mixbus-worker-{i}");
            let spawned = thread::Builder::new()
                .name(name.clone())
                .spawn(move || worker(rx, counters))
                .map_err(|source| Error::Spawn { name, source })?;
            workers.push(spawned);
        }
        drop(work_rx);

        let (report_tx, report_rx) = flume::bounded(1);
        let looper = Loop {
            handle: handle.clone(),
            events: Events::with_capacity(config.events_capacity),
            poll,
            run_queue: VecDeque::with_capacity(1024),
            spare: VecDeque::with_capacity(1024),
            timers: Timers::default(),
            parked: HashMap::new(),
            generation: 0,
            stop_deadline: None,
            last_poll: Instant::now(),
            spin: AdaptiveSpin::new(config.spin, config.spin_max),
        };
        Counters::set(&handle.shared.counters.spin_ns, config.spin);
        let name = config.name.clone();
        let thread = thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let report = looper.run();
                let _ = report_tx.send(report);
            })
            .map_err(|source| Error::Spawn { name, source })?;
        tracing::info!(pump = %config.name, workers = config.workers, "pump started");
        Ok(EventPump {
            handle,
            thread: Some(thread),
            workers,
            report: Some(report_rx),
            drop_timeout: config.drop_timeout,
        })
    }

    /// A handle to post from any thread.
    pub fn handle(&self) -> PumpHandle {
        self.handle.clone()
    }

    /// Stops taking posts, runs what is queued until `timeout`, joins the thread and reports what
    /// ran, what was left and what was cancelled. Returns within `timeout` (plus scheduling noise)
    /// even if a task never returns; that thread is then left running and `timed_out` is set.
    pub fn shutdown(mut self, timeout: Duration) -> ShutdownReport {
        self.stop(timeout)
    }

    fn stop(&mut self, timeout: Duration) -> ShutdownReport {
        let Some(report_rx) = self.report.take() else {
            return ShutdownReport::default();
        };
        let start = Instant::now();
        let deadline = deadline_after(timeout);
        // The loop stops a little before the caller's deadline so its report arrives in time.
        let margin = (timeout / 10).min(Duration::from_millis(20));
        {
            let mut inbox = lock(&self.handle.shared.inbox);
            self.handle.shared.closed.store(true, Ordering::Release);
            inbox.push_back(Item::Stop(deadline.checked_sub(margin).unwrap_or(deadline)));
            self.handle
                .shared
                .inbox_pending
                .store(true, Ordering::Relaxed);
        }
        if let Err(err) = self.handle.shared.waker.wake() {
            tracing::error!(error = %err, "could not wake the pump to stop it");
        }
        let remaining = timeout.saturating_sub(start.elapsed());
        let report = match report_rx.recv_timeout(remaining) {
            Ok(report) => {
                if let Some(thread) = self.thread.take() {
                    let _ = thread.join();
                }
                report
            }
            Err(_) => {
                let running = lock(&self.handle.shared.stopping_current).clone();
                tracing::error!(task.name = ?running, "pump did not stop in time; leaving its thread");
                ShutdownReport {
                    ran: self.handle.stats().tasks_run,
                    left: running.into_iter().collect(),
                    cancelled: Vec::new(),
                    timed_out: true,
                }
            }
        };
        // Workers finish the closures they hold and exit; a worker stuck in blocking work is left.
        lock(&self.handle.shared.workers).take();
        let workers = std::mem::take(&mut self.workers);
        for worker in workers {
            if worker.is_finished() {
                let _ = worker.join();
            }
        }
        tracing::info!(
            ran = report.ran,
            left = report.left.len(),
            cancelled = report.cancelled.len(),
            "pump stopped"
        );
        report
    }
}

impl Deref for EventPump {
    type Target = PumpHandle;
    fn deref(&self) -> &PumpHandle {
        &self.handle
    }
}

impl Drop for EventPump {
    fn drop(&mut self) {
        if self.report.is_some() {
            let report = self.stop(self.drop_timeout);
            if !report.left.is_empty() || report.timed_out {
                tracing::warn!(left = ?report.left, "pump dropped with work left");
            }
        }
    }
}

impl fmt::Debug for EventPump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventPump")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

fn worker(rx: flume::Receiver<Work>, handle: PumpHandle) {
    for work in rx.iter() {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(work)) {
            Counters::add(&handle.shared.counters.panics, 1);
            tracing::error!(panic = panic_message(&panic), "offloaded work panicked");
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic"
    }
}

struct Parked {
    job: Job,
    generation: u64,
}

/// The state owned by the pump thread.
struct Loop {
    handle: PumpHandle,
    poll: Poll,
    events: Events,
    run_queue: VecDeque<Job>,
    spare: VecDeque<Item>,
    timers: Timers,
    parked: HashMap<usize, Parked>,
    generation: u64,
    stop_deadline: Option<Instant>,
    /// When the loop last asked the poller for I/O events.
    last_poll: Instant,
    /// How long the next idle spin lasts, between [`PumpConfig::spin`] and
    /// [`PumpConfig::spin_max`].
    spin: AdaptiveSpin,
}

impl Loop {
    fn run(mut self) -> ShutdownReport {
        let _ = self.handle.shared.thread_id.set(thread::current().id());
        PUMP_OF_THREAD.set(Arc::as_ptr(&self.handle.shared) as usize);
        let span = tracing::info_span!("pump");
        let _enter = span.enter();
        loop {
            // `now` is read before draining: a timer posted after the drain took the inbox lock has
            // a deadline later than `now`, so no timer fired in this turn is due after one still
            // in the inbox (which would break deadline order across threads).
            let now = Instant::now();
            self.drain_inbox();
            self.fire_timers(now);
            if let Some(deadline) = self.stop_deadline
                && (self.run_queue.is_empty() || Instant::now() >= deadline)
            {
                break;
            }
            self.run_batch();
            self.publish_gauges();
            // While tasks stay runnable, a zero-timeout poll after every batch would cost system
            // calls per re-post; look for I/O at most every `BUSY_POLL_INTERVAL` instead.
            // The pump's own posts through a handle (such as a send task a listener scheduled)
            // wait in the inbox: they are runnable work too, so drain them before polling again.
            let idle = self.run_queue.is_empty() && !SELF_POSTED.replace(false);
            if idle
                || self.stop_deadline.is_some()
                || self.last_poll.elapsed() >= BUSY_POLL_INTERVAL
            {
                self.poll_io();
                self.last_poll = Instant::now();
            }
        }
        self.finish()
    }

    fn drain_inbox(&mut self) {
        {
            let mut inbox = lock(&self.handle.shared.inbox);
            std::mem::swap(&mut *inbox, &mut self.spare);
            self.handle
                .shared
                .inbox_pending
                .store(false, Ordering::Relaxed);
        }
        let mut items = std::mem::take(&mut self.spare);
        for item in items.drain(..) {
            match item {
                Item::Run(job) => self.run_queue.push_back(job),
                Item::Timer(deadline, kind) => self.timers.push(deadline, kind),
                Item::Purge(owner) => self.purge(owner),
                Item::Stop(deadline) => {
                    self.stop_deadline = Some(deadline);
                    self.note_current(None);
                }
            }
        }
        self.spare = items;
    }

    fn purge(&mut self, owner: u64) {
        let before = self.parked.len() + self.timers.len() + self.run_queue.len();
        self.parked.retain(|_, p| !p.job.owned_by(owner));
        self.timers.retain(|t| match &t.kind {
            TimerKind::Job(job, _) => !job.owned_by(owner),
            TimerKind::IoTimeout { .. } => true,
        });
        self.run_queue.retain(|job| !job.owned_by(owner));
        let after = self.parked.len() + self.timers.len() + self.run_queue.len();
        Counters::add(
            &self.handle.shared.counters.cancelled,
            (before - after) as u64,
        );
    }

    fn fire_timers(&mut self, now: Instant) {
        let counters = &self.handle.shared.counters;
        while let Some(timer) = self.timers.pop_due(now) {
            match timer.kind {
                TimerKind::Job(job, handle) => {
                    if handle.as_ref().is_none_or(TimerHandle::fire) && !job.killed() {
                        Counters::add(&counters.timers_fired, 1);
                        self.run_queue.push_back(job);
                    } else {
                        Counters::add(&counters.cancelled, 1);
                    }
                }
                TimerKind::IoTimeout { token, generation } => {
                    if self
                        .parked
                        .get(&token)
                        .is_some_and(|p| p.generation == generation)
                        && let Some(mut parked) = self.parked.remove(&token)
                    {
                        parked.job.wake = Wake::TimedOut;
                        self.run_queue.push_back(parked.job);
                    }
                }
            }
        }
    }

    fn run_batch(&mut self) {
        let batch = self.run_queue.len();
        // One clock read per run: the end of one run is the start of the next.
        let mut now = Instant::now();
        for _ in 0..batch {
            let Some(job) = self.run_queue.pop_front() else {
                break;
            };
            if job.killed() {
                Counters::add(&self.handle.shared.counters.cancelled, 1);
                continue;
            }
            now = self.run_one(job, now);
            if self.stop_deadline.is_some_and(|d| now >= d) {
                break;
            }
        }
    }

    fn note_current(&self, name: Option<&str>) {
        if self.stop_deadline.is_some() {
            *lock(&self.handle.shared.stopping_current) = name.map(str::to_owned);
        }
    }

    /// Runs one job that starts at `start`; returns when it ended.
    fn run_one(&mut self, mut job: Job, start: Instant) -> Instant {
        let shared = &self.handle.shared;
        if self.stop_deadline.is_some() {
            self.note_current(Some(job.task.name()));
        }
        let outcome = {
            let Job { task, owner, wake } = &mut job;
            let mut cx = Context {
                handle: &self.handle,
                local: &mut self.run_queue,
                owner: owner.as_ref(),
                wake: *wake,
                start,
                budget: shared.budget,
            };
            let span = tracing::trace_span!("task", task.name = task.name());
            let _enter = span.enter();
            catch_unwind(AssertUnwindSafe(|| task.run(&mut cx)))
        };
        let end = Instant::now();
        let elapsed = end - start;
        Counters::add(&shared.counters.ran, 1);
        if elapsed > shared.overrun_threshold {
            Counters::add(&shared.counters.overruns, 1);
            tracing::warn!(
                task.name = job.task.name(),
                elapsed_us = elapsed.as_micros() as u64,
                "task run overran its budget"
            );
        }
        match outcome {
            Err(panic) => {
                Counters::add(&shared.counters.panics, 1);
                tracing::error!(
                    task.name = job.task.name(),
                    panic = panic_message(&panic),
                    "task panicked; dropped"
                );
            }
            Ok(Next::Done) => {}
            Ok(Next::Repost) => {
                Counters::add(&shared.counters.reposts, 1);
                job.wake = Wake::Posted;
                // Behind posts from other threads made during the run, not ahead of them.
                self.handle.push_local(&mut self.run_queue, job);
            }
            Ok(Next::RepostAfter(delay)) => {
                Counters::add(&shared.counters.reposts, 1);
                job.wake = Wake::Timer;
                self.timers
                    .push(deadline_after(delay), TimerKind::Job(job, None));
            }
            Ok(Next::Wait(wait)) => {
                self.generation += 1;
                let generation = self.generation;
                if let Some(timeout) = wait.timeout {
                    self.timers.push(
                        deadline_after(timeout),
                        TimerKind::IoTimeout {
                            token: wait.token,
                            generation,
                        },
                    );
                }
                if let Some(previous) = self.parked.insert(wait.token, Parked { job, generation }) {
                    // Two tasks waiting on one source: run the earlier one again rather than lose it.
                    let mut earlier = previous.job;
                    earlier.wake = Wake::Posted;
                    self.run_queue.push_back(earlier);
                }
            }
        }
        end
    }

    fn publish_gauges(&self) {
        let c = &self.handle.shared.counters;
        c.queue_depth
            .store(self.run_queue.len() as u64, Ordering::Relaxed);
        c.timers_pending
            .store(self.timers.len() as u64, Ordering::Relaxed);
        c.io_waiting
            .store(self.parked.len() as u64, Ordering::Relaxed);
    }

    /// Before going to sleep, watch the inbox and the sockets for a few microseconds: under a
    /// steady stream of posts from another thread this saves the poster a wake-up system call
    /// per batch, and a reply that arrives soon after a send is taken without the pump falling
    /// asleep and being woken, which costs tens of microseconds on a virtual machine. It spins
    /// for the current adaptive spin (between [`PumpConfig::spin`] and
    /// [`PumpConfig::spin_max`]), or until `timeout` (the next timer's) if that comes first.
    fn spin_before_sleep(&mut self, shared: &Shared, timeout: Option<Duration>) -> Spin {
        let spin = self.spin.current();
        let spin = timeout.map_or(spin, |t| t.min(spin));
        if spin.is_zero() {
            return Spin::Idle;
        }
        let start = Instant::now();
        loop {
            if shared.inbox_pending.load(Ordering::Acquire) {
                return Spin::Posted;
            }
            match self.poll.poll(&mut self.events, Some(Duration::ZERO)) {
                Ok(()) if self.take_events() > 0 => return Spin::Ready,
                Ok(()) => {}
                Err(err) => {
                    tracing::error!(error = %err, "poll failed");
                    return Spin::Idle;
                }
            }
            if start.elapsed() >= spin {
                return Spin::Idle;
            }
            // Give the core to any other runnable thread between looks: on a machine with few
            // cores the thread that will send us work may be waiting for it (a busy-wait that
            // kept the core made request/reply 2 to 5 times slower with three spinning pumps on
            // two cores).
            thread::yield_now();
        }
    }

    /// How long until the next timer is due (none if no timer is pending).
    fn until_next_timer(&self) -> Option<Duration> {
        self.timers
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    fn poll_io(&mut self) {
        let shared = self.handle.shared.clone();
        let mut timeout = if !self.run_queue.is_empty() || self.stop_deadline.is_some() {
            Some(Duration::ZERO)
        } else {
            self.until_next_timer()
        };
        let mut may_sleep = timeout != Some(Duration::ZERO);
        let idle_since = Instant::now();
        if may_sleep {
            match self.spin_before_sleep(&shared, timeout) {
                // Sockets became ready while we spun: their tasks are runnable now.
                Spin::Ready => return,
                // Posts arrived while we spun: no sleep, and the poster needed no wake-up call.
                Spin::Posted => {
                    may_sleep = false;
                    timeout = Some(Duration::ZERO);
                }
                // The spin took some of the time to the next timer: sleep only what is left.
                Spin::Idle => timeout = self.until_next_timer(),
            }
        }
        if may_sleep {
            shared.sleeping.store(true, Ordering::SeqCst);
            if !lock(&shared.inbox).is_empty() {
                shared.sleeping.store(false, Ordering::SeqCst);
                timeout = Some(Duration::ZERO);
            }
        }
        let slept = Instant::now();
        let result = self.poll.poll(&mut self.events, timeout);
        if may_sleep {
            shared.sleeping.store(false, Ordering::SeqCst);
            Counters::add(
                &shared.counters.asleep_ns,
                slept.elapsed().as_nanos() as u64,
            );
        }
        if let Err(err) = result {
            tracing::error!(error = %err, "poll failed");
            return;
        }
        let ready = self.take_events();
        if may_sleep {
            let work = ready > 0 || shared.inbox_pending.load(Ordering::Acquire);
            self.adapt_spin(idle_since.elapsed(), work);
        }
    }

    /// After a sleep: the spin grows when the work that ended it came within `spin_max` of the
    /// pump's going idle (a spin that long would have caught it without a wake-up), and shrinks
    /// when the pump stayed idle past `spin_max` (spinning would not have paid).
    fn adapt_spin(&mut self, idle: Duration, work: bool) {
        let before = self.spin.current();
        self.spin.after_block(idle, work);
        if self.spin.current() != before {
            Counters::set(&self.handle.shared.counters.spin_ns, self.spin.current());
        }
    }

    /// Makes the tasks parked on the sources in `events` runnable; returns how many I/O events
    /// there were (the pump's own waker not counted).
    fn take_events(&mut self) -> usize {
        let mut count = 0;
        for event in self.events.iter() {
            if event.token() == WAKER_TOKEN {
                continue;
            }
            count += 1;
            if let Some(mut parked) = self.parked.remove(&event.token().0) {
                parked.job.wake = Wake::Ready(*event);
                self.run_queue.push_back(parked.job);
            }
        }
        count
    }

    fn finish(mut self) -> ShutdownReport {
        self.drain_inbox();
        let mut report = ShutdownReport {
            ran: self.handle.stats().tasks_run,
            ..ShutdownReport::default()
        };
        report.left = self
            .run_queue
            .drain(..)
            .map(|job| job.task.name().to_owned())
            .collect();
        for timer in self.timers.drain() {
            if let TimerKind::Job(job, handle) = timer.kind
                && handle.as_ref().is_none_or(TimerHandle::cancel)
            {
                report.cancelled.push(job.task.name().to_owned());
            }
        }
        report.cancelled.extend(
            self.parked
                .drain()
                .map(|(_, p)| p.job.task.name().to_owned()),
        );
        Counters::add(
            &self.handle.shared.counters.cancelled,
            (report.left.len() + report.cancelled.len()) as u64,
        );
        self.publish_gauges();
        report
    }
}
