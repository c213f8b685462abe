//! Topic names and patterns: invalid ones are refused with a clear error.

mod support;

use mixbus_bus::{Broker, Error, Handler, Message, SubscribeOptions};
use support::broker;

#[test]
fn smoke() {
    let broker = broker(1);
    assert!(broker.publish(Message::new("a.b.c", "x")).is_ok());
}

#[test]
fn invalid_topics_are_refused_on_publish() {
    let broker = broker(1);
    for bad in ["", "a..b", ".a", "a.", "a b", "a.*", "a.>"] {
        match broker.publish(Message::new(bad, "x")) {
            Err(Error::InvalidTopic { topic, reason }) => {
                assert_eq!(topic, bad);
                assert!(!reason.is_empty());
            }
            other => panic!("{bad:?}: expected InvalidTopic, got {other:?}"),
        }
    }
    let err = broker.publish(Message::new("a..b", "x")).unwrap_err();
    assert!(err.to_string().contains("invalid topic \"a..b\""), "{err}");
}

#[test]
fn invalid_patterns_are_refused_on_subscribe() {
    let broker = broker(1);
    for bad in ["", "a.>.b", "a*", "a..b", "a.b>"] {
        let res = broker.subscribe(bad, SubscribeOptions::default(), Handler::new(|_| Ok(())));
        assert!(matches!(res, Err(Error::InvalidPattern { .. })), "{bad:?}");
    }
}

#[test]
fn invalid_options_are_refused() {
    let broker = broker(1);
    let h = || Handler::new(|_| Ok(()));
    for opts in [
        SubscribeOptions::default().with_max_attempts(0),
        SubscribeOptions::default().with_max_in_flight(0),
        SubscribeOptions::group(""),
        SubscribeOptions::default().with_dead_letter_topic("bad..topic"),
    ] {
        let res = broker.subscribe("a", opts, h());
        assert!(matches!(res, Err(Error::InvalidOptions(_))));
    }
}
