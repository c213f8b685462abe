//! The semantic suite (tests/support/suite.rs) run against a RemoteBroker connected to a BusServer.

mod support;

use support::suite;

#[test]
fn smoke() {
    let server = support::server(4);
    let b = support::remote(&server);
    suite::smoke(&b);
}

#[test]
fn broadcast_each_gets_once() {
    let server = support::server(4);
    let b = support::remote(&server);
    suite::broadcast_each_gets_once(&b);
}

#[test]
fn group_exactly_once_and_spread() {
    let server = support::server(4);
    let b = support::remote(&server);
    suite::group_exactly_once_and_spread(&b);
}

#[test]
fn group_retention_while_no_member() {
    let server = support::server(4);
    let b = support::remote(&server);
    suite::group_retention_while_no_member(&b);
}

#[test]
fn manual_ack_redelivery() {
    let server = support::server(4);
    let b = support::remote(&server);
    suite::manual_ack_redelivery(&b);
}

#[test]
fn nack_redelivery() {
    let server = support::server(4);
    let b = support::remote(&server);
    suite::nack_redelivery(&b);
}

#[test]
fn dead_letter_after_max_attempts() {
    let server = support::server(4);
    let b = support::remote(&server);
    suite::dead_letter_after_max_attempts(&b);
}

#[test]
fn ordering_of_one_publisher() {
    let server = support::server(4);
    let b = support::remote(&server);
    suite::ordering_of_one_publisher(&b);
}

#[test]
fn publish_slice_is_publish() {
    let server = support::server(4);
    // Without confirms a small publish_slice goes straight to the connection; with them it is
    // publish. Both ways.
    for confirm in [false, true] {
        let config = mixbus_bus::RemoteConfig::default().with_confirm(confirm);
        let b = mixbus_bus::RemoteBroker::connect(server.local_addr(), config).unwrap();
        suite::publish_slice_is_publish(&b);
    }
}

#[test]
fn close_rejects_publish() {
    let server = support::server(4);
    let b = support::remote(&server);
    suite::close_rejects_publish(&b);
}
