//! Registering from thread B while thread A is blocked in `poll` delivers B's event to A.

mod support;

use std::io::Write;
use std::sync::mpsc;
use std::thread;

use mixbus_eventq::{Interest, Poll, Token};
use support::{loopback_pair, poll_until};

#[test]
fn smoke() {
    let poll = Poll::new().unwrap();
    let registry = poll.registry();
    let clone = registry.clone();
    thread::spawn(move || drop(clone)).join().unwrap();
    drop(registry);
}

#[test]
fn register_from_another_thread_while_blocked() {
    let mut poll = Poll::new().unwrap();
    let registry = poll.registry();
    let (tx, rx) = mpsc::channel();
    let b = thread::spawn(move || {
        let (client, server) = loopback_pair();
        let reg = registry
            .register(server, Token(77), Interest::READABLE)
            .unwrap();
        (&client).write_all(b"hi").unwrap();
        // Keep both ends alive until the poller has seen the event.
        rx.recv().unwrap();
        drop((reg, client));
    });
    // Thread A blocks (with a generous bound) before or while B registers: either way it sees it.
    let ev = poll_until(&mut poll, |ev| ev.token() == Token(77));
    assert!(ev.is_readable());
    tx.send(()).unwrap();
    b.join().unwrap();
}

#[test]
fn handles_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<mixbus_eventq::Registry>();
    send_sync::<mixbus_eventq::Waker>();
    send::<mixbus_eventq::Poll>();
    send_sync::<mixbus_eventq::Registration<mixbus_eventq::net::TcpStream>>();
    send_sync::<mixbus_eventq::Error>();
}

#[test]
fn the_poll_s_own_tokens_are_refused() {
    let poll = Poll::new().unwrap();
    let registry = poll.registry();
    for token in [usize::MAX, usize::MAX - 1] {
        let (_client, server) = loopback_pair();
        let err = registry
            .register(server, Token(token), Interest::READABLE)
            .expect_err("a reserved token");
        assert!(err.to_string().contains("register"), "{err}");
    }
    let (_client, server) = loopback_pair();
    let mut reg = registry
        .register(server, Token(usize::MAX - 2), Interest::READABLE)
        .unwrap();
    assert!(
        reg.reregister(Token(usize::MAX - 1), Interest::READABLE)
            .is_err()
    );
    assert_eq!(reg.token(), Token(usize::MAX - 2));
}
