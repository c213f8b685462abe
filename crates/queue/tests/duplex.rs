//! Full duplex: two queues each send 100,000 messages while receiving, and every message arrives
//! whole, in order, exactly once (checked by sequence number and every byte), and `sent` hands back
//! every message in order.
//!
//! Sizes are seeded and mostly small, so the test moves about 1 GB and stays fast on 2 cores:
//! 99% are uniform in 0..1 KiB and 1% uniform in 0..=1 MiB; message 0 is exactly 1 MiB and
//! message 1 is empty, so both ends of the range are always covered.
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use mixbus_queue::task::Bytes;
use mixbus_queue::{CloseInfo, MessageQueue, QueueBroker, QueueConfig, QueueListener, SendError};
use support::{PATIENCE, Rng, bind_channel, is_payload, payload, recv, seed};

const N: u64 = 100_000;
const MIB: u64 = 1 << 20;

fn sizes(rng: &mut Rng, n: u64) -> Vec<usize> {
    (0..n)
        .map(|i| match i {
            0 => MIB as usize,
            1 => 0,
            _ if rng.below(100) == 0 => rng.below(MIB + 1) as usize,
            _ => rng.below(1024) as usize,
        })
        .collect()
}

/// One side: checks what it receives and what `sent` hands back, reports when both are complete.
struct Side {
    name: &'static str,
    mine: (u64, Arc<Vec<usize>>),
    peers: (u64, Arc<Vec<usize>>),
    received: u64,
    sent: u64,
    writable: flume::Sender<()>,
    done: flume::Sender<Result<(), String>>,
    closed: flume::Sender<CloseInfo>,
}

impl Side {
    fn check_done(&self) {
        if self.received == N && self.sent == N {
            let _ = self.done.send(Ok(()));
        }
    }
}

impl QueueListener for Side {
    fn received(&mut self, _queue: &MessageQueue, msg: Bytes) {
        let (stream, sizes) = &self.peers;
        let i = self.received;
        if i >= N || !is_payload(*stream, i, sizes[i as usize], &msg) {
            let _ = self.done.send(Err(format!(
                "{}: received message {i} wrong ({} bytes, index {:?})",
                self.name,
                msg.len(),
                support::index_of(&msg)
            )));
            return;
        }
        self.received += 1;
        self.check_done();
    }

    fn sent(&mut self, _queue: &MessageQueue, msg: Bytes) {
        let (stream, sizes) = &self.mine;
        let i = self.sent;
        // The very message sent comes back: check it whole only now and then, to stay fast.
        let ok = i < N
            && msg.len() == sizes[i as usize]
            && (msg.len() < 8 || support::index_of(&msg) == Some(i))
            && (!i.is_multiple_of(1000) || is_payload(*stream, i, sizes[i as usize], &msg));
        if !ok {
            let _ = self.done.send(Err(format!(
                "{}: `sent` handed back the wrong message at {i}",
                self.name
            )));
            return;
        }
        self.sent += 1;
        self.check_done();
    }

    fn writable(&mut self, _queue: &MessageQueue) {
        let _ = self.writable.try_send(());
    }

    fn closed(&mut self, _queue: &MessageQueue, info: CloseInfo) {
        let _ = self.closed.send(info);
    }
}

struct Running {
    queue: MessageQueue,
    done: flume::Receiver<Result<(), String>>,
    closed: flume::Receiver<CloseInfo>,
    sender: std::thread::JoinHandle<()>,
}

fn start(
    name: &'static str,
    queue: MessageQueue,
    mine: (u64, Arc<Vec<usize>>),
    peers: (u64, Arc<Vec<usize>>),
) -> Running {
    let (writable_tx, writable) = flume::bounded(1);
    let (done_tx, done) = flume::unbounded();
    let (closed_tx, closed) = flume::unbounded();
    queue
        .set_listener(Side {
            name,
            mine: mine.clone(),
            peers,
            received: 0,
            sent: 0,
            writable: writable_tx,
            done: done_tx,
            closed: closed_tx,
        })
        .unwrap();
    let q = queue.clone();
    let sender = std::thread::spawn(move || {
        let (stream, sizes) = mine;
        for i in 0..N {
            let mut msg = payload(stream, i, sizes[i as usize]);
            loop {
                match q.send(msg) {
                    Ok(()) => break,
                    Err(SendError::Full { msg: back, .. }) => {
                        msg = back;
                        writable
                            .recv_timeout(PATIENCE)
                            .unwrap_or_else(|e| panic!("{name}: no `writable` at {i}: {e}"));
                    }
                    Err(err) => panic!("{name}: send {i}: {err}"),
                }
            }
        }
    });
    Running {
        queue,
        done,
        closed,
        sender,
    }
}

fn pumps() -> (
    mixbus_queue::task::pump::EventPump,
    QueueBroker,
    mixbus_queue::task::pump::EventPump,
    QueueBroker,
) {
    let (pa, a) = support::broker(QueueConfig::default());
    let (pb, b) = support::broker(QueueConfig::default());
    (pa, a, pb, b)
}

#[test]
fn smoke() {
    let (_pa, a, _pb, b) = pumps();
    let (addr, accepted) = bind_channel(&a);
    let client = b.connect_blocking(addr).unwrap().into_blocking().unwrap();
    let server = recv(&accepted, "the accepted queue")
        .into_blocking()
        .unwrap();
    client.send_timeout("to server", PATIENCE).unwrap();
    server.send_timeout("to client", PATIENCE).unwrap();
    assert_eq!(server.recv_timeout(PATIENCE).unwrap(), "to server");
    assert_eq!(client.recv_timeout(PATIENCE).unwrap(), "to client");
}

#[test]
fn both_directions_at_once_whole_in_order_exactly_once() {
    let seed = seed();
    let mut rng = Rng::new(seed.0);
    let a_sizes = Arc::new(sizes(&mut rng, N));
    let b_sizes = Arc::new(sizes(&mut rng, N));
    let (_pa, a, _pb, b) = pumps();
    let (addr, accepted) = bind_channel(&a);
    let client = b.connect_blocking(addr).unwrap();
    let server = recv(&accepted, "the accepted queue");
    let began = Instant::now();
    let sides = [
        start("server", server, (0, a_sizes.clone()), (1, b_sizes.clone())),
        start("client", client, (1, b_sizes), (0, a_sizes)),
    ];
    let limit = Duration::from_secs(60);
    for side in &sides {
        let left = limit.saturating_sub(began.elapsed());
        match side.done.recv_timeout(left) {
            Ok(Ok(())) => {}
            Ok(Err(err)) => panic!("{err}"),
            Err(err) => panic!("not complete within {limit:?}: {err}"),
        }
    }
    eprintln!("duplex: {N} messages each way in {:?}", began.elapsed());
    let [server, client] = sides.map(|side| {
        side.sender.join().unwrap();
        (side.queue, side.done, side.closed)
    });
    client.0.close();
    for side in [&client, &server] {
        let info = side.2.recv_timeout(PATIENCE).expect("closed");
        assert!(info.unsent.is_empty());
        // Nothing more than the N messages each way.
        assert!(
            side.1.try_recv().is_err(),
            "an extra callback after completion"
        );
        assert!(side.0.is_closed());
    }
}
