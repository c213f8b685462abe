//! Hostile and broken clients (raw frames on a std `TcpStream`): each gets its ERROR frame and a
//! closed connection, and nothing else on the server is disturbed.

mod support;

use mixbus_bus::protocol::{ErrorCode, Op};
use mixbus_bus::{
    Broker, BusServer, Error, Message, RemoteBroker, RemoteConfig, ServerConfig, SubscribeOptions,
};
use support::{Raw, collector, recv, server, server_with};

/// A client with a live subscription; `check` proves it still works.
struct Bystander {
    client: RemoteBroker,
    rx: flume::Receiver<Message>,
    _sub: mixbus_bus::Subscription,
}

impl Bystander {
    fn new(server: &BusServer, token: Option<&str>) -> Bystander {
        let mut config = RemoteConfig::default();
        if let Some(t) = token {
            config = config.with_token(t);
        }
        let client = RemoteBroker::connect(server.local_addr(), config).unwrap();
        let (h, rx) = collector();
        let sub = client
            .subscribe("calm", SubscribeOptions::default(), h)
            .unwrap();
        Bystander {
            client,
            rx,
            _sub: sub,
        }
    }

    fn check(&self) {
        let id = self
            .client
            .publish(Message::new("calm", "still here"))
            .unwrap();
        assert_eq!(recv(&self.rx).id(), id);
        assert!(self.client.is_connected());
    }
}

#[test]
fn smoke() {
    let server = server(2);
    let mut raw = Raw::connect(server.local_addr());
    assert!(matches!(
        raw.hello(None),
        Op::Welcome {
            version: mixbus_bus::protocol::VERSION,
            ..
        }
    ));
    raw.send(&Op::Ping { nonce: 42 });
    assert_eq!(raw.read_op(), Some(Op::Pong { nonce: 42 }));
}

#[test]
fn garbage_bytes_close_only_that_connection() {
    let server = server(2);
    let by = Bystander::new(&server, None);
    // An HTTP request: its first four bytes announce a frame of about 1.2 GB.
    let mut raw = Raw::connect(server.local_addr());
    raw.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    raw.expect_closed();
    // Small garbage frames: each gets an ERROR and a close.
    let mut raw = Raw::connect(server.local_addr());
    raw.send_frame(&[0xde, 0xad, 0xbe, 0xef]);
    raw.expect_error_and_close(ErrorCode::UnknownOp);
    let mut raw = Raw::welcomed(server.local_addr());
    raw.send_frame(&[3, 0, 0]);
    raw.expect_error_and_close(ErrorCode::Malformed);
    by.check();
    assert!(server.stats().protocol_errors >= 2);
}

#[test]
fn wrong_token_gets_an_error_and_a_close() {
    let server = server_with(ServerConfig::default().with_token("s3cret"), 2);
    let by = Bystander::new(&server, Some("s3cret"));
    let mut raw = Raw::connect(server.local_addr());
    raw.send(&Op::Hello {
        version: 1,
        token: Some("s3creT".into()),
        client: "raw".into(),
    });
    raw.expect_error_and_close(ErrorCode::Unauthorized);
    let mut raw = Raw::connect(server.local_addr());
    raw.send(&Op::Hello {
        version: 1,
        token: None,
        client: "raw".into(),
    });
    raw.expect_error_and_close(ErrorCode::Unauthorized);
    let refused = RemoteBroker::connect(
        server.local_addr(),
        RemoteConfig::default().with_token("nope"),
    );
    assert!(
        matches!(
            refused,
            Err(Error::Refused {
                code: ErrorCode::Unauthorized,
                ..
            })
        ),
        "{refused:?}"
    );
    by.check();
}

#[test]
fn oversized_frame_gets_an_error_and_a_close() {
    let server = server_with(ServerConfig::default().with_max_frame_len(1024), 2);
    let by = Bystander::new(&server, None);
    let mut raw = Raw::welcomed(server.local_addr());
    raw.send(&Op::Publish {
        request: 1,
        topic: "calm".into(),
        headers: Vec::new(),
        payload: vec![0u8; 1500].into(),
    });
    let text = raw.expect_error_and_close(ErrorCode::FrameTooLarge);
    assert!(text.contains("1024"), "{text}");
    by.check();
}

#[test]
fn a_frame_announcing_far_more_than_the_limit_gets_an_error_and_a_close() {
    let server = server_with(ServerConfig::default().with_max_frame_len(1024), 2);
    let by = Bystander::new(&server, None);
    let mut raw = Raw::welcomed(server.local_addr());
    // Cut by the queue layer from its header alone (only the header is sent, so that nothing is
    // left unread when the server closes, which would reset the connection).
    raw.write(&(1u32 << 20).to_be_bytes());
    let text = raw.expect_error_and_close(ErrorCode::FrameTooLarge);
    assert!(text.contains("1048576") && text.contains("1024"), "{text}");
    by.check();
}

#[test]
fn unknown_operation_gets_an_error_and_a_close() {
    let server = server(2);
    let by = Bystander::new(&server, None);
    let mut raw = Raw::welcomed(server.local_addr());
    raw.send_frame(&[200, 1, 2, 3]);
    let text = raw.expect_error_and_close(ErrorCode::UnknownOp);
    assert!(text.contains("200"), "{text}");
    by.check();
}

#[test]
fn unsupported_version_gets_an_error_and_a_close() {
    let server = server(2);
    let by = Bystander::new(&server, None);
    let mut raw = Raw::connect(server.local_addr());
    raw.send(&Op::Hello {
        version: 99,
        token: None,
        client: "future".into(),
    });
    raw.expect_error_and_close(ErrorCode::UnsupportedVersion);
    by.check();
}

#[test]
fn operations_before_hello_are_refused() {
    let server = server(2);
    let by = Bystander::new(&server, None);
    let mut raw = Raw::connect(server.local_addr());
    raw.send(&Op::Publish {
        request: 1,
        topic: "calm".into(),
        headers: Vec::new(),
        payload: "sneaky".into(),
    });
    raw.expect_error_and_close(ErrorCode::HandshakeRequired);
    by.check();
    assert!(
        by.rx.try_recv().is_err(),
        "a publish before HELLO went through"
    );
}

#[test]
fn non_loopback_bind_requires_a_token() {
    let refused = BusServer::bind("0.0.0.0:0".parse().unwrap(), ServerConfig::default());
    assert!(
        matches!(refused, Err(Error::TokenRequired { .. })),
        "{refused:?}"
    );
    let bound = BusServer::bind(
        "0.0.0.0:0".parse().unwrap(),
        ServerConfig::default().with_token("t"),
    );
    assert!(bound.is_ok());
}

#[test]
fn a_connection_that_never_says_hello_is_closed() {
    let config =
        ServerConfig::default().with_handshake_timeout(std::time::Duration::from_millis(100));
    let server = server_with(config, 2);
    let by = Bystander::new(&server, None);
    let start = std::time::Instant::now();
    let mut raw = Raw::connect(server.local_addr());
    let text = raw.expect_error_and_close(ErrorCode::HandshakeRequired);
    assert!(
        start.elapsed() >= std::time::Duration::from_millis(100),
        "closed early: {text}"
    );
    by.check();
}
