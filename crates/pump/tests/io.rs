//! I/O waits: a task parked on a source runs when it is ready, or when its timeout passes (never
//! early), and never after its owner is killed.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use mixbus_pump::eventq::Interest;
use mixbus_pump::{EventPump, FnTask, Next, Wake};
use support::{SLACK, loopback_pair, recv};

/// A task that reads `server` until it has data, parking on readiness in between; sends
/// `"parked"` each time it parks and finally why it ran and what it read.
fn reader(
    src: mixbus_pump::IoSource<mixbus_pump::eventq::net::TcpStream>,
    parked: flume::Sender<()>,
    got: flume::Sender<(Wake, Vec<u8>)>,
) -> impl mixbus_pump::Task {
    FnTask::new("reader", move |cx| {
        let mut buf = [0u8; 64];
        match (&*src).read(&mut buf) {
            Ok(n) => {
                got.send((cx.wake(), buf[..n].to_vec())).unwrap();
                Next::Done
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let _ = parked.send(());
                src.wait_readable()
            }
            Err(e) => panic!("read failed: {e}"),
        }
    })
}

#[test]
fn smoke() {
    let pump = EventPump::new().unwrap();
    let (_client, server) = loopback_pair();
    let src = pump.register(server).unwrap();
    assert_ne!(src.token().0, 0, "token 0 is the pump's waker");
}

#[test]
fn a_parked_task_runs_when_the_peer_writes() {
    let pump = EventPump::new().unwrap();
    let (client, server) = loopback_pair();
    let src = pump.register(server).unwrap();
    let (parked_tx, parked_rx) = flume::unbounded();
    let (got_tx, got_rx) = flume::unbounded();
    pump.post(reader(src, parked_tx, got_tx)).unwrap();
    recv(&parked_rx, "the reader to park");
    (&client).write_all(b"hi").unwrap();
    let (wake, data) = recv(&got_rx, "the reader to wake");
    assert!(
        matches!(wake, Wake::Ready(ev) if ev.is_readable()),
        "woke with {wake:?}"
    );
    assert_eq!(data, b"hi");
}

#[test]
fn a_wait_with_a_timeout_times_out_not_early() {
    let pump = EventPump::new().unwrap();
    let (_client, server) = loopback_pair();
    let src = pump.register(server).unwrap();
    let (tx, rx) = flume::unbounded();
    let timeout = Duration::from_millis(50);
    let mut parked_at = None;
    pump.post(FnTask::new("timeout", move |cx| match parked_at {
        None => {
            parked_at = Some(Instant::now());
            src.wait(Interest::READABLE, Some(timeout))
        }
        Some(at) => {
            tx.send((cx.wake(), at, Instant::now())).unwrap();
            Next::Done
        }
    }))
    .unwrap();
    let (wake, parked, ran) = recv(&rx, "the timed-out wait");
    assert_eq!(wake, Wake::TimedOut);
    assert!(
        ran >= parked + timeout,
        "woke {:?} early",
        parked + timeout - ran
    );
    assert!(
        ran < parked + timeout + SLACK,
        "woke {:?} late",
        ran - parked - timeout
    );
}

#[test]
fn killing_the_owner_cancels_a_parked_task() {
    let pump = EventPump::new().unwrap();
    let owner = pump.owner("conn");
    let (client, server) = loopback_pair();
    let src = pump.register(server).unwrap();
    let (parked_tx, parked_rx) = flume::unbounded();
    let (got_tx, got_rx) = flume::unbounded();
    pump.post_owned(&owner, reader(src, parked_tx, got_tx))
        .unwrap();
    recv(&parked_rx, "the owned reader to park");
    let cancelled_before = pump.stats().cancelled;
    assert!(pump.kill(&owner));
    (&client).write_all(b"too late").unwrap();

    // A second, unowned reader on another pair: once it woke on data written after the first
    // pair's, the pump has polled past the first pair's readiness.
    let (client2, server2) = loopback_pair();
    let src2 = pump.register(server2).unwrap();
    let (parked2_tx, parked2_rx) = flume::unbounded();
    let (got2_tx, got2_rx) = flume::unbounded();
    pump.post(reader(src2, parked2_tx, got2_tx)).unwrap();
    recv(&parked2_rx, "the unowned reader to park");
    (&client2).write_all(b"ok").unwrap();
    let (_, data) = recv(&got2_rx, "the unowned reader");
    assert_eq!(data, b"ok");
    let (tx, rx) = flume::unbounded();
    pump.post_fn("marker", move |_cx| tx.send(()).unwrap())
        .unwrap();
    recv(&rx, "a task after both");

    assert!(got_rx.try_recv().is_err(), "the killed owner's task ran");
    assert_eq!(pump.stats().cancelled, cancelled_before + 1);
}
