//! Connecting: a connect before the bind waits for it, a connect nobody answers is refused once,
//! after the timeout and not before, a second bind of an address fails, and `unbind` stops
//! accepting while the queues already open keep going.
mod support;

use std::time::{Duration, Instant};

use mixbus_queue::{ConnectListener, Error, MessageQueue, QueueConfig};
use support::{SLACK, broker, echo_server, free_addr, recv};

const WAIT: Duration = Duration::from_secs(10);

/// Forwards the outcome of a connect.
struct Outcome(flume::Sender<Result<MessageQueue, Error>>);

impl ConnectListener for Outcome {
    fn connected(self, queue: MessageQueue) {
        let _ = self.0.send(Ok(queue));
    }
    fn refused(self, reason: Error) {
        let _ = self.0.send(Err(reason));
    }
}

fn echo_once(queue: MessageQueue, text: &'static str) {
    let client = queue.into_blocking().unwrap();
    client.send_timeout(text, WAIT).unwrap();
    assert_eq!(client.recv_timeout(WAIT).unwrap(), text);
}

#[test]
fn smoke() {
    let (_pump, broker) = broker(QueueConfig::default());
    let addr = echo_server(&broker);
    assert_eq!(broker.bound(), [addr]);
    let client = broker.connect_blocking(addr).unwrap();
    assert_eq!(client.peer_addr(), addr);
    echo_once(client, "hello");
}

#[test]
fn a_connect_before_the_bind_waits_for_it() {
    let (_pump, broker) = broker(QueueConfig::default());
    let addr = free_addr();
    let (tx, rx) = flume::unbounded();
    broker.connect(addr, Outcome(tx)).unwrap();
    // Part of the scenario, not a wait for a condition: the listener comes 300 ms later.
    std::thread::sleep(Duration::from_millis(300));
    assert!(rx.is_empty(), "nothing may be decided while nobody listens");
    let bound = broker
        .bind(addr, |q: MessageQueue| {
            q.set_listener(support::Echo::new()).unwrap()
        })
        .unwrap();
    assert_eq!(bound, addr);
    let queue = recv(&rx, "the connect").expect("connected once the address is bound");
    echo_once(queue, "late but there");
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "one outcome only"
    );
}

#[test]
fn a_connect_nobody_answers_is_refused_once_after_the_timeout() {
    let timeout = Duration::from_millis(500);
    let (_pump, broker) = broker(QueueConfig::default().with_connect_timeout(timeout));
    let (tx, rx) = flume::unbounded();
    let start = Instant::now();
    broker.connect(free_addr(), Outcome(tx)).unwrap();
    match rx.recv_timeout(timeout + WAIT) {
        Ok(Err(Error::Refused(err))) => assert!(err.attempts >= 1, "{err}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let took = start.elapsed();
    assert!(
        took >= timeout,
        "refused after {took:?}, before the {timeout:?} timeout"
    );
    assert!(took < timeout + SLACK, "refused late: {took:?}");
    // Exactly once: the listener was consumed and the channel disconnects.
    assert!(matches!(
        rx.recv_timeout(WAIT),
        Err(flume::RecvTimeoutError::Disconnected)
    ));
    // The blocking form reports the same.
    assert!(matches!(
        broker.connect_blocking(free_addr()),
        Err(Error::Refused(_))
    ));
}

#[test]
fn binding_a_bound_address_fails() {
    let (_pump, broker) = broker(QueueConfig::default());
    let addr = echo_server(&broker);
    let again = broker.bind(addr, |_q: MessageQueue| {});
    assert!(
        matches!(again, Err(Error::Bind { addr: a, .. }) if a == addr),
        "{again:?}"
    );
    // Another broker on another pump cannot take it either.
    let (_pump2, other) = support::broker(QueueConfig::default());
    let again = other.bind(addr, |_q: MessageQueue| {});
    assert!(matches!(again, Err(Error::Bind { .. })), "{again:?}");
    // The first binding still serves.
    echo_once(broker.connect_blocking(addr).unwrap(), "still here");
}

#[test]
fn unbind_stops_accepting_and_leaves_open_queues_open() {
    let config = QueueConfig::default().with_connect_timeout(Duration::from_millis(300));
    let (_pump, broker) = broker(config);
    let addr = echo_server(&broker);
    let open = broker
        .connect_blocking(addr)
        .unwrap()
        .into_blocking()
        .unwrap();
    open.send_timeout("before", WAIT).unwrap();
    assert_eq!(open.recv_timeout(WAIT).unwrap(), "before");
    broker.unbind(addr).unwrap();
    assert!(broker.bound().is_empty());
    assert!(matches!(broker.unbind(addr), Err(Error::NotBound(a)) if a == addr));
    // A new connect is refused (after retrying up to its timeout).
    match broker.connect_blocking(addr) {
        Err(Error::Refused(_)) => {}
        other => panic!("expected a refusal after unbind, got {other:?}"),
    }
    // The queue accepted before keeps exchanging.
    for i in 0..100u32 {
        open.send_timeout(i.to_string(), WAIT).unwrap();
        assert_eq!(open.recv_timeout(WAIT).unwrap(), i.to_string());
    }
    assert!(!open.queue().is_closed());
}

/// Answers every message with the name of the thread that handled it.
struct WhoAmI;

impl mixbus_queue::QueueListener for WhoAmI {
    fn received(&mut self, queue: &MessageQueue, _msg: mixbus_queue::task::Bytes) {
        let name = std::thread::current().name().unwrap_or("?").to_owned();
        let _ = queue.send(name);
    }
}

#[test]
fn connections_spread_over_the_connection_pumps_in_turn() {
    use mixbus_queue::QueueBroker;
    use mixbus_queue::task::pump::{EventPump, PumpConfig};
    let named = |name: &str| EventPump::with_config(PumpConfig::default().with_name(name)).unwrap();
    let (own, a, b) = (named("q-own"), named("q-conn-a"), named("q-conn-b"));
    let server = QueueBroker::new(own.handle(), QueueConfig::default())
        .with_connection_pumps(vec![a.handle(), b.handle()]);
    let addr = server
        .bind(support::any_port(), |queue: MessageQueue| {
            queue.set_listener(WhoAmI).unwrap();
        })
        .unwrap();
    // Connections made by a spread broker go round its pumps too.
    let client = named("q-client");
    let (c, d) = (named("q-client-c"), named("q-client-d"));
    let clients = QueueBroker::new(client.handle(), QueueConfig::default())
        .with_connection_pumps(vec![c.handle(), d.handle()]);
    let mut served_on = Vec::new();
    let mut client_pumps = Vec::new();
    for _ in 0..4 {
        let queue = clients.connect_blocking(addr).unwrap();
        let (tx, rx) = flume::unbounded();
        struct Reply(flume::Sender<(String, String)>);
        impl mixbus_queue::QueueListener for Reply {
            fn received(&mut self, _q: &MessageQueue, msg: mixbus_queue::task::Bytes) {
                let me = std::thread::current().name().unwrap_or("?").to_owned();
                let _ = self
                    .0
                    .send((String::from_utf8_lossy(&msg).into_owned(), me));
            }
        }
        queue.set_listener(Reply(tx)).unwrap();
        queue.send("who").unwrap();
        let (server_thread, client_thread) = recv(&rx, "the reply");
        served_on.push(server_thread);
        client_pumps.push(client_thread);
        queue.close();
    }
    assert_eq!(served_on, ["q-conn-a", "q-conn-b", "q-conn-a", "q-conn-b"]);
    assert_eq!(
        client_pumps,
        ["q-client-c", "q-client-d", "q-client-c", "q-client-d"]
    );
}
