//! `ConnectTask`: retries while nothing listens, connects once something does, and is refused
//! with the last error after the connect timeout; the callback runs exactly once either way.

mod support;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mixbus_task::pump::EventPump;
use mixbus_task::pump::eventq::net::TcpStream;
use mixbus_task::{ConnectError, ConnectOptions, ConnectTask, TaskEvent};

use support::{SLACK, barrier, free_addr, recv};

type Done = Result<TcpStream, ConnectError>;

/// Posts a connect to `addr`; returns the channel its callback reports to.
fn connect(pump: &EventPump, addr: SocketAddr, options: ConnectOptions) -> flume::Receiver<Done> {
    let (tx, rx) = flume::unbounded();
    ConnectTask::new(addr, options, move |result, _cx| {
        tx.send(result).unwrap();
    })
    .post(pump)
    .unwrap();
    rx
}

#[test]
fn smoke() {
    let pump = EventPump::new().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let rx = connect(&pump, addr, ConnectOptions::default());
    let stream = recv(&rx, "the connect").expect("connected");
    assert_eq!(stream.peer_addr().unwrap(), addr);
    let (_peer, from) = listener.accept().unwrap();
    assert_eq!(from, stream.local_addr().unwrap());
}

#[test]
fn connects_to_a_port_that_starts_listening_later() {
    const LATER: Duration = Duration::from_millis(300);
    let pump = EventPump::new().unwrap();
    let addr = free_addr();
    let start = Instant::now();
    let rx = connect(
        &pump,
        addr,
        ConnectOptions::default().with_connect_timeout(Duration::from_secs(10)),
    );
    // The sleep schedules the event under test (the port starts listening later); it is not a
    // stand-in for synchronisation.
    let listening = std::thread::spawn(move || {
        std::thread::sleep(LATER);
        let listener = std::net::TcpListener::bind(addr).unwrap();
        let (peer, from) = listener.accept().unwrap();
        (listener, peer, from)
    });
    let stream = recv(&rx, "the connect").expect("connected once the port listens");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= LATER,
        "connected before anything listened: {elapsed:?}"
    );
    assert!(elapsed < LATER + SLACK, "connected too late: {elapsed:?}");
    assert_eq!(stream.peer_addr().unwrap(), addr);
    let (_listener, _peer, from) = listening.join().unwrap();
    assert_eq!(from, stream.local_addr().unwrap());

    barrier(&pump);
    assert!(rx.try_recv().is_err(), "the callback ran more than once");
    assert_eq!(pump.stats().panics, 0);
}

#[test]
fn refused_after_the_connect_timeout_with_the_last_error() {
    const TIMEOUT: Duration = Duration::from_millis(400);
    let pump = EventPump::new().unwrap();
    let addr = free_addr();
    let start = Instant::now();
    let rx = connect(
        &pump,
        addr,
        ConnectOptions::default().with_connect_timeout(TIMEOUT),
    );
    let err = recv(&rx, "the refusal").expect_err("nothing listens");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= TIMEOUT,
        "refused before the timeout: {elapsed:?}"
    );
    assert!(elapsed < TIMEOUT + SLACK, "refused too late: {elapsed:?}");
    assert_eq!(err.addr, addr);
    assert!(err.attempts > 1, "retried: {err}");
    assert!(err.elapsed >= TIMEOUT, "{err}");
    assert_eq!(err.source.kind(), io::ErrorKind::ConnectionRefused, "{err}");
    let source = std::error::Error::source(&err).expect("the last io error is the source");
    assert_eq!(source.to_string(), err.source.to_string());

    barrier(&pump);
    assert!(rx.try_recv().is_err(), "the callback ran more than once");
    assert_eq!(pump.stats().panics, 0);
}
