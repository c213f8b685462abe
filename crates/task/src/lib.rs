//! Task events for mixbus: accepting, connecting, sending, receiving and closing.
//!
//! This layer is being built; see BRIEF section 3.
#![forbid(unsafe_code)]

pub use mixbus_pump as pump;
