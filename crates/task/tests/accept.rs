//! `AcceptTask`: accepts every pending connection, and stops (closing the listener) when its owner
//! is killed.

mod support;

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mixbus_task::pump::EventPump;
use mixbus_task::pump::eventq::net::TcpListener;
use mixbus_task::{AcceptTask, TaskEvent};

use support::{PATIENCE, recv};

fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap()
}

#[test]
fn smoke() {
    let pump = EventPump::new().unwrap();
    let (tx, rx) = flume::unbounded();
    let task = AcceptTask::new(&pump, listener(), move |_stream, peer, _cx| {
        tx.send(peer).unwrap();
    })
    .unwrap();
    let addr = task.local_addr().unwrap();
    task.post(&pump).unwrap();
    let client = std::net::TcpStream::connect(addr).unwrap();
    assert_eq!(recv(&rx, "one accept"), client.local_addr().unwrap());
    assert_eq!(pump.stats().panics, 0);
}

#[test]
fn accepts_200_clients_connecting_at_once() {
    const CLIENTS: usize = 200;
    let pump = EventPump::new().unwrap();
    let (tx, rx) = flume::unbounded::<SocketAddr>();
    let task = AcceptTask::new(&pump, listener(), move |stream, peer, _cx| {
        drop(stream);
        tx.send(peer).unwrap();
    })
    .unwrap();
    let addr = task.local_addr().unwrap();
    let owner = pump.owner("acceptor");
    let runs_before = pump.stats().tasks_run;
    task.post_owned(&pump, &owner).unwrap();

    let clients: Vec<std::net::TcpStream> = (0..CLIENTS)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let expected: HashSet<SocketAddr> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
    assert_eq!(expected.len(), CLIENTS);

    let mut seen = HashSet::new();
    for i in 0..CLIENTS {
        let peer = recv(&rx, &format!("accept {i} of {CLIENTS}"));
        assert!(seen.insert(peer), "peer {peer} accepted twice");
    }
    assert_eq!(seen, expected, "every client is accepted, and only those");
    // Each run drains the backlog, so the task needs far fewer runs than connections (it may
    // well need more than one: the clients connect while it runs).
    let runs = pump.stats().tasks_run - runs_before;
    assert!(runs <= CLIENTS as u64, "{runs} runs for {CLIENTS} accepts");
    assert_eq!(pump.stats().panics, 0);
}

#[test]
fn killing_the_owner_closes_the_listener() {
    let pump = EventPump::new().unwrap();
    let (tx, rx) = flume::unbounded();
    let task = AcceptTask::new(&pump, listener(), move |_stream, peer, _cx| {
        let _ = tx.send(peer);
    })
    .unwrap();
    let addr = task.local_addr().unwrap();
    let owner = pump.owner("acceptor");
    task.post_owned(&pump, &owner).unwrap();
    let first = std::net::TcpStream::connect(addr).unwrap();
    assert_eq!(
        recv(&rx, "the accept before the kill"),
        first.local_addr().unwrap()
    );

    assert!(pump.kill(&owner));
    // The parked task is dropped with the owner, and the listener with it: connects are refused
    // from then on. Wait for that in bounded rounds.
    let deadline = Instant::now() + PATIENCE;
    loop {
        match std::net::TcpStream::connect(addr) {
            Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => break,
            // A connect that lands in the backlog while the listener closes is reset: the
            // listener is going away; try again until connects are refused outright.
            Err(err) if err.kind() == io::ErrorKind::ConnectionReset => {
                assert!(
                    Instant::now() < deadline,
                    "no refusal {PATIENCE:?} after the kill"
                );
            }
            Err(err) => panic!("unexpected connect error: {err}"),
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "still accepting {PATIENCE:?} after the kill"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
    assert!(
        pump.stats().cancelled >= 1,
        "the parked accept was cancelled"
    );
    assert_eq!(pump.stats().panics, 0);
}
