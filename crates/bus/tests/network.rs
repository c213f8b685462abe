//! The bus across connections: killed consumers, a restarted server, many clients at once and a
//! slow consumer cut off while a fast one keeps up.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mixbus_bus::protocol::Op;
use mixbus_bus::{
    Broker, BusServer, Error, Handler, Message, RemoteBroker, RemoteConfig, ServerConfig,
    SubscribeOptions,
};
use support::{
    Raw, WAIT, collector, publish_numbered, recv, remote, server, server_with, wait_until,
};

/// What a client's listener hears of its connection: `disconnected: <reason>` and
/// `reconnected`, in order.
#[derive(Debug, Default)]
struct ConnEvents(Mutex<Vec<String>>);

impl mixbus_bus::BrokerListener for ConnEvents {
    fn disconnected(&self, reason: &str) {
        self.0
            .lock()
            .unwrap()
            .push(format!("disconnected: {reason}"));
    }
    fn reconnected(&self) {
        self.0.lock().unwrap().push("reconnected".into());
    }
}

impl ConnEvents {
    fn attach(client: &RemoteBroker) -> Arc<ConnEvents> {
        let events = Arc::new(ConnEvents::default());
        client.add_listener(events.clone());
        events
    }

    fn get(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

#[test]
fn smoke() {
    let server = server(2);
    let a = remote(&server);
    let b = remote(&server);
    let (h, rx) = collector();
    let _sub = b
        .subscribe("net.*", SubscribeOptions::default(), h)
        .unwrap();
    let id = a.publish(Message::new("net.hello", "hi")).unwrap();
    let m = recv(&rx);
    assert_eq!(m.id(), id);
    assert_eq!(&m.payload()[..], b"hi");
    assert!(a.ping().unwrap() < WAIT);
    let rows = a.server_stats().unwrap();
    assert!(
        rows.iter().any(|(k, v)| k == "connections" && v == "2"),
        "{rows:?}"
    );
}

#[test]
fn publish_slice_without_confirms_tells_the_listeners() {
    // The short way builds no message, but one is made for listeners when there are any.
    let server = server(2);
    let client = RemoteBroker::connect(
        server.local_addr(),
        RemoteConfig::default().with_confirm(false),
    )
    .unwrap();
    #[derive(Default)]
    struct Published(Mutex<Vec<String>>);
    impl mixbus_bus::BrokerListener for Published {
        fn published(&self, message: &Message) {
            let payload = String::from_utf8_lossy(message.payload());
            let told = format!("{} {payload}", message.topic());
            self.0.lock().unwrap().push(told);
        }
    }
    let heard = Arc::new(Published::default());
    client.add_listener(heard.clone());
    client.publish_slice("told.a", b"one").unwrap();
    client.publish(Message::new("told.b", "two")).unwrap();
    assert_eq!(*heard.0.lock().unwrap(), ["told.a one", "told.b two"]);
}

/// The message ids of the next DELIVER, DELIVERS or PACKED frame for `sub`, with their payloads.
fn read_deliveries(raw: &mut Raw, sub: u64) -> Vec<(u64, Vec<u8>)> {
    match raw.read_op() {
        Some(Op::Deliver { sub: s, delivery }) if s == sub => {
            vec![(delivery.message, delivery.payload.to_vec())]
        }
        Some(Op::Delivers { sub: s, messages } | Op::Packed { sub: s, messages }) if s == sub => {
            messages
                .into_iter()
                .map(|d| (d.message, d.payload.to_vec()))
                .collect()
        }
        other => panic!("expected deliveries for sub {sub}, got {other:?}"),
    }
}

#[test]
fn large_payloads_fan_out_whole_and_in_order() {
    // Payloads from 1 KiB up go out from the message's own buffer, in frames of several parts;
    // small ones are copied into the frame. Mixed, fanned out to two subscribers and a group.
    const SIZES: [usize; 7] = [0, 16, 1023, 1024, 5000, 70_000, 200_000];
    const N: usize = 700;
    let payload = |i: usize| -> Vec<u8> {
        let len = SIZES[i % SIZES.len()];
        (0..len).map(|k| (i * 31 + k * 7) as u8).collect()
    };
    // About 28 MB go to each subscription as fast as the publisher can send them. Under load a
    // consumer may fall 8 MiB (the default outbound limit) behind and be cut off as a slow
    // consumer, which is the limit doing its job but not what this test is about: lift it.
    let server = server_with(ServerConfig::default().with_max_outbound_bytes(1 << 30), 1);
    let subscriber = remote(&server);
    let (h1, rx1) = collector();
    let (h2, rx2) = collector();
    let (h3, rx3) = collector();
    let _a = subscriber
        .subscribe("big.>", SubscribeOptions::default(), h1)
        .unwrap();
    let other = remote(&server);
    let _b = other
        .subscribe("big.*", SubscribeOptions::default(), h2)
        .unwrap();
    let _g = other
        .subscribe("big.*", SubscribeOptions::group("g"), h3)
        .unwrap();
    let publisher = remote(&server);
    for i in 0..N {
        publisher
            .publish(Message::new("big.data", payload(i)).with_header("i", i.to_string()))
            .unwrap();
    }
    for rx in [&rx1, &rx2, &rx3] {
        for i in 0..N {
            let m = recv(rx);
            assert_eq!(m.header("i"), Some(i.to_string().as_str()));
            assert!(m.payload()[..] == payload(i)[..], "message {i} differs");
        }
    }
}

#[test]
fn a_version_1_client_gets_one_deliver_per_message() {
    let server = server(2);
    let mut old = Raw::connect(server.local_addr());
    assert!(matches!(
        old.hello_version(1, None),
        Op::Welcome { version: 1, .. }
    ));
    old.send(&Op::Subscribe {
        sub: 1,
        pattern: "old".into(),
        options: SubscribeOptions::default(),
    });
    assert_eq!(old.read_op(), Some(Op::Subscribed { sub: 1 }));
    let publisher = remote(&server);
    for i in 0..20 {
        publisher
            .publish(Message::new("old", i.to_string()))
            .unwrap();
    }
    for i in 0..20 {
        match old.read_op() {
            Some(Op::Deliver { sub: 1, delivery }) => {
                assert_eq!(delivery.payload, i.to_string().as_bytes())
            }
            other => panic!("expected DELIVER {i}, got {other:?}"),
        }
    }
}

#[test]
fn each_version_gets_its_own_framing_of_deliveries() {
    // Version 2 gets DELIVERS with every field of every delivery; version 3 gets PACKED, each
    // delivery leaving out what repeats the previous one. Both carry the same messages.
    let server = server(2);
    let mut clients: Vec<Raw> = [2, 3]
        .into_iter()
        .map(|version| {
            let mut raw = Raw::connect(server.local_addr());
            assert!(matches!(
                raw.hello_version(version, None),
                Op::Welcome { version: v, .. } if v == version
            ));
            raw.send(&Op::Subscribe {
                sub: 1,
                pattern: "framing.>".into(),
                options: SubscribeOptions::default(),
            });
            assert_eq!(raw.read_op(), Some(Op::Subscribed { sub: 1 }));
            raw
        })
        .collect();
    let publisher = remote(&server);
    const N: usize = 40;
    for i in 0..N {
        // Two topics in turn, some messages with a header: the packed fields change and repeat.
        let mut msg = Message::new(format!("framing.{}", i / 10 % 2), i.to_string());
        if i % 7 == 0 {
            msg = msg.with_header("i", i.to_string());
        }
        publisher.publish(msg).unwrap();
    }
    let mut got = Vec::new();
    for (raw, packed) in clients.iter_mut().zip([false, true]) {
        let mut seen = Vec::new();
        while seen.len() < N {
            match raw.read_op() {
                Some(Op::Delivers { sub: 1, messages }) if !packed => seen.extend(messages),
                Some(Op::Packed { sub: 1, messages }) if packed => seen.extend(messages),
                other => panic!("packed {packed}: unexpected {other:?}"),
            }
        }
        for (i, d) in seen.iter().enumerate() {
            assert_eq!(d.attempt, 1);
            assert_eq!(d.payload, i.to_string().as_bytes(), "packed {packed}");
            assert_eq!(*d.topic, format!("framing.{}", i / 10 % 2));
            assert_eq!(d.headers.is_empty(), i % 7 != 0);
        }
        got.push(seen);
    }
    assert_eq!(got[0], got[1], "the same deliveries either way");
}

/// A raw member of group `w` on topic `win` (sub 1) that holds at most 4 deliveries un-acked.
fn member_of_4(server: &BusServer) -> Raw {
    let mut raw = Raw::welcomed(server.local_addr());
    raw.send(&Op::Subscribe {
        sub: 1,
        pattern: "win".into(),
        options: SubscribeOptions::group("w")
            .manual_ack()
            .with_max_in_flight(4),
    });
    assert_eq!(raw.read_op(), Some(Op::Subscribed { sub: 1 }));
    raw
}

#[test]
fn acks_in_one_frame_free_the_in_flight_window() {
    let server = server(2);
    let mut raw = member_of_4(&server);
    let publisher = remote(&server);
    for i in 0..8 {
        publisher
            .publish(Message::new("win", i.to_string()))
            .unwrap();
    }
    // The window holds 4; nothing more comes until they are acked, all in one ACKS frame.
    let mut first = Vec::new();
    while first.len() < 4 {
        first.extend(read_deliveries(&mut raw, 1));
    }
    assert_eq!(first.len(), 4);
    raw.send(&Op::Acks {
        sub: 1,
        messages: first.iter().map(|(id, _)| *id).collect(),
    });
    let mut rest = Vec::new();
    while rest.len() < 4 {
        rest.extend(read_deliveries(&mut raw, 1));
    }
    let payloads: Vec<Vec<u8>> = first.into_iter().chain(rest).map(|(_, p)| p).collect();
    let expected: Vec<Vec<u8>> = (0..8).map(|i: i32| i.to_string().into_bytes()).collect();
    assert_eq!(payloads, expected);
}

#[test]
fn acks_by_range_free_the_window_whatever_the_ranges_name() {
    // ACKR names ids by range. A range may hold ids never delivered to the subscription (here
    // those of another topic, and billions past them): the server finds what is in flight
    // rather than trying each id, so even a range of 4 billion ids is acked at once.
    let server = server(2);
    let mut raw = member_of_4(&server);
    let publisher = remote(&server);
    let mut other = Vec::new();
    for i in 0..12 {
        publisher
            .publish(Message::new("win", i.to_string()))
            .unwrap();
        other.push(publisher.publish(Message::new("other", "x")).unwrap().0);
    }
    let window = |raw: &mut Raw| {
        let mut got = Vec::new();
        while got.len() < 4 {
            got.extend(read_deliveries(raw, 1));
        }
        assert_eq!(got.len(), 4, "the window holds 4");
        got
    };
    let first = window(&mut raw);
    // One range from id 0 over everything: the 4 in flight and billions more.
    raw.send(&Op::AckRanges {
        sub: 1,
        ranges: vec![(0, u32::MAX)],
    });
    let second = window(&mut raw);
    // Exact ranges: each id of the second window with the other topic's id after it, which
    // was never delivered here.
    raw.send(&Op::AckRanges {
        sub: 1,
        ranges: second.iter().map(|&(id, _)| (id, 2)).collect(),
    });
    let third = window(&mut raw);
    assert!(other.iter().all(|id| !third.iter().any(|(t, _)| t == id)));
    let payloads: Vec<Vec<u8>> = [first, second, third]
        .into_iter()
        .flatten()
        .map(|(_, p)| p)
        .collect();
    let expected: Vec<Vec<u8>> = (0..12).map(|i: i32| i.to_string().into_bytes()).collect();
    assert_eq!(
        payloads, expected,
        "every message once, in order: none acked came again"
    );
}

/// A member that takes group messages and never acks them, on a raw socket.
fn raw_member(server: &BusServer, group: &str, topic: &str) -> Raw {
    let mut raw = Raw::welcomed(server.local_addr());
    raw.send(&Op::Subscribe {
        sub: 1,
        pattern: topic.into(),
        options: SubscribeOptions::group(group)
            .manual_ack()
            .with_max_in_flight(5),
    });
    assert_eq!(raw.read_op(), Some(Op::Subscribed { sub: 1 }));
    raw
}

#[test]
fn a_killed_consumers_unacked_messages_reach_the_other_member() {
    let server = server(2);
    let mut doomed = raw_member(&server, "g", "work");
    let publisher = remote(&server);
    const N: u64 = 20;
    publish_numbered(&publisher, "work", N);
    // The doomed member holds up to 5 un-acked deliveries; see one arrive, then kill it.
    assert!(matches!(
        doomed.read_op(),
        Some(Op::Deliver { .. } | Op::Delivers { .. } | Op::Packed { .. })
    ));
    let survivor = remote(&server);
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let s = seen.clone();
    let _sub = survivor
        .subscribe(
            "work",
            SubscribeOptions::group("g"),
            Handler::new(move |m| {
                s.lock().unwrap().insert(m.id().0);
                Ok(())
            }),
        )
        .unwrap();
    drop(doomed);
    wait_until("every message at the survivor", || {
        seen.lock().unwrap().len() as u64 == N
    });
}

#[test]
fn a_dropped_client_hands_its_unacked_messages_to_the_other_member() {
    let server = server(2);
    let doomed = remote(&server);
    let (h, rx) = collector();
    let opts = SubscribeOptions::group("g")
        .manual_ack()
        .with_max_in_flight(3);
    let _doomed_sub = doomed.subscribe("work", opts.clone(), h).unwrap();
    let publisher = remote(&server);
    const N: u64 = 10;
    publish_numbered(&publisher, "work", N);
    let held = recv(&rx);
    assert_eq!(held.attempt(), 1);
    let survivor = remote(&server);
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let s = seen.clone();
    let _sub = survivor
        .subscribe(
            "work",
            SubscribeOptions::group("g"),
            Handler::new(move |m| {
                s.lock().unwrap().insert(m.id().0);
                Ok(())
            }),
        )
        .unwrap();
    drop(_doomed_sub);
    drop(doomed);
    wait_until("every message at the survivor", || {
        seen.lock().unwrap().len() as u64 == N
    });
    assert!(seen.lock().unwrap().contains(&held.id().0));
}

#[test]
fn clients_reconnect_to_a_restarted_server_and_resubscribe() {
    let first = server(2);
    let addr = first.local_addr();
    let config = RemoteConfig::default().with_publish_timeout(Duration::from_millis(300));
    let client = RemoteBroker::connect(addr, config).unwrap();
    let events = ConnEvents::attach(&client);
    let (h, rx) = collector();
    let _sub = client
        .subscribe("r.*", SubscribeOptions::default(), h)
        .unwrap();
    client.publish(Message::new("r.one", "before")).unwrap();
    assert_eq!(&recv(&rx).payload()[..], b"before");

    first.shutdown(Duration::from_secs(2));
    drop(first);
    wait_until("the client to notice", || !client.is_connected());
    let down = client.publish(Message::new("r.one", "lost"));
    assert!(matches!(down, Err(Error::Disconnected { .. })), "{down:?}");

    // Another test's client socket may hold the freed port as its own ephemeral port for a
    // moment (both come from the same range): retry the bind until it is free, within the wait.
    let mut second = None;
    wait_until("the same address to be bound again", || {
        second = BusServer::bind(addr, ServerConfig::default()).ok();
        second.is_some()
    });
    let second = second.expect("bound");
    assert!(client.wait_connected(WAIT), "no reconnection");
    // Its listeners heard of the loss (with the server's reason: it said it was shutting down)
    // and of the return.
    wait_until("the listener to hear of the reconnection", || {
        events.get().last().map(String::as_str) == Some("reconnected")
    });
    let heard = events.get();
    assert_eq!(heard.len(), 2, "{heard:?}");
    assert!(heard[0].starts_with("disconnected: "), "{heard:?}");
    let id = client.publish(Message::new("r.two", "after")).unwrap();
    let m = recv(&rx);
    assert_eq!((m.id(), &m.payload()[..]), (id, &b"after"[..]));
    // A client of the new server reaches the re-subscribed handler too.
    let other = remote(&second);
    other.publish(Message::new("r.three", "other")).unwrap();
    assert_eq!(&recv(&rx).payload()[..], b"other");
}

#[test]
fn two_hundred_clients_connecting_at_once_are_all_served() {
    let server = server(2);
    let addr = server.local_addr();
    let (h, rx) = collector();
    let _sub = server
        .broker()
        .subscribe("crowd", SubscribeOptions::default(), h)
        .unwrap();
    const CLIENTS: usize = 200;
    let barrier = Arc::new(std::sync::Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                let client = RemoteBroker::connect(addr, RemoteConfig::default()).unwrap();
                client
                    .publish(Message::new("crowd", i.to_string()))
                    .unwrap();
                client
            })
        })
        .collect();
    let clients: Vec<RemoteBroker> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let got: HashSet<String> = (0..CLIENTS)
        .map(|_| String::from_utf8(recv(&rx).payload().to_vec()).unwrap())
        .collect();
    assert_eq!(got.len(), CLIENTS);
    assert_eq!(server.stats().connections, CLIENTS);
    drop(clients);
    wait_until("the connections to close", || {
        server.stats().connections == 0
    });
}

#[test]
fn a_slow_consumer_is_cut_off_while_a_fast_one_gets_everything() {
    let config = ServerConfig::default().with_max_outbound_bytes(2 << 20);
    let server = server_with(config, 2);
    // The slow consumer subscribes and then never reads its socket.
    let mut slow = Raw::welcomed(server.local_addr());
    slow.send(&Op::Subscribe {
        sub: 1,
        pattern: "feed".into(),
        options: SubscribeOptions::default().with_max_in_flight(1 << 20),
    });
    let fast = remote(&server);
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let _sub = fast
        .subscribe(
            "feed",
            SubscribeOptions::default().with_max_in_flight(1 << 20),
            Handler::new(move |_| {
                c.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }),
        )
        .unwrap();
    // Confirmed publishes pace the publisher at one round trip each, so a consumer that reads
    // keeps up; one that does not falls behind without bound.
    let publisher = remote(&server);
    const N: u64 = 3_000;
    let payload = mixbus_bus::Bytes::from(vec![7u8; 4096]);
    for _ in 0..N {
        publisher
            .publish(Message::new("feed", payload.clone()))
            .unwrap();
    }
    wait_until("the fast consumer to get everything", || {
        count.load(Ordering::SeqCst) == N
    });
    wait_until("the slow consumer to be cut off", || {
        let s = server.stats();
        s.slow_consumers == 1 && s.connections == 2
    });
    // Its stream holds what the kernel had buffered, then ends.
    slow.expect_closed();
    assert!(fast.is_connected());
}

/// Two subscribers of one topic on their own connections: `blocked`, held at 4 in flight, whose
/// handler counts its calls and waits for a unit on `gate`; and `fast`, collecting into `rx`.
struct HeldAndFast {
    blocked: RemoteBroker,
    fast: RemoteBroker,
    gate: flume::Sender<()>,
    calls: Arc<AtomicU64>,
    rx: flume::Receiver<Message>,
    _subs: [mixbus_bus::Subscription; 2],
}

impl HeldAndFast {
    fn subscribe(server: &BusServer, topic: &str) -> HeldAndFast {
        let blocked = remote(server);
        let (gate, gate_rx) = flume::unbounded::<()>();
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let held = blocked
            .subscribe(
                topic,
                SubscribeOptions::default().with_max_in_flight(4),
                Handler::new(move |_| {
                    c.fetch_add(1, Ordering::SeqCst);
                    gate_rx.recv_timeout(WAIT)?;
                    Ok(())
                }),
            )
            .unwrap();
        let fast = remote(server);
        let (h, rx) = collector();
        let quick = fast
            .subscribe(topic, SubscribeOptions::default(), h)
            .unwrap();
        HeldAndFast {
            blocked,
            fast,
            gate,
            calls,
            rx,
            _subs: [held, quick],
        }
    }
}

#[test]
fn a_blocked_remote_handler_is_held_to_its_in_flight_limit_and_others_go_on() {
    let server = server(2);
    let subs = HeldAndFast::subscribe(&server, "feed");
    let (blocked, gate_tx, calls, rx) = (&subs.blocked, &subs.gate, &subs.calls, &subs.rx);
    let publisher = remote(&server);
    const N: u64 = 100;
    publish_numbered(&publisher, "feed", N);
    for _ in 0..N {
        recv(rx);
    }
    // The server forwarded the blocked subscription only its 4 un-acked deliveries; the rest
    // wait on the server, not in the client's memory or on the wire.
    wait_until(
        "the fast deliveries to be acked and 4 sent to the blocked one",
        || {
            let total = server.stats().bus.total;
            total.acked == N && total.dispatched >= N + 4
        },
    );
    assert_eq!(server.stats().bus.total.dispatched, N + 4);
    // Its handler runs on the first of them (on the client's thread, maybe only now) and waits
    // at the gate: once, whatever the timing.
    wait_until("the blocked handler to be called", || {
        calls.load(Ordering::SeqCst) >= 1
    });
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(blocked.is_connected());
    // Released, it gets everything, in order, without loss.
    for _ in 0..N {
        gate_tx.send(()).unwrap();
    }
    wait_until("the blocked subscriber to catch up", || {
        calls.load(Ordering::SeqCst) == N
    });
}

#[test]
fn an_inline_handler_runs_on_the_connection_thread_in_order_and_acks() {
    let server = server(2);
    let subscriber = remote(&server);
    let (tx, rx) = flume::unbounded::<(Option<String>, Message)>();
    let handler = Handler::new(move |m| {
        let thread = std::thread::current().name().map(str::to_owned);
        tx.send((thread, m.clone()))?;
        Ok(())
    })
    .inline();
    let _sub = subscriber
        .subscribe("inline", SubscribeOptions::default(), handler)
        .unwrap();
    let publisher = remote(&server);
    const N: u64 = 500;
    publish_numbered(&publisher, "inline", N);
    for i in 0..N {
        let (thread, m) = rx.recv_timeout(WAIT).expect("a delivery within the wait");
        assert_eq!(m.payload(), i.to_string().as_bytes());
        // The client's I/O thread (its pump), not a thread of the subscription's own.
        assert_eq!(thread.as_deref(), Some("mixbus-pump"));
    }
    wait_until("every delivery to be acked", || {
        server.stats().bus.total.acked == N
    });
}

#[test]
fn an_inline_handler_replies_at_once_but_may_not_wait_for_the_server() {
    let server = server(2);
    // Two responders: one answers unconfirmed, the other tries a confirmed publish, which would
    // wait on its own I/O thread.
    let client = |confirm: bool| {
        let config = RemoteConfig::default()
            .with_confirm(confirm)
            .with_publish_timeout(WAIT * 3);
        Arc::new(RemoteBroker::connect(server.local_addr(), config).unwrap())
    };
    let answering = client(false);
    let confirming = client(true);
    let a = Arc::downgrade(&answering);
    let _answer = answering
        .subscribe(
            "req.a",
            SubscribeOptions::default(),
            Handler::new(move |m| {
                if let Some(a) = a.upgrade() {
                    a.publish(Message::new("rep", m.payload().clone()))?;
                }
                Ok(())
            })
            .inline(),
        )
        .unwrap();
    let (err_tx, err_rx) = flume::unbounded();
    let c = Arc::downgrade(&confirming);
    let _confirm = confirming
        .subscribe(
            "req.c",
            SubscribeOptions::default(),
            Handler::new(move |m| {
                if let Some(c) = c.upgrade() {
                    err_tx.send(c.publish(Message::new("rep", m.payload().clone())))?;
                }
                Ok(())
            })
            .inline(),
        )
        .unwrap();
    let requester = remote(&server);
    let (h, replies) = collector();
    let _replies = requester
        .subscribe("rep", SubscribeOptions::default(), h)
        .unwrap();
    for i in 0..50 {
        requester
            .publish(Message::new("req.a", format!("ping {i}")))
            .unwrap();
        assert_eq!(recv(&replies).payload(), format!("ping {i}").as_bytes());
    }
    requester.publish(Message::new("req.c", "ping")).unwrap();
    // Refused at once (the wait is shorter than the publish timeout).
    let result = err_rx.recv_timeout(WAIT).expect("the handler ran");
    assert!(
        matches!(result, Err(Error::WouldBlock { what: "PUBLISH" })),
        "{result:?}"
    );
    assert!(confirming.is_connected());
    // Nothing was published: the requester hears no reply to it.
    requester.publish(Message::new("req.a", "after")).unwrap();
    assert_eq!(recv(&replies).payload(), &b"after"[..]);
}

#[test]
fn a_stuck_consumer_is_cut_off_at_the_queue_limit() {
    stuck_consumer_is_cut_off(ServerConfig::default().hold_publishers_above);
}

#[test]
fn a_stuck_consumer_is_cut_off_while_it_holds_the_publisher_back() {
    // The publisher is held (not read) once the stuck consumer's queue passes 100, so the queue
    // never reaches the limit: the hold itself finds the consumer stuck and cuts it off.
    stuck_consumer_is_cut_off(100);
}

fn stuck_consumer_is_cut_off(hold_above: usize) {
    const LIMIT: usize = 200;
    const N: u64 = 1_000;
    let stall = Duration::from_millis(50);
    let server = server_with(
        ServerConfig::default()
            .with_max_queued_per_subscription(LIMIT)
            .with_hold_publishers_above(hold_above)
            .with_slow_consumer_stall(stall),
        2,
    );
    let subs = HeldAndFast::subscribe(&server, "flood");
    let events = ConnEvents::attach(&subs.blocked);
    let (fast, gate_tx, rx) = (&subs.fast, &subs.gate, &subs.rx);
    let publisher = remote(&server);
    // Confirmed publishes: the stuck consumer never makes one fail.
    publish_numbered(&publisher, "flood", N);
    for i in 0..N {
        assert_eq!(recv(rx).payload(), i.to_string().as_bytes());
    }
    // Once its oldest delivery is older than the stall time, the next publish past the limit
    // cuts it off (it reconnects, re-subscribes and, still held, may be cut again).
    let mut next = N;
    wait_until("the stuck consumer to be cut off", || {
        publisher
            .publish(Message::new("flood", next.to_string()))
            .unwrap();
        next += 1;
        server.stats().slow_consumers >= 1
    });
    // What the server held for it is let go of: the queue of its first subscription (the
    // server's s1) is emptied, its messages counted as dropped. That happens as the cut
    // connection closes, just after the cut is counted, so it is waited for.
    // The cut client's listeners hear why, in the server's words.
    wait_until("the cut client to hear it was a slow consumer", || {
        events
            .get()
            .first()
            .is_some_and(|e| e.starts_with("disconnected: slow consumer"))
    });
    wait_until("the cut consumer's queue to be let go of", || {
        let stats = server.stats();
        let first = stats.bus.queues.iter().find(|q| q.queue == "flood#s1");
        stats.bus.total.dropped > 0 && first.map(|q| q.depth) == Some(0)
    });
    assert!(fast.is_connected());
    for i in N..next {
        assert_eq!(recv(rx).payload(), i.to_string().as_bytes());
    }
    for _ in 0..8 {
        gate_tx.send(()).unwrap();
    }
}

/// A consumer of `topic` with a window of 4 (every few messages wait for an ack's round trip, so
/// it is far slower than the publisher), and a publisher that does not wait for confirms.
struct Outrun {
    _consumer: RemoteBroker,
    _sub: mixbus_bus::Subscription,
    rx: flume::Receiver<Message>,
    publisher: RemoteBroker,
}

impl Outrun {
    fn new(server: &mixbus_bus::BusServer, topic: &str) -> Outrun {
        let consumer = remote(server);
        let (h, rx) = collector();
        let sub = consumer
            .subscribe(topic, SubscribeOptions::default().with_max_in_flight(4), h)
            .unwrap();
        let publisher = RemoteBroker::connect(
            server.local_addr(),
            RemoteConfig::default().with_confirm(false),
        )
        .unwrap();
        Outrun {
            _consumer: consumer,
            _sub: sub,
            rx,
            publisher,
        }
    }

    /// Receives messages `0..n` in order, then checks that nobody was cut off and nothing was
    /// dropped.
    fn receive_all(&self, server: &mixbus_bus::BusServer, n: u64) {
        self.receive_padded(server, n, 0);
    }

    /// [`receive_all`](Self::receive_all) of messages padded to `width` ([`padded`]).
    fn receive_padded(&self, server: &mixbus_bus::BusServer, n: u64, width: usize) {
        for i in 0..n {
            assert_eq!(recv(&self.rx).payload(), padded(i, width).as_bytes());
        }
        let stats = server.stats();
        assert_eq!(stats.slow_consumers, 0);
        assert_eq!(stats.bus.total.dropped, 0);
    }
}

/// `i` in decimal, zero-padded to `width` digits.
fn padded(i: u64, width: usize) -> String {
    format!("{i:0width$}")
}

#[test]
fn a_publisher_that_outruns_its_consumer_is_held_and_the_queue_stays_bounded() {
    const HOLD: usize = 200;
    let config = ServerConfig::default().with_hold_publishers_above(HOLD);
    outrun_is_held(config, 0, HOLD);
}

#[test]
fn a_publisher_of_large_messages_is_held_by_their_bytes() {
    // 200 messages of 1,000 bytes pass the byte mark long before the count's.
    const WIDTH: usize = 1_000;
    let config = ServerConfig::default()
        .with_hold_publishers_above(usize::MAX)
        .with_hold_publishers_above_bytes(200 * WIDTH);
    outrun_is_held(config, WIDTH, 200);
}

/// A publisher outruns a consumer through a server with `config`, with messages padded to
/// `width`: every message arrives, in order, and the queue never holds much more than `hold`.
fn outrun_is_held(config: ServerConfig, width: usize, hold: usize) {
    const N: u64 = 20_000;
    let server = server_with(config, 2);
    let outrun = Outrun::new(&server, "outrun");
    let done = std::sync::atomic::AtomicBool::new(false);
    let deepest = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut deepest = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let depth = server.stats().bus.queues.iter().map(|q| q.depth).max();
                deepest = deepest.max(depth.unwrap_or(0));
                std::thread::yield_now();
            }
            deepest
        });
        scope.spawn(|| {
            for i in 0..N {
                let msg = Message::new("outrun", padded(i, width));
                outrun.publisher.publish(msg).unwrap();
            }
        });
        outrun.receive_padded(&server, N, width);
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        watcher.join().unwrap()
    });
    // One read's burst (at most 1,024 frames) may land past the mark before the hold starts.
    assert!(deepest <= hold as u64 + 1024, "the queue reached {deepest}");
}

#[test]
fn a_consumer_that_keeps_up_is_never_cut_off_even_past_the_queue_limit() {
    // A small limit: a burst queues far more than the limit on the server while the consumer
    // acks its way through it.
    let server = server_with(
        ServerConfig::default().with_max_queued_per_subscription(50),
        2,
    );
    let outrun = Outrun::new(&server, "burst");
    const N: u64 = 5_000;
    publish_numbered(&outrun.publisher, "burst", N);
    outrun.receive_all(&server, N);
}

/// Accepts one client on `fake` as a stand-in server would: reads its HELLO, welcomes it.
fn welcome_on(fake: &std::net::TcpListener) -> Raw {
    let (stream, _) = fake.accept().unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut raw = Raw { stream };
    assert!(matches!(raw.read_op(), Some(Op::Hello { .. })));
    raw.send(&Op::Welcome {
        version: mixbus_bus::protocol::VERSION,
        server: "stand-in".into(),
    });
    raw
}

/// A client connected to a stand-in server on a free port, which welcomed it and then reads
/// nothing: the client published numbered 4 KiB messages, unconfirmed, until its outbound queue
/// was full (past the socket buffers). Returns the client, the stand-in's end of the connection
/// (its listening socket is closed) and how many publishes were taken.
fn publisher_stalled_on_a_stand_in() -> (RemoteBroker, Raw, u64) {
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = fake.local_addr().unwrap();
    let welcoming = std::thread::spawn(move || welcome_on(&fake));
    let config = RemoteConfig::default()
        .with_confirm(false)
        .with_publish_timeout(Duration::from_millis(300))
        .with_reconnect_backoff(Duration::from_millis(10), Duration::from_millis(50));
    let publisher = RemoteBroker::connect(addr, config).unwrap();
    let stand_in = welcoming.join().unwrap();
    let body = vec![b'x'; 4096];
    let mut published = 0u64;
    loop {
        let mut payload = published.to_be_bytes().to_vec();
        payload.extend_from_slice(&body);
        match publisher.publish(Message::new("resend.t", payload)) {
            Ok(_) => published += 1,
            Err(Error::Timeout { .. }) => break,
            Err(err) => panic!("publish {published}: {err}"),
        }
        assert!(published < 1_000_000, "the queue never filled");
    }
    (publisher, stand_in, published)
}

#[test]
fn unconfirmed_publishes_a_lost_connection_never_wrote_are_sent_on_the_next() {
    let (publisher, stand_in, published) = publisher_stalled_on_a_stand_in();
    let addr = publisher.server_addr();
    let events = ConnEvents::attach(&publisher);

    // The real server on the same address, and a subscriber on it.
    let server = BusServer::bind(addr, ServerConfig::default()).unwrap();
    let subscriber = remote(&server);
    let (h, rx) = collector();
    let _sub = subscriber
        .subscribe("resend.t", SubscribeOptions::default(), h)
        .unwrap();
    // The stand-in goes away with unread bytes: the connection is reset, and the frames the
    // client had queued were never written.
    drop(stand_in);
    let mut got = Vec::new();
    while got.last() != Some(&(published - 1)) {
        let m = recv(&rx);
        got.push(u64::from_be_bytes(m.payload()[..8].try_into().unwrap()));
    }
    // Those in the lost socket buffers are gone (no confirm was asked for); the rest arrive
    // once each, in order, ending with the last published.
    let first = got[0];
    assert_eq!(got, (first..published).collect::<Vec<_>>());
    assert!(publisher.is_connected());
    let heard = events.get();
    assert!(
        heard[0].contains("held to send on reconnection"),
        "{heard:?}"
    );
    // Publishes after the reconnection follow them.
    let mut payload = published.to_be_bytes().to_vec();
    payload.extend_from_slice(b"after");
    publisher
        .publish(Message::new("resend.t", payload))
        .unwrap();
    assert_eq!(&recv(&rx).payload()[8..], b"after");
}

#[test]
fn close_counts_the_unconfirmed_publishes_it_could_not_write() {
    let (publisher, _stand_in, published) = publisher_stalled_on_a_stand_in();
    // The stand-in never reads: the close's flush ends at the linger with the queue unwritten.
    let report = publisher.close(WAIT);
    assert!(
        report.unsent_publishes > 0 && report.unsent_publishes <= published,
        "{report:?} of {published}"
    );
    assert!(
        report
            .to_string()
            .contains("unconfirmed publishes never sent"),
        "{report}"
    );
}

/// A handler that acks by hand and then publishes: the ack goes on the wire ahead of the
/// publish, though a batch's acks are otherwise sent at its end. A requester that drops the
/// responder's subscription as soon as the reply arrives leaves nothing un-acked behind, where
/// the server would re-queue the request ("group member left before ack").
#[test]
fn a_manual_ack_goes_out_ahead_of_the_handlers_next_publish() {
    let server = server(2);
    let responder = Arc::new(remote(&server));
    let (go_tx, go_rx) = flume::bounded::<()>(1);
    let weak = Arc::downgrade(&responder);
    let sub = responder
        .subscribe(
            "ordered.req",
            SubscribeOptions::group("responders").manual_ack(),
            Handler::new(move |m: &Message| {
                if let (Some(r), Some(delivery)) = (weak.upgrade(), m.delivery_id()) {
                    r.ack(delivery)?;
                    r.publish(Message::new("ordered.rep", m.payload().clone()))?;
                }
                // Hold the batch open (its deferred acks would go at its end) until the
                // subscription has been dropped.
                let _ = go_rx.recv_timeout(WAIT);
                Ok(())
            }),
        )
        .unwrap();
    let requester = remote(&server);
    let (h, replies) = collector();
    let _replies = requester
        .subscribe("ordered.rep", SubscribeOptions::default(), h)
        .unwrap();
    wait_until("both subscriptions on the server", || {
        server.stats().subscriptions == 2
    });
    requester
        .publish(Message::new("ordered.req", "ping"))
        .unwrap();
    assert_eq!(recv(&replies).payload(), "ping".as_bytes());
    drop(sub);
    wait_until("the unsubscribe to reach the server", || {
        server.stats().subscriptions == 1
    });
    go_tx.send(()).unwrap();
    wait_until("the request to be acked", || {
        server.stats().bus.topic("ordered.req").map(|t| t.acked) == Some(1)
    });
    let stats = server.stats().bus;
    let queued: u64 = stats.queues.iter().map(|q| q.depth).sum();
    assert_eq!((queued, stats.total.redelivered), (0, 0));
}

/// A handler that acks by hand and then unsubscribes: the ack goes first, so the server has
/// nothing un-acked to re-queue when the subscription ends.
#[test]
fn a_manual_ack_goes_out_ahead_of_the_handlers_unsubscribe() {
    let server = server(2);
    let member = Arc::new(remote(&server));
    let weak = Arc::downgrade(&member);
    let _sub = member
        .subscribe(
            "once",
            SubscribeOptions::group("workers").manual_ack(),
            Handler::new(move |m: &Message| {
                if let (Some(b), Some(delivery)) = (weak.upgrade(), m.delivery_id()) {
                    b.ack(delivery)?;
                    b.unsubscribe(delivery.subscription);
                }
                Ok(())
            }),
        )
        .unwrap();
    wait_until("the subscription on the server", || {
        server.stats().subscriptions == 1
    });
    remote(&server)
        .publish(Message::new("once", "job"))
        .unwrap();
    wait_until("the job to be acked", || {
        server.stats().bus.topic("once").map(|t| t.acked) == Some(1)
    });
    wait_until("the unsubscribe to reach the server", || {
        server.stats().subscriptions == 0
    });
    let stats = server.stats().bus;
    let queued: u64 = stats.queues.iter().map(|q| q.depth).sum();
    assert_eq!((queued, stats.total.redelivered), (0, 0));
}

/// A stand-in server that welcomes one client and answers its first SUBSCRIBE; returns its end
/// of the connection and the subscription id.
fn stand_in_with_a_subscriber(
    subscriber: impl FnOnce(std::net::SocketAddr) + Send + 'static,
) -> (Raw, u64) {
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = fake.local_addr().unwrap();
    let client = std::thread::spawn(move || subscriber(addr));
    let mut raw = welcome_on(&fake);
    let sub = match raw.read_op() {
        Some(Op::Subscribe { sub, .. }) => sub,
        other => panic!("expected SUBSCRIBE, got {other:?}"),
    };
    raw.send(&Op::Subscribed { sub });
    client.join().unwrap();
    (raw, sub)
}

#[test]
fn deliveries_read_with_a_malformed_frame_are_handled_before_the_connection_closes() {
    let (h, rx) = collector();
    let held = Arc::new(Mutex::new(None));
    let keep = held.clone();
    let (mut raw, sub) = stand_in_with_a_subscriber(move |addr| {
        let config = RemoteConfig::default()
            .with_reconnect_backoff(Duration::from_secs(5), Duration::from_secs(5));
        let client = RemoteBroker::connect(addr, config).unwrap();
        let subscription = client
            .subscribe("t", SubscribeOptions::broadcast(), h)
            .unwrap();
        *keep.lock().unwrap() = Some((client, subscription));
    });
    let events = ConnEvents::attach(&held.lock().unwrap().as_ref().unwrap().0);
    // Two DELIVERS frames to the subscription and an unknown operation, in one write: the
    // client reads them together.
    let delivers = |first: u64| Op::Delivers {
        sub,
        messages: (first..first + 3)
            .map(|id| mixbus_bus::protocol::WireDelivery {
                message: id,
                attempt: 1,
                published_us: 0,
                topic: "t".into(),
                headers: Vec::new(),
                payload: id.to_be_bytes().to_vec().into(),
            })
            .collect(),
    };
    let mut wire = Vec::new();
    for op in [delivers(1), delivers(4)] {
        let body = op.to_bytes();
        wire.extend_from_slice(&(body.len() as u32).to_be_bytes());
        wire.extend_from_slice(&body);
    }
    wire.extend_from_slice(&[0, 0, 0, 1, 200]);
    raw.write(&wire);
    let got: Vec<u64> = (0..6)
        .map(|_| u64::from_be_bytes(recv(&rx).payload()[..8].try_into().unwrap()))
        .collect();
    assert_eq!(got, [1, 2, 3, 4, 5, 6], "every delivery, in order");
    // Then the client names the fault and closes the connection.
    loop {
        match raw.read_op() {
            Some(Op::Error { code, text, .. }) => {
                assert_eq!(code, mixbus_bus::protocol::ErrorCode::Malformed, "{text}");
                break;
            }
            Some(Op::Ack { .. } | Op::Acks { .. } | Op::AckRanges { .. }) => continue,
            other => panic!("expected ERROR, got {other:?}"),
        }
    }
    assert_eq!(raw.read_frame(), None, "closed after the error");
    wait_until("the client to report the lost connection", || {
        events
            .get()
            .first()
            .is_some_and(|e| e.starts_with("disconnected"))
    });
}
