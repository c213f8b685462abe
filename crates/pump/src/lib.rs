//! Event pump for mixbus: one thread running posted tasks, timers and I/O readiness.
//!
//! This layer is being built; see BRIEF section 2.
#![forbid(unsafe_code)]

pub use mixbus_eventq as eventq;
