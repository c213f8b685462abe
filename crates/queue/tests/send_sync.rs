//! Every handle and error of the queue layer that crosses threads is `Send + Sync`.

use mixbus_queue::{
    BlockingQueue, CloseInfo, CloseReason, Error, MessageQueue, QueueBroker, QueueConfig,
    RecvTimeoutError, SendError, SendTimeoutError,
};

fn send_sync<T: Send + Sync>() {}

#[test]
fn smoke() {
    send_sync::<MessageQueue>();
    send_sync::<QueueBroker>();
    send_sync::<BlockingQueue>();
}

#[test]
fn errors_cross_threads() {
    send_sync::<Error>();
    send_sync::<SendError>();
    send_sync::<SendTimeoutError>();
    send_sync::<RecvTimeoutError>();
}

#[test]
fn values_cross_threads() {
    send_sync::<QueueConfig>();
    send_sync::<CloseInfo>();
    send_sync::<CloseReason>();
}
