//! Helpers shared by the event queue's integration tests: loopback pairs and bounded polling.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use mixbus_eventq::net::{TcpListener, TcpStream};
use mixbus_eventq::{Event, Events, Poll};

/// How long any test waits for something that should happen at once.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// A connected pair of non-blocking loopback streams: (client, server).
pub(crate) fn loopback_pair() -> (TcpStream, TcpStream) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (
        TcpStream::from_std(client).unwrap(),
        TcpStream::from_std(server).unwrap(),
    )
}

/// A bound non-blocking listener on a free loopback port.
pub(crate) fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// Polls until `want` holds for some event, or panics after [`PATIENCE`]; returns that event.
pub(crate) fn poll_until(poll: &mut Poll, mut want: impl FnMut(&Event) -> bool) -> Event {
    let deadline = Instant::now() + PATIENCE;
    let mut events = Events::with_capacity(256);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no matching event within {PATIENCE:?}");
        poll.poll(&mut events, Some(left)).unwrap();
        if let Some(ev) = events.iter().find(|ev| want(ev)) {
            return *ev;
        }
    }
}
