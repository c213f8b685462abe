//! nats-server through NATS's own Rust client (`async-nats`), measured the
//! way `mixbus bench` measures the bus: deliveries per second from the first
//! publish to the last delivery, every delivery counted.
//!
//! Usage: `nats-official ADDR WORKLOAD SIZE COUNT [SUBSCRIBERS [RATE]]`, with
//! WORKLOAD one of `pubsub`, `fanout`, `group` (a NATS queue group: no acks,
//! NATS core has none) or `reqrep` (one request outstanding; prints p50; with
//! RATE, at most that many requests per second, as `mixbus bench --rate`).
//!
//! Subscribers get a pending capacity of COUNT messages, so that the client
//! never drops one as a slow consumer (with the default 65,536 it dropped a
//! third to two thirds of a 16-byte stream here).

use futures_util::StreamExt;
use std::time::{Duration, Instant};

const SUBJECT: &str = "compare.x";
const IDLE: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: nats-official ADDR pubsub|fanout|group|reqrep SIZE COUNT [SUBSCRIBERS [RATE]]");
        std::process::exit(2);
    }
    let addr = args[1].clone();
    let workload = args[2].as_str();
    let size: usize = args[3].parse().expect("SIZE");
    let count: usize = args[4].parse().expect("COUNT");
    let subscribers: usize = args.get(5).map_or(
        match workload {
            "fanout" => 4,
            "group" => 2,
            _ => 1,
        },
        |s| s.parse().expect("SUBSCRIBERS"),
    );
    if workload == "reqrep" {
        let rate: Option<f64> = args.get(6).map(|r| r.parse().expect("RATE"));
        reqrep(&addr, size, count, rate).await;
        return;
    }
    let mut subs = Vec::new();
    for _ in 0..subscribers {
        let client = async_nats::ConnectOptions::new()
            .subscription_capacity(count.max(1024))
            .connect(addr.as_str())
            .await
            .expect("connect");
        let sub = if workload == "group" {
            client.queue_subscribe(SUBJECT, "g".into()).await
        } else {
            client.subscribe(SUBJECT).await
        }
        .expect("subscribe");
        client.flush().await.expect("flush");
        subs.push((client, sub));
    }
    let expected = if workload == "group" {
        count
    } else {
        count * subscribers
    };
    let publisher = async_nats::connect(addr.as_str()).await.expect("connect");
    let payload = bytes::Bytes::from(vec![7u8; size]);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (client, mut sub) in subs {
        tasks.push(tokio::spawn(async move {
            let _client = client;
            let (mut got, mut last) = (0usize, Instant::now());
            while let Ok(Some(m)) = tokio::time::timeout(IDLE, sub.next()).await {
                assert_eq!(m.payload.len(), size);
                got += 1;
                // The clock is read by the last delivery (and every 1,024th, for a run that
                // ends idle): a read per message would slow NATS's subscriber down.
                if got == count || got % 1024 == 0 {
                    last = Instant::now();
                }
                if got == count {
                    break;
                }
            }
            (got, last)
        }));
    }
    for _ in 0..count {
        publisher
            .publish(SUBJECT, payload.clone())
            .await
            .expect("publish");
    }
    publisher.flush().await.expect("flush");
    let (mut delivered, mut last) = (0usize, start);
    for t in tasks {
        let (got, at) = t.await.expect("subscriber");
        delivered += got;
        last = last.max(at);
    }
    let seconds = (last - start).as_secs_f64();
    println!(
        "nats-official {workload} size {size}: published {count} delivered {delivered}/{expected} in {seconds:.3} s: {:.0} msgs/s",
        delivered as f64 / seconds
    );
}

/// Request/reply round trips, one outstanding; with `rate`, at most that many requests per
/// second, evenly spaced (as `mixbus bench --rate`).
async fn reqrep(addr: &str, size: usize, count: usize, rate: Option<f64>) {
    let server = async_nats::connect(addr).await.expect("connect");
    let mut requests = server.subscribe(SUBJECT).await.expect("subscribe");
    server.flush().await.expect("flush");
    tokio::spawn(async move {
        while let Some(m) = requests.next().await {
            if let Some(reply) = m.reply {
                server.publish(reply, m.payload).await.expect("reply");
            }
        }
    });
    let client = async_nats::connect(addr).await.expect("connect");
    let payload = bytes::Bytes::from(vec![7u8; size]);
    let mut times = Vec::with_capacity(count);
    let start = Instant::now();
    for i in 0..count {
        if let Some(rate) = rate {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
        }
        let sent = Instant::now();
        let answer = client
            .request(SUBJECT, payload.clone())
            .await
            .expect("request");
        times.push(sent.elapsed());
        assert_eq!(answer.payload.len(), size);
    }
    times.sort();
    println!(
        "nats-official reqrep size {size}: {count} requests, p50 {:.1} us, p99 {:.1} us",
        times[count / 2].as_secs_f64() * 1e6,
        times[count * 99 / 100].as_secs_f64() * 1e6
    );
}
