//! Event pump for mixbus: one thread running posted tasks, timers and I/O readiness.
//!
//! An [`EventPump`] owns one thread. Work posted from any thread through a [`PumpHandle`] runs on
//! it one task at a time, in FIFO order; tasks posted from one thread run in the order posted. A
//! post from the pump's own thread costs no system call, and a post from elsewhere wakes the pump
//! only if it sleeps. Timers run after their delay, never early, in deadline order, and can be
//! cancelled. A task waits for I/O by returning [`IoSource::wait`]; the pump sleeps in `poll` only
//! when nothing is runnable.
//!
//! Each run of a task has a time budget: a task with more to do checks
//! [`Context::should_yield`] and returns [`Next::Repost`] to go to the back of the queue. A run that
//! overruns is logged with the task's name and counted; a task that panics is dropped, logged and
//! counted, and the pump goes on. Blocking work goes to worker threads with
//! [`PumpHandle::offload`], and its continuation is posted back. Work posted for an [`Owner`] is
//! cancelled together when the owner is killed. [`EventPump::shutdown`] never hangs.
//!
//! # Examples
//! ```
//! use std::time::Duration;
//! use mixbus_pump::{EventPump, FnTask, Next};
//!
//! let pump = EventPump::new()?;
//! let (tx, rx) = flume::unbounded();
//! // A long job that yields whenever its budget is used, so others get their turn.
//! let mut i = 0u32;
//! let tx2 = tx.clone();
//! pump.post(FnTask::new("long", move |cx| {
//!     while i < 10_000 {
//!         i += 1;
//!         if cx.should_yield() { return Next::Repost; }
//!     }
//!     tx2.send("long done").unwrap();
//!     Next::Done
//! })).unwrap();
//! // Blocking work runs on a worker; its continuation runs back on the pump.
//! pump.offload("sum", || (1..=10u64).sum::<u64>(), move |sum, _cx| {
//!     tx.send(if sum == 55 { "sum ok" } else { "sum wrong" }).unwrap();
//! })?;
//! let mut got: Vec<&str> = rx.iter().take(2).collect();
//! got.sort();
//! assert_eq!(got, ["long done", "sum ok"]);
//! # Ok::<(), mixbus_pump::Error>(())
//! ```
#![forbid(unsafe_code)]

mod error;
mod io;
mod owner;
mod pump;
mod spin;
mod stats;
mod task;
mod timer;

pub use mixbus_eventq as eventq;

pub use error::{Error, PostError, Result};
pub use io::IoSource;
pub use owner::Owner;
pub use pump::{EventPump, PumpConfig, PumpHandle, ShutdownReport};
pub use spin::{AdaptiveSpin, SpinSlot, SpinSlots};
pub use stats::PumpStats;
pub use task::{Context, FnTask, IoWait, Next, OnceTask, Task, Wake};
pub use timer::TimerHandle;
