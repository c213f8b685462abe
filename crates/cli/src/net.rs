//! The networked commands: `serve`, `pub`, `sub` and `stats`.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mixbus::bus::{
    Broker, BusServer, Handler, InMemoryConfig, Message, RemoteBroker, RemoteConfig, ServerConfig,
    SubscribeOptions,
};

use crate::CliError;

/// Where `serve` listens by default, and where client commands look by default.
pub(crate) const DEFAULT_ADDR: &str = "127.0.0.1:4999";

/// Connects to a server as a client.
pub(crate) fn connect(server: SocketAddr, token: Option<&str>) -> Result<RemoteBroker, CliError> {
    connect_with(server, token, true, None)
}

/// Connects as a client; without `confirm`, publish returns once the message is queued to the
/// socket instead of waiting for the server's confirmation. `spin` sets the client pump's idle
/// spin (the default without).
pub(crate) fn connect_with(
    server: SocketAddr,
    token: Option<&str>,
    confirm: bool,
    spin: Option<Duration>,
) -> Result<RemoteBroker, CliError> {
    let mut config = RemoteConfig::default()
        .with_confirm(confirm)
        .with_name("mixbus-cli")
        .with_connect_timeout(Duration::from_secs(3));
    if let Some(spin) = spin {
        config = config.with_spin(spin);
    }
    if let Some(token) = token {
        config = config.with_token(token);
    }
    RemoteBroker::connect(server, config).map_err(|err| {
        CliError::msg(format!(
            "cannot reach the server at {server}: {}",
            CliError::from(err)
        ))
    })
}

/// Stops on Ctrl-C or SIGTERM.
fn stop_signal() -> Result<flume::Receiver<()>, CliError> {
    let (tx, rx) = flume::bounded(1);
    ctrlc::set_handler(move || {
        let _ = tx.try_send(());
    })
    .map_err(|err| CliError::msg(format!("cannot install the signal handler: {err}")))?;
    Ok(rx)
}

/// `mixbus serve`.
pub(crate) fn serve(listen: SocketAddr, config: ServerConfig) -> Result<(), CliError> {
    let pumps = config.pumps;
    let spin = if config.spin == ServerConfig::default().spin {
        String::new()
    } else {
        format!(
            ", each spinning {} µs before it sleeps",
            config.spin.as_micros()
        )
    };
    let server = BusServer::bind(listen, config)?;
    let stop = stop_signal()?;
    let pumps_word = if pumps == 1 {
        "event pump"
    } else {
        "event pumps"
    };
    eprintln!(
        "mixbus: serving on {} with {pumps} {pumps_word}{spin} (Ctrl-C to stop)",
        server.local_addr()
    );
    // The address alone on stdout, so scripts can read where we listen.
    println!("{}", server.local_addr());
    let _ = std::io::stdout().flush();
    let _ = stop.recv();
    eprintln!("mixbus: stopping");
    let report = server.shutdown(Duration::from_secs(5));
    eprintln!("mixbus: stopped: {report}");
    Ok(())
}

/// `mixbus pub`.
pub(crate) fn publish(
    broker: &RemoteBroker,
    topic: &str,
    message: Option<String>,
    count: u64,
    headers: &[(String, String)],
) -> Result<(), CliError> {
    let send = |payload: String| -> Result<(), CliError> {
        let mut msg = Message::new(topic.to_owned(), payload);
        for (k, v) in headers {
            msg = msg.with_header(k.clone(), v.clone());
        }
        broker.publish(msg)?;
        Ok(())
    };
    let mut sent = 0u64;
    match message {
        Some(text) => {
            for _ in 0..count.max(1) {
                send(text.clone())?;
                sent += 1;
            }
        }
        None => {
            for line in std::io::stdin().lock().lines() {
                send(line.map_err(|err| CliError::msg(format!("reading standard input: {err}")))?)?;
                sent += 1;
            }
        }
    }
    eprintln!("mixbus: published {sent} message(s) to {topic}");
    broker.close(Duration::from_secs(5));
    Ok(())
}

/// Says on standard error when the connection is lost and when it is back: messages published
/// in between do not reach a broadcast subscription (a slow consumer cut off, say).
#[derive(Debug)]
struct ConnectionNotes;

impl mixbus::bus::BrokerListener for ConnectionNotes {
    fn disconnected(&self, reason: &str) {
        eprintln!("mixbus: connection lost: {reason}; reconnecting");
    }

    fn reconnected(&self) {
        eprintln!("mixbus: reconnected");
    }
}

/// `mixbus sub`.
pub(crate) fn subscribe(
    broker: &RemoteBroker,
    pattern: &str,
    group: Option<String>,
    manual_ack: bool,
    count: Option<u64>,
) -> Result<(), CliError> {
    let mut options = match group {
        Some(name) => SubscribeOptions::group(name),
        None => SubscribeOptions::broadcast(),
    };
    if manual_ack {
        options = options.manual_ack();
    }
    let (tx, rx) = flume::unbounded::<Message>();
    let _sub = broker.subscribe(
        pattern,
        options,
        Handler::new(move |msg: &Message| {
            tx.send(msg.clone())
                .map_err(|_| "the printer has stopped")?;
            Ok(())
        }),
    )?;
    let stop = stop_signal()?;
    broker.add_listener(Arc::new(ConnectionNotes));
    // On standard error, so that the payloads alone go to standard output.
    eprintln!("mixbus: subscribed to {pattern}");
    let stdout = std::io::stdout();
    let mut seen = 0u64;
    loop {
        if count.is_some_and(|n| seen >= n) {
            break;
        }
        let next = flume::Selector::new()
            .recv(&rx, |msg| msg.ok())
            .recv(&stop, |_| None)
            .wait();
        let Some(msg) = next else { break };
        let mut out = stdout.lock();
        let _ = out.write_all(msg.payload());
        let _ = out.write_all(b"\n");
        let _ = out.flush();
        if manual_ack && let Some(delivery) = msg.delivery_id() {
            let _ = broker.ack(delivery);
        }
        seen += 1;
    }
    broker.close(Duration::from_secs(2));
    Ok(())
}

/// `mixbus stats`.
pub(crate) fn stats(broker: &RemoteBroker, watch: bool) -> Result<(), CliError> {
    let stop = if watch { Some(stop_signal()?) } else { None };
    let mut previous: Option<(Instant, Vec<(String, String)>)> = None;
    loop {
        let rows = broker.server_stats()?;
        let now = Instant::now();
        let rate = |key: &str, value: &str| -> String {
            previous
                .as_ref()
                .and_then(|(at, old)| {
                    let old: f64 = old.iter().find(|(k, _)| k == key)?.1.parse().ok()?;
                    let new: f64 = value.parse().ok()?;
                    Some((new - old) / now.duration_since(*at).as_secs_f64().max(1e-9))
                })
                .map(|r| format!("{r:.0}"))
                .unwrap_or_else(|| "-".into())
        };
        let get = |key: &str| {
            rows.iter()
                .find(|(k, _)| k == key)
                .map_or("0", |(_, v)| v.as_str())
        };
        let mut out = String::new();
        if watch {
            out.push_str("\x1b[2J\x1b[H");
        }
        out.push_str(&format!(
            "{:<24} {:>14} {:>12}\n",
            "server", "value", "per second"
        ));
        for (key, value) in rows.iter().filter(|(k, _)| !k.contains('.')) {
            out.push_str(&format!("{key:<24} {value:>14} {:>12}\n", rate(key, value)));
        }
        let mut topics: Vec<&str> = rows
            .iter()
            .filter_map(|(k, _)| k.strip_prefix("topic.")?.rsplit_once('.').map(|(t, _)| t))
            .collect();
        topics.dedup();
        if !topics.is_empty() {
            out.push_str(&format!(
                "\n{:<28} {:>11} {:>9} {:>11} {:>9} {:>7} {:>11} {:>7}\n",
                "topic",
                "published",
                "pub/s",
                "processed",
                "proc/s",
                "failed",
                "redelivered",
                "depth"
            ));
        }
        for topic in topics {
            let key = |c: &str| format!("topic.{topic}.{c}");
            let published = get(&key("published"));
            let processed = get(&key("processed"));
            out.push_str(&format!(
                "{topic:<28} {published:>11} {:>9} {processed:>11} {:>9} {:>7} {:>11} {:>7}\n",
                rate(&key("published"), published),
                rate(&key("processed"), processed),
                get(&key("failed")),
                get(&key("redelivered")),
                get(&key("depth")),
            ));
        }
        let queues: Vec<(&str, &str)> = rows
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    k.strip_prefix("queue.")?.strip_suffix(".depth")?,
                    v.as_str(),
                ))
            })
            .collect();
        if !queues.is_empty() {
            out.push_str(&format!(
                "\n{:<40} {:>9}\n",
                "queue (subscription or group)", "depth"
            ));
        }
        for (queue, depth) in queues {
            out.push_str(&format!("{queue:<40} {depth:>9}\n"));
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
        let Some(stop) = &stop else { break };
        previous = Some((now, rows));
        if stop.recv_timeout(Duration::from_secs(1)).is_ok() {
            break;
        }
    }
    broker.close(Duration::from_secs(1));
    Ok(())
}

/// Parses `K=V` header flags.
pub(crate) fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("header `{text}` is not of the form KEY=VALUE")),
    }
}

/// Starts a server on a free loopback port, for `bench` without `--server`.
///
/// Bench publishers stream without confirms, so a consumer-group queue that fills would refuse
/// messages the publisher never hears about: the embedded server's group queues hold `count`.
pub(crate) fn embedded_server(
    count: u64,
    pumps: Option<usize>,
    spin: Option<Duration>,
) -> Result<BusServer, CliError> {
    let addr = "127.0.0.1:0".parse().expect("a valid literal address");
    let capacity = usize::try_from(count).unwrap_or(usize::MAX).max(65_536);
    let inner = InMemoryConfig::default().with_group_capacity(capacity);
    let mut config = ServerConfig::default().with_inner(inner);
    if let Some(pumps) = pumps {
        config = config.with_pumps(pumps);
    }
    if let Some(spin) = spin {
        config = config.with_spin(spin);
    }
    Ok(BusServer::bind(addr, config)?)
}
