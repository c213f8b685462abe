//! Compile-time checks that the pump's handle types can cross and be shared between threads.

use mixbus_pump::{Error, EventPump, Owner, PumpHandle, PumpStats, TimerHandle};

fn send<T: Send>() {}
fn send_sync<T: Send + Sync>() {}
fn clone<T: Clone>() {}

#[test]
fn smoke() {
    send_sync::<PumpHandle>();
    clone::<PumpHandle>();
}

#[test]
fn handle_types_are_send_and_sync() {
    send_sync::<PumpHandle>();
    clone::<PumpHandle>();
    send::<EventPump>();
    send_sync::<Owner>();
    send_sync::<TimerHandle>();
    send::<PumpStats>();
    send_sync::<Error>();
}
