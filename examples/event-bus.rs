//! An event bus in the style of seed 003: events with a name, a source and arguments, carried as
//! headers and payload of ordinary messages. `session_started` is consumed once by a group of
//! managers (any one of them runs the session's startup command), even when published before any
//! manager is up; `bgtask_progress` is broadcast so that every manager sees every update.
//!
//! ```text
//! cargo run --example event-bus
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mixbus::bus::{Broker, Handler, InMemoryBroker, Message, SubscribeOptions, Subscription};

/// Builds an event message: topic `events.<name>`, headers `event-name` and `source`,
/// arguments as the payload (comma-separated here; any encoding works).
fn event(name: &str, source: &str, args: &[&str]) -> Message {
    Message::new(format!("events.{name}"), args.join(","))
        .with_header("event-name", name)
        .with_header("source", source)
}

fn start_manager(
    broker: &InMemoryBroker,
    id: usize,
    log: &Arc<Mutex<Vec<String>>>,
) -> mixbus::bus::Result<Vec<Subscription>> {
    let consumer_log = log.clone();
    let consumer = broker.subscribe(
        "events.session_started",
        SubscribeOptions::group("managers"),
        Handler::new(move |m| {
            let line = format!(
                "manager {id} runs startup of session {} (from {})",
                String::from_utf8_lossy(m.payload()),
                m.header("source").unwrap_or("?")
            );
            consumer_log.lock().map_err(|_| "log poisoned")?.push(line);
            Ok(())
        }),
    )?;
    let subscriber_log = log.clone();
    let subscriber = broker.subscribe(
        "events.bgtask_progress",
        SubscribeOptions::broadcast(),
        Handler::new(move |m| {
            let line = format!(
                "manager {id} sees progress {}",
                String::from_utf8_lossy(m.payload())
            );
            subscriber_log
                .lock()
                .map_err(|_| "log poisoned")?
                .push(line);
            Ok(())
        }),
    )?;
    Ok(vec![consumer, subscriber])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = InMemoryBroker::new()?;
    let log = Arc::new(Mutex::new(Vec::new()));

    // Manager 0 comes up and goes down again: the group now exists.
    drop(start_manager(&broker, 0, &log)?);
    // While no manager is up, an agent starts a session: the event is kept.
    broker.publish(event("session_started", "agent-7", &["sess-1"]))?;
    println!("published session_started while no manager was up");

    let mut subs = start_manager(&broker, 1, &log)?;
    subs.extend(start_manager(&broker, 2, &log)?);
    broker.publish(event("session_started", "manager", &["sess-2"]))?;
    for pct in [25, 50, 100] {
        broker.publish(event(
            "bgtask_progress",
            "manager",
            &["task-9", &format!("{pct}%")],
        ))?;
    }

    let report = broker.close(Duration::from_secs(5));
    let mut lines = log.lock().map_err(|_| "log poisoned")?.clone();
    lines.sort();
    for line in lines {
        println!("{line}");
    }
    println!("close: {report}");
    Ok(())
}
