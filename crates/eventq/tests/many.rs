//! 1,000 registered connections each get their event.

mod support;

use std::collections::HashSet;
use std::io::Write;
use std::time::Instant;

use mixbus_eventq::{Events, Interest, Poll, Token};
use support::{PATIENCE, loopback_pair};

const CONNECTIONS: usize = 1000;

#[test]
fn smoke() {
    let mut poll = Poll::new().unwrap();
    let (c, s) = loopback_pair();
    let _s = poll
        .registry()
        .register(s, Token(0), Interest::READABLE)
        .unwrap();
    (&c).write_all(b"1").unwrap();
    support::poll_until(&mut poll, |ev| ev.token() == Token(0));
}

#[test]
fn thousand_connections_each_get_their_event() {
    let mut poll = Poll::new().unwrap();
    let registry = poll.registry();
    let mut clients = Vec::with_capacity(CONNECTIONS);
    let mut servers = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let (client, server) = loopback_pair();
        servers.push(
            registry
                .register(server, Token(i), Interest::READABLE)
                .unwrap(),
        );
        clients.push(client);
    }
    for client in &clients {
        client.set_nodelay(true).unwrap();
        (&*client).write_all(b"x").unwrap();
    }
    let mut seen = HashSet::new();
    let mut events = Events::with_capacity(128);
    let deadline = Instant::now() + PATIENCE;
    while seen.len() < CONNECTIONS {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "only {} of {CONNECTIONS} connections reported",
            seen.len()
        );
        poll.poll(&mut events, Some(left)).unwrap();
        for ev in &events {
            assert!(ev.is_readable());
            assert!(ev.token().0 < CONNECTIONS, "unknown token {:?}", ev.token());
            seen.insert(ev.token());
        }
    }
}
