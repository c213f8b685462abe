//! The `mixbus` command line: serve, pub, sub, stats and bench.
//!
//! Errors are one clear line on standard error and a non-zero exit; `RUST_LOG` sets the log level.

use std::fmt;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use mixbus::bus::{Broker, InMemoryBroker, InMemoryConfig};

mod bench;

/// A message bus built on a hybrid of threads and events.
#[derive(Debug, Parser)]
#[command(name = "mixbus", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure throughput and latency; every message is checked on arrival.
    #[command(
        after_help = "Examples:\n  mixbus bench\n  mixbus bench --workload group --subscribers 4 --count 200000\n  mixbus bench --workload reqrep --count 10000 --json"
    )]
    Bench(BenchArgs),
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
    /// Run on the in-memory broker, in this process.
    #[arg(long)]
    memory: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// No progress display.
    #[arg(long)]
    quiet: bool,
}

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
        progress: !args.quiet && !args.json,
    };
    let threads = (args.subscribers + 1).clamp(2, 8);
    let broker: Arc<dyn Broker> = Arc::new(InMemoryBroker::with_config(
        InMemoryConfig::default().with_dispatch_threads(threads),
    )?);
    let outcome = bench::run(broker.clone(), "memory", &plan)?;
    broker.close(std::time::Duration::from_secs(5));
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
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mixbus: error: {err}");
            ExitCode::FAILURE
        }
    }
}
