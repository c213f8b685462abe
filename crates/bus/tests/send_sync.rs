//! Every handle type is `Send + Sync`, and `Broker` works as a trait object.

use std::sync::Arc;

use mixbus_bus::{
    Broker, CloseReport, Error, Handler, InMemoryBroker, Message, StatsCollector, StatsSnapshot,
    SubscribeOptions, Subscription,
};

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn smoke() {
    assert_send_sync::<InMemoryBroker>();
    assert_send_sync::<Subscription>();
    assert_send_sync::<Message>();
    assert_send_sync::<Handler>();
    assert_send_sync::<StatsCollector>();
    assert_send_sync::<StatsSnapshot>();
    assert_send_sync::<CloseReport>();
    assert_send_sync::<Error>();
    assert_send_sync::<SubscribeOptions>();
    assert_send_sync::<mixbus_bus::BusServer>();
    assert_send_sync::<mixbus_bus::RemoteBroker>();
    assert_send_sync::<mixbus_bus::ServerConfig>();
    assert_send_sync::<mixbus_bus::RemoteConfig>();
    assert_send_sync::<mixbus_bus::ServerStats>();
    assert_send_sync::<mixbus_bus::protocol::Op>();
    assert_send_sync::<mixbus_bus::protocol::ProtocolError>();
}

#[test]
fn broker_is_dyn_compatible() {
    let broker: Arc<dyn Broker> = Arc::new(InMemoryBroker::new().unwrap());
    let sub = broker
        .subscribe("a", SubscribeOptions::default(), Handler::new(|_| Ok(())))
        .unwrap();
    broker.publish(Message::new("a", "x")).unwrap();
    drop(sub);
    assert!(!broker.close(std::time::Duration::from_secs(5)).timed_out);
}
