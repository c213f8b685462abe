//! Echo over the queue layer: a thread-per-connection echo server on the blocking face, and an
//! event-driven client on the listeners, talking over `127.0.0.1`.
//!
//! The server hands each accepted queue to a thread of its own (`into_blocking`), which echoes
//! with `recv_timeout` and `send_timeout` until the queue closes. The client sends `N` messages
//! from its `connected` callback, counts the echoes in `received`, and closes when all came back.
//!
//! Run it with `cargo run --example echo`.
use std::time::{Duration, Instant};

use mixbus::pump::EventPump;
use mixbus::queue::task::Bytes;
use mixbus::queue::{
    CloseInfo, CloseReason, ConnectListener, Error, MessageQueue, QueueBroker, QueueConfig,
    QueueListener, RecvTimeoutError,
};

/// Messages the client sends.
const N: u64 = 10_000;
/// How long the server thread waits for a message before checking again.
const POLL: Duration = Duration::from_millis(100);

/// The event-driven client: sends on connect, counts echoes, closes after the last one.
struct Client {
    echoed: u64,
    done: flume::Sender<Result<u64, String>>,
}

impl ConnectListener for Client {
    fn connected(self, queue: MessageQueue) {
        for i in 0..N {
            // 10,000 short messages stay far below the high water mark: no `Full` here.
            queue.send(format!("message {i}")).expect("send");
        }
        queue.set_listener(self).expect("listener");
    }

    fn refused(self, reason: Error) {
        let _ = self.done.send(Err(reason.to_string()));
    }
}

impl QueueListener for Client {
    fn received(&mut self, queue: &MessageQueue, msg: Bytes) {
        assert_eq!(
            msg,
            format!("message {}", self.echoed),
            "echoes come in order"
        );
        self.echoed += 1;
        if self.echoed == N {
            queue.close();
        }
    }

    fn closed(&mut self, _queue: &MessageQueue, info: CloseInfo) {
        let _ = self.done.send(match info.reason {
            CloseReason::Local => Ok(self.echoed),
            other => Err(format!("client closed: {other}")),
        });
    }
}

/// The blocking server side: one thread per connection.
fn serve(queue: MessageQueue) {
    std::thread::spawn(move || {
        let queue = queue.into_blocking().expect("blocking face");
        loop {
            match queue.recv_timeout(POLL) {
                Ok(msg) => {
                    if queue.send_timeout(msg, Duration::from_secs(5)).is_err() {
                        break;
                    }
                }
                Err(RecvTimeoutError::Timeout) => continue,
                Err(_) => break, // Closed, and every message taken.
            }
        }
    });
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pump = EventPump::new()?;
    let broker = QueueBroker::new(pump.handle(), QueueConfig::default());
    let addr = broker.bind("127.0.0.1:0".parse()?, serve)?;
    let (tx, rx) = flume::bounded(1);
    let start = Instant::now();
    broker.connect(
        addr,
        Client {
            echoed: 0,
            done: tx,
        },
    )?;
    let echoed = rx.recv_timeout(Duration::from_secs(30))??;
    let took = start.elapsed();
    println!(
        "echo: {echoed} of {N} messages echoed through {addr} in {took:.2?} ({:.0} round trips/s)",
        echoed as f64 / took.as_secs_f64()
    );
    pump.shutdown(Duration::from_secs(5));
    Ok(())
}
