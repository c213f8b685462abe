//! Many connections: 1,000 clients on one bound address and one pump each exchange 100 messages,
//! all complete, all close, and no file descriptor is left open.
//!
//! This test sits alone in its file because it counts the process's descriptors (`/proc/self/fd`),
//! which tests running in parallel threads of the same binary would disturb. It needs a soft
//! limit of at least 5,000 open files (each connection holds four: two ends, each with a read
//! and a write handle); `.ci/run` raises it, and the test says so when it is too low.
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mixbus_queue::task::Bytes;
use mixbus_queue::{
    CloseInfo, CloseReason, ConnectListener, Error, MessageQueue, QueueConfig, QueueListener,
};
use support::{broker, echo_server, fd_limit, open_fds, wait_until_within};

const CONNECTIONS: usize = 1_000;
const MESSAGES: u64 = 100;
const LIMIT: Duration = Duration::from_secs(30);

/// Sends `MESSAGES` on connect, checks the echoes in order, closes after the last one.
struct Client {
    next: u64,
    done: flume::Sender<Result<(), String>>,
    closed: Arc<AtomicUsize>,
}

impl ConnectListener for Client {
    fn connected(self, queue: MessageQueue) {
        for i in 0..MESSAGES {
            if let Err(err) = queue.send(support::payload(2, i, 24)) {
                let _ = self.done.send(Err(format!("send {i}: {err}")));
                return;
            }
        }
        queue.set_listener(self).unwrap();
    }

    fn refused(self, reason: Error) {
        let _ = self.done.send(Err(format!("refused: {reason}")));
    }
}

impl QueueListener for Client {
    fn received(&mut self, queue: &MessageQueue, msg: Bytes) {
        if !support::is_payload(2, self.next, 24, &msg) {
            let _ = self.done.send(Err(format!("echo {} wrong", self.next)));
            queue.close();
            return;
        }
        self.next += 1;
        if self.next == MESSAGES {
            let _ = self.done.send(Ok(()));
            queue.close();
        }
    }

    fn closed(&mut self, _queue: &MessageQueue, info: CloseInfo) {
        if matches!(info.reason, CloseReason::Local) && info.unsent.is_empty() {
            self.closed.fetch_add(1, Ordering::SeqCst);
        } else {
            let _ = self.done.send(Err(format!("closed: {}", info.reason)));
        }
    }
}

#[test]
fn smoke() {
    let limit = fd_limit().unwrap_or(0);
    assert!(
        limit >= 5_000,
        "this test needs a soft limit of 5,000 open files or more (it is {limit}); \
         `.ci/run` raises it, or run `ulimit -n 5000` first"
    );
    let (pump, broker) = broker(QueueConfig::default());
    let addr = echo_server(&broker);
    let baseline = open_fds();
    let (done_tx, done) = flume::unbounded();
    let closed = Arc::new(AtomicUsize::new(0));
    for _ in 0..CONNECTIONS {
        broker
            .connect(
                addr,
                Client {
                    next: 0,
                    done: done_tx.clone(),
                    closed: closed.clone(),
                },
            )
            .unwrap();
    }
    drop(done_tx);
    for n in 0..CONNECTIONS {
        match done.recv_timeout(LIMIT) {
            Ok(Ok(())) => {}
            Ok(Err(err)) => panic!("connection {n}: {err}"),
            Err(err) => panic!("only {n} of {CONNECTIONS} complete within {LIMIT:?}: {err}"),
        }
    }
    wait_until_within(LIMIT, "every client closed", || {
        closed.load(Ordering::SeqCst) == CONNECTIONS
    });
    wait_until_within(LIMIT, "the descriptors back to the baseline", || {
        open_fds() <= baseline
    });
    assert!(done.try_recv().is_err(), "a late error");
    assert_eq!(pump.stats().panics, 0);
}
