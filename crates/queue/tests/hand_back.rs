//! Handing written messages back: a listener that overrides neither `sent` nor `sent_all` gets
//! nothing back (the queue stops keeping them), one that overrides `sent` gets every message
//! back, also when it delegates to another listener's defaults or replaces a listener that had
//! none.
mod support;

use std::collections::VecDeque;

use mixbus_queue::task::Bytes;
use mixbus_queue::{MessageQueue, QueueConfig, QueueListener};
use support::{Forward, broker, pair, payloads, receive, recv, until_closed};

/// Takes nothing back: the defaults.
struct Quiet;

impl QueueListener for Quiet {
    fn received(&mut self, _queue: &MessageQueue, _msg: Bytes) {}
}

/// Overrides `sent` and then calls the defaults of a listener of another type.
struct Delegating {
    inner: Quiet,
    sent: flume::Sender<Bytes>,
}

impl QueueListener for Delegating {
    fn received(&mut self, queue: &MessageQueue, msg: Bytes) {
        self.inner.received(queue, msg);
    }

    fn sent(&mut self, queue: &MessageQueue, msg: Bytes) {
        let _ = self.sent.send(msg.clone());
        self.inner.sent(queue, msg);
    }
}

/// Messages 0..n of stream 7, sizes around the copy threshold.
fn messages(from: u64, n: u64) -> Vec<Bytes> {
    payloads(7, from, n, &[16, 0, 300, 700, 8])
}

#[test]
fn smoke() {
    let (_pump, broker) = broker(QueueConfig::default());
    let (client, server) = pair(&broker);
    let (server_l, server_rx) = Forward::new();
    client.set_listener(Quiet).unwrap();
    server.set_listener(server_l).unwrap();
    let first = messages(0, 1000);
    let mut batch: VecDeque<Bytes> = first.iter().cloned().collect();
    client.send_all(&mut batch).unwrap();
    assert_eq!(receive(&server_rx, first.len()), first);

    // A listener that wants them back replaces the quiet one: it gets every later message back.
    let (client_l, client_rx) = Forward::new();
    client.set_listener(client_l).unwrap();
    let second = messages(1000, 500);
    for msg in &second {
        client.send(msg.clone()).unwrap();
    }
    assert!(client.close());
    let seen = until_closed(&client_rx, "client");
    assert_eq!(seen.sent, second);
    let server_seen = until_closed(&server_rx, "server");
    assert_eq!(server_seen.received, second);
}

#[test]
fn a_listener_delegating_to_defaults_still_gets_every_message_back() {
    let (_pump, broker) = broker(QueueConfig::default());
    let (client, server) = pair(&broker);
    let (sent_tx, sent_rx) = flume::unbounded();
    client
        .set_listener(Delegating {
            inner: Quiet,
            sent: sent_tx,
        })
        .unwrap();
    let (server_l, server_rx) = Forward::new();
    server.set_listener(server_l).unwrap();
    let msgs = messages(0, 3000);
    for chunk in msgs.chunks(100) {
        let mut batch: VecDeque<Bytes> = chunk.iter().cloned().collect();
        client.send_all(&mut batch).unwrap();
        assert_eq!(receive(&server_rx, chunk.len()), chunk);
    }
    let back: Vec<Bytes> = (0..msgs.len())
        .map(|_| recv(&sent_rx, "a message handed back"))
        .collect();
    assert_eq!(back, msgs);
}
