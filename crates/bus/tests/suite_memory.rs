//! The semantic suite (tests/support/suite.rs) run against the in-memory broker.

mod support;

use support::suite;

#[test]
fn smoke() {
    let b = support::broker(4);
    suite::smoke(&b);
}

#[test]
fn broadcast_each_gets_once() {
    let b = support::broker(4);
    suite::broadcast_each_gets_once(&b);
}

#[test]
fn group_exactly_once_and_spread() {
    let b = support::broker(4);
    suite::group_exactly_once_and_spread(&b);
}

#[test]
fn group_retention_while_no_member() {
    let b = support::broker(4);
    suite::group_retention_while_no_member(&b);
}

#[test]
fn manual_ack_redelivery() {
    let b = support::broker(4);
    suite::manual_ack_redelivery(&b);
}

#[test]
fn nack_redelivery() {
    let b = support::broker(4);
    suite::nack_redelivery(&b);
}

#[test]
fn dead_letter_after_max_attempts() {
    let b = support::broker(4);
    suite::dead_letter_after_max_attempts(&b);
}

#[test]
fn ordering_of_one_publisher() {
    let b = support::broker(4);
    suite::ordering_of_one_publisher(&b);
}

#[test]
fn publish_slice_is_publish() {
    let b = support::broker(4);
    suite::publish_slice_is_publish(&b);
}

#[test]
fn close_rejects_publish() {
    let b = support::broker(4);
    suite::close_rejects_publish(&b);
}
