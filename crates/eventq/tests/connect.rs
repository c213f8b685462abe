//! Non-blocking connect: success is seen as writability, a refusal through `take_error`.

mod support;

use std::io::ErrorKind;

use mixbus_eventq::net::TcpStream;
use mixbus_eventq::{Error, Interest, Poll, Token};
use support::{listener, poll_until};

#[test]
fn smoke() {
    let mut poll = Poll::new().unwrap();
    let listener = listener();
    let addr = listener.local_addr().unwrap();
    let stream = TcpStream::connect(addr).unwrap();
    let stream = poll
        .registry()
        .register(stream, Token(1), Interest::WRITABLE)
        .unwrap();
    poll_until(&mut poll, |ev| ev.token() == Token(1) && ev.is_writable());
    assert!(stream.take_error().unwrap().is_none());
    assert_eq!(stream.peer_addr().unwrap(), addr);
    stream.set_nodelay(true).unwrap();
    assert!(stream.nodelay().unwrap());
}

#[test]
fn connect_to_a_closed_port_reports_refusal_through_take_error() {
    // Bind then drop a listener to find a port on which nothing listens.
    let addr = listener().local_addr().unwrap();
    let mut poll = Poll::new().unwrap();
    let stream = match TcpStream::connect(addr) {
        Ok(stream) => stream,
        // Some systems refuse a loopback connect at once; that is a refusal too.
        Err(Error::Connect { source, .. }) => {
            assert_eq!(source.kind(), ErrorKind::ConnectionRefused);
            return;
        }
        Err(other) => panic!("unexpected error {other}"),
    };
    let stream = poll
        .registry()
        .register(stream, Token(2), Interest::BOTH)
        .unwrap();
    poll_until(&mut poll, |ev| ev.token() == Token(2));
    let err = stream
        .take_error()
        .unwrap()
        .expect("a refused connect leaves an error");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused);
}

#[test]
fn binding_an_address_in_use_is_an_error() {
    let first = listener();
    let addr = first.local_addr().unwrap();
    match mixbus_eventq::net::TcpListener::bind(addr) {
        Err(Error::Bind { addr: a, source }) => {
            assert_eq!(a, addr);
            assert_eq!(source.kind(), ErrorKind::AddrInUse);
        }
        other => panic!("expected a bind error, got {other:?}"),
    }
}

#[test]
fn socket_options_apply() {
    let listener = listener();
    let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    stream.set_send_buffer_size(64 * 1024).unwrap();
    stream.set_recv_buffer_size(64 * 1024).unwrap();
    assert!(stream.send_buffer_size().unwrap() >= 64 * 1024);
    assert!(stream.recv_buffer_size().unwrap() >= 64 * 1024);
}
