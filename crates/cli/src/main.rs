//! The `mixbus` command line: serve, pub, sub, stats and bench.
//!
//! Errors are one clear line on standard error and a non-zero exit; `RUST_LOG` sets the log level.

use std::fmt;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use mixbus::bus::{Broker, InMemoryBroker, InMemoryConfig, ServerConfig};

/// jemalloc keeps freed memory for reuse where glibc's allocator returns the 256 KiB read
/// buffers of the server and clients to the system and faults them in again (see BENCHMARKS.md,
/// "the receive buffers at 4 KiB"). The libraries leave the allocator to the program.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod bench;
mod net;

/// A message bus built on a hybrid of threads and events.
#[derive(Debug, Parser)]
#[command(name = "mixbus", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where a client command finds the server.
#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// The server's address.
    #[arg(long, default_value = net::DEFAULT_ADDR)]
    server: SocketAddr,
    /// The server's token, if it asks for one.
    #[arg(long, env = "MIXBUS_TOKEN")]
    token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a bus server (loopback by default; another address needs --token).
    #[command(
        after_help = "Examples:\n  mixbus serve\n  mixbus serve --listen 0.0.0.0:4999 --token s3cret --max-connections 5000"
    )]
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = net::DEFAULT_ADDR)]
        listen: SocketAddr,
        /// Token clients must present; required to listen on a non-loopback address.
        #[arg(long, env = "MIXBUS_TOKEN")]
        token: Option<String>,
        /// Most connections served at once.
        #[arg(long, default_value_t = 1024)]
        max_connections: usize,
        /// Largest frame a client may send, in bytes.
        #[arg(long, default_value_t = 16 << 20)]
        max_frame_len: usize,
        /// Most subscriptions per connection.
        #[arg(long, default_value_t = 1024)]
        max_subscriptions: usize,
        /// Bytes queued to one connection before it is cut off as a slow consumer.
        #[arg(long, default_value_t = 8 << 20)]
        max_outbound_bytes: usize,
        /// Messages held for one broadcast subscription whose consumer is stuck (no ack for 5 s)
        /// before it is cut off as slow.
        #[arg(long, default_value_t = 65_536)]
        max_queued_per_subscription: usize,
        /// Messages waiting in a queue past which the server stops reading the publishers
        /// filling it (those holding no subscriptions), until it is back to half.
        #[arg(long, default_value_t = 65_536)]
        hold_publishers_above: usize,
        /// The same in payload bytes (reckoned from the messages just published): of messages
        /// of 4 KiB, 8,192 waiting hold publishers by default.
        #[arg(long, default_value_t = 32 << 20)]
        hold_publishers_above_bytes: usize,
        /// Payload bytes one subscription may hold delivered and not yet acked, beside its own
        /// in-flight count: past it, the server sends it nothing new until acks come back.
        #[arg(long, default_value_t = 64 << 20)]
        max_in_flight_bytes: usize,
        /// Event pumps (threads) the connections are spread over [default: the machine's cores,
        /// at most 4]. Several let a publisher and its subscribers use several cores.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
        pumps: Option<u16>,
        /// Microseconds an idle event pump keeps watching its sockets before it sleeps, fixed (0
        /// to 100000) [default: adaptive, 20 to 200: longer while clients answer within 200 µs].
        /// Longer answers requests sooner (no wake-up when the reply comes within it) but keeps
        /// a pump busy while messages come more often than the spin; 20 is the least CPU short
        /// of 0.
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100_000))]
        spin_us: Option<u32>,
    },
    /// Publish a message (or each line of standard input) to a topic.
    #[command(
        name = "pub",
        after_help = "Examples:\n  mixbus pub orders.created '{\"id\": 1}'\n  mixbus pub logs.app --header host=web1 < app.log\n  mixbus pub jobs.resize img.png --count 100"
    )]
    Pub {
        /// Topic: dot-separated tokens.
        topic: String,
        /// The message; without it, each line of standard input is one message.
        message: Option<String>,
        /// Publish the message this many times.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// A header KEY=VALUE (repeatable).
        #[arg(long = "header", value_parser = net::parse_header)]
        headers: Vec<(String, String)>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Subscribe to a topic or pattern and print each payload on its own line.
    #[command(
        name = "sub",
        after_help = "Examples:\n  mixbus sub 'orders.>'\n  mixbus sub jobs.resize --group workers --ack manual\n  mixbus sub 'logs.*' --count 10"
    )]
    Sub {
        /// Topic or pattern (`*` one token, `>` the rest).
        pattern: String,
        /// Join this consumer group: each message goes to one member.
        #[arg(long)]
        group: Option<String>,
        /// Acknowledge automatically, or manually after printing.
        #[arg(long, value_enum, default_value_t = AckArg::Auto)]
        ack: AckArg,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show the server's counters.
    #[command(after_help = "Examples:\n  mixbus stats\n  mixbus stats --watch")]
    Stats {
        /// Refresh every second with rates, until Ctrl-C.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Measure throughput and latency; every message is checked on arrival.
    ///
    /// Publishers stream without waiting for confirms, but stay at most 4 MiB of deliveries
    /// ahead of the subscribers: a server cuts off a consumer that falls its outbound limit
    /// behind (8 MiB by default) as a slow consumer, and a publisher of large messages running
    /// flat out would get a healthy one cut off.
    ///
    /// Latency is timed on every 16th message of each publisher (pubsub, fanout, group) and on
    /// every round trip (reqrep).
    #[command(
        after_help = "Examples:\n  mixbus bench\n  mixbus bench --workload group --subscribers 4 --count 200000\n  mixbus bench --workload reqrep --count 10000 --json"
    )]
    Bench(BenchArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AckArg {
    Auto,
    Manual,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum, default_value_t = bench::Workload::Pubsub)]
    workload: bench::Workload,
    /// Payload size in bytes (at least 16: the sequence number and send time ride in it).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Messages to publish (requests, for reqrep).
    #[arg(long, default_value_t = 200_000)]
    count: u64,
    /// Publisher threads (pubsub and group).
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Subscribers (broadcast subscribers, or group members).
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// Run on the in-memory broker, in this process, instead of through a server.
    #[arg(long, conflicts_with = "server")]
    memory: bool,
    /// Bench a running server instead of starting an embedded one.
    #[arg(long)]
    server: Option<SocketAddr>,
    /// Event pumps (threads) of the embedded server: its connections are spread over them
    /// [default: the machine's cores, at most 4].
    #[arg(
        long,
        value_parser = clap::value_parser!(u16).range(1..=256),
        conflicts_with_all = ["server", "memory"]
    )]
    pumps: Option<u16>,
    /// Microseconds an idle event pump spins before it sleeps (0 to 100000), in the bench's
    /// clients and the embedded server, fixed [default: adaptive, 20 to 200]. Longer answers
    /// requests sooner, for CPU; see `mixbus serve --help`.
    #[arg(
        long,
        value_parser = clap::value_parser!(u32).range(0..=100_000),
        conflicts_with = "memory"
    )]
    spin_us: Option<u32>,
    /// Run the subscribers' handlers (pubsub, fanout, group) inline, on their connection's I/O
    /// thread (`Handler::inline`), instead of handing each batch to a thread of the
    /// subscription's own: no hand-off and no wake-up, for handlers that never block.
    #[arg(long, conflicts_with = "memory")]
    inline: bool,
    /// Publish at most this many messages (requests, for reqrep) per second in all, evenly
    /// spaced, instead of as fast as the subscribers take them: to see latency and the
    /// process's CPU time (`cpu_s`) at a given load rather than at full speed.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    rate: Option<u64>,
    /// The server's token, if it asks for one.
    #[arg(long, env = "MIXBUS_TOKEN")]
    token: Option<String>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// No progress display.
    #[arg(long)]
    quiet: bool,
}

/// The bench's publishing and subscribing brokers, and the name of the backend.
type Backend = (Arc<dyn Broker>, Arc<dyn Broker>, String);

/// An error for the user: printed as one line.
#[derive(Debug)]
pub(crate) struct CliError(String);

impl CliError {
    pub(crate) fn msg(text: impl Into<String>) -> CliError {
        CliError(text.into())
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<E: std::error::Error> From<E> for CliError {
    fn from(err: E) -> Self {
        // Keep the chain on one line: "outer: inner: root".
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(inner) = source {
            let inner_text = inner.to_string();
            if !text.contains(&inner_text) {
                text.push_str(": ");
                text.push_str(&inner_text);
            }
            source = inner.source();
        }
        CliError(text)
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn bench(args: BenchArgs) -> Result<(), CliError> {
    let plan = bench::Plan {
        workload: args.workload,
        size: args.size,
        count: args.count,
        publishers: args.publishers,
        subscribers: args.subscribers,
        inline: args.inline,
        rate: args.rate,
        progress: !args.quiet && !args.json,
    };
    let threads = (args.subscribers + 1).clamp(2, 8);
    let spin = args.spin_us.map(|us| Duration::from_micros(us.into()));
    let mut embedded = None;
    let (publisher, subscriber, backend): Backend = if args.memory {
        let broker: Arc<dyn Broker> = Arc::new(InMemoryBroker::with_config(
            InMemoryConfig::default().with_dispatch_threads(threads),
        )?);
        (broker.clone(), broker, "memory".into())
    } else {
        let addr = match args.server {
            Some(addr) => addr,
            None => {
                let server = net::embedded_server(args.count, args.pumps.map(usize::from), spin)?;
                let addr = server.local_addr();
                embedded = Some(server);
                addr
            }
        };
        let token = args.token.as_deref();
        // Publishers stream without waiting for a confirm per message, as a bench should;
        // every message is still checked on arrival.
        let publisher: Arc<dyn Broker> = Arc::new(net::connect_with(addr, token, false, spin)?);
        let subscriber: Arc<dyn Broker> = Arc::new(net::connect_with(addr, token, true, spin)?);
        let name = if embedded.is_some() {
            "embedded"
        } else {
            "server"
        };
        (publisher, subscriber, name.into())
    };
    let outcome = bench::run(publisher.clone(), subscriber.clone(), &backend, &plan)?;
    publisher.close(Duration::from_secs(5));
    subscriber.close(Duration::from_secs(5));
    if let Some(server) = embedded {
        server.shutdown(Duration::from_secs(5));
    }
    if args.json {
        println!("{}", outcome.json());
    } else {
        println!("{}", outcome.table());
    }
    match outcome.verified {
        Ok(_) => Ok(()),
        Err(problem) => Err(CliError(format!("bench not verified: {problem}"))),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Bench(args) => bench(args),
        Command::Serve {
            listen,
            token,
            max_connections,
            max_frame_len,
            max_subscriptions,
            max_outbound_bytes,
            max_queued_per_subscription,
            hold_publishers_above,
            hold_publishers_above_bytes,
            max_in_flight_bytes,
            pumps,
            spin_us,
        } => {
            let mut config = ServerConfig::default()
                .with_max_connections(max_connections)
                .with_max_frame_len(max_frame_len)
                .with_max_subscriptions_per_connection(max_subscriptions)
                .with_max_outbound_bytes(max_outbound_bytes)
                .with_max_queued_per_subscription(max_queued_per_subscription)
                .with_hold_publishers_above(hold_publishers_above)
                .with_hold_publishers_above_bytes(hold_publishers_above_bytes);
            config.inner.max_in_flight_bytes = max_in_flight_bytes;
            if let Some(pumps) = pumps {
                config = config.with_pumps(pumps.into());
            }
            if let Some(us) = spin_us {
                config = config.with_spin(Duration::from_micros(us.into()));
            }
            if let Some(token) = token {
                config = config.with_token(token);
            }
            net::serve(listen, config)
        }
        Command::Pub {
            topic,
            message,
            count,
            headers,
            client,
        } => net::connect(client.server, client.token.as_deref())
            .and_then(|b| net::publish(&b, &topic, message, count, &headers)),
        Command::Sub {
            pattern,
            group,
            ack,
            count,
            client,
        } => net::connect(client.server, client.token.as_deref())
            .and_then(|b| net::subscribe(&b, &pattern, group, ack == AckArg::Manual, count)),
        Command::Stats { watch, client } => {
            net::connect(client.server, client.token.as_deref()).and_then(|b| net::stats(&b, watch))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mixbus: error: {err}");
            ExitCode::FAILURE
        }
    }
}
