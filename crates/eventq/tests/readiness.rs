//! Readable and writable events on real loopback sockets, and silence after deregistration.

mod support;

use std::io::{Read, Write};
use std::time::Duration;

use mixbus_eventq::{Events, Interest, Poll, Token};
use support::{loopback_pair, poll_until};

#[test]
fn smoke() {
    let mut poll = Poll::new().unwrap();
    let (client, server) = loopback_pair();
    let client = poll
        .registry()
        .register(client, Token(1), Interest::WRITABLE)
        .unwrap();
    let ev = poll_until(&mut poll, |ev| ev.token() == Token(1));
    assert!(ev.is_writable());
    drop((client, server));
}

#[test]
fn readable_after_peer_writes() {
    let mut poll = Poll::new().unwrap();
    let (client, server) = loopback_pair();
    let server = poll
        .registry()
        .register(server, Token(7), Interest::READABLE)
        .unwrap();

    // Nothing to read yet: a short poll reports nothing for the server.
    let mut events = Events::with_capacity(8);
    poll.poll(&mut events, Some(Duration::from_millis(50)))
        .unwrap();
    assert!(events.iter().all(|ev| ev.token() != Token(7)));

    (&client).write_all(b"ping").unwrap();
    let ev = poll_until(&mut poll, |ev| ev.token() == Token(7));
    assert!(ev.is_readable());
    let mut buf = [0u8; 16];
    let n = (&*server).read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
    // Drained: the next read would block, which is "wait again", not an error.
    let err = (&*server).read(&mut buf).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
}

#[test]
fn hang_up_is_readable_and_reads_end_of_stream() {
    let mut poll = Poll::new().unwrap();
    let (client, server) = loopback_pair();
    let server = poll
        .registry()
        .register(server, Token(3), Interest::READABLE)
        .unwrap();
    drop(client);
    let ev = poll_until(&mut poll, |ev| ev.token() == Token(3));
    assert!(ev.is_readable() || ev.is_hup());
    let mut buf = [0u8; 4];
    assert_eq!((&*server).read(&mut buf).unwrap(), 0);
}

#[test]
fn rearm_reports_readiness_that_is_already_there() {
    let mut poll = Poll::new().unwrap();
    let (client, server) = loopback_pair();
    let server = poll
        .registry()
        .register(server, Token(4), Interest::READABLE)
        .unwrap();
    (&client).write_all(b"x").unwrap();
    poll_until(&mut poll, |ev| ev.token() == Token(4));
    // The edge was consumed without reading; re-arming reports the data that is still there.
    server.rearm(Interest::READABLE).unwrap();
    let ev = poll_until(&mut poll, |ev| ev.token() == Token(4));
    assert!(ev.is_readable());
}

#[test]
fn deregistered_sources_deliver_nothing() {
    let mut poll = Poll::new().unwrap();
    let (client, server) = loopback_pair();
    let reg = poll
        .registry()
        .register(server, Token(9), Interest::READABLE)
        .unwrap();
    let server = reg.into_inner().unwrap();
    (&client).write_all(b"data").unwrap();

    let dropped_pair = loopback_pair();
    let dropped = poll
        .registry()
        .register(dropped_pair.1, Token(10), Interest::READABLE)
        .unwrap();
    drop(dropped);
    (&dropped_pair.0).write_all(b"data").unwrap();

    let mut events = Events::with_capacity(8);
    poll.poll(&mut events, Some(Duration::from_millis(200)))
        .unwrap();
    assert!(events.is_empty(), "got {events:?}");
    // The data is still there for whoever reads the stream directly.
    let mut buf = [0u8; 8];
    assert_eq!((&server).read(&mut buf).unwrap(), 4);
}
