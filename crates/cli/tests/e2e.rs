//! End-to-end through the real binary: serve, sub and pub as separate processes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

const PATIENCE: Duration = Duration::from_secs(20);

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mixbus() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mixbus"));
    cmd.env("RUST_LOG", "error");
    cmd
}

/// Starts `mixbus serve` on a free loopback port and returns it with its address.
fn serve() -> (Proc, String) {
    let mut child = mixbus()
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "serve printed {addr:?}");
    (Proc(child), addr)
}

/// Starts `mixbus sub` and waits until it says it is subscribed; its payload lines arrive on the
/// returned channel.
fn sub(addr: &str, args: &[&str]) -> (Proc, mpsc::Receiver<String>) {
    let mut child = mixbus()
        .args(["sub", "--server", addr])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("subscribed"), "sub said {line:?}");
    thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
    });
    let (tx, rx) = mpsc::channel();
    let stdout: ChildStdout = child.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Proc(child), rx)
}

fn publish(addr: &str, topic: &str, lines: &[String]) {
    let mut child = mixbus()
        .args(["pub", "--server", addr, topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for line in lines {
            writeln!(stdin, "{line}").unwrap();
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "pub failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn smoke() {
    let (_server, addr) = serve();
    let (_sub, lines) = sub(&addr, &["greetings.*", "--count", "1"]);
    publish(&addr, "greetings.world", &["hello".to_owned()]);
    assert_eq!(lines.recv_timeout(PATIENCE).unwrap(), "hello");
}

#[test]
fn a_group_splits_messages_and_a_broadcast_sub_sees_all() {
    let (_server, addr) = serve();
    let (_a, from_a) = sub(&addr, &["jobs.>", "--group", "workers"]);
    let (_b, from_b) = sub(&addr, &["jobs.>", "--group", "workers", "--ack", "manual"]);
    let (_all, from_all) = sub(&addr, &["jobs.>"]);

    // Garbage on the port closes only that connection.
    let mut garbage = TcpStream::connect(&addr).unwrap();
    garbage
        .write_all(b"\x00\x00\x00\x05\xffjunk-that-is-no-frame\x13\x37")
        .unwrap();

    let sent: Vec<String> = (0..200).map(|i| format!("job-{i}")).collect();
    publish(&addr, "jobs.resize", &sent);

    let mut all = Vec::new();
    while all.len() < 200 {
        all.push(
            from_all
                .recv_timeout(PATIENCE)
                .expect("broadcast sub saw all 200"),
        );
    }
    assert_eq!(all, sent, "the broadcast sub sees every message in order");

    let mut group = Vec::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    while group.len() < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "the group stalled at {} of 200",
            group.len()
        );
        group.extend(from_a.try_iter());
        group.extend(from_b.try_iter());
        if let Ok(line) = from_a.recv_timeout(Duration::from_millis(20)) {
            group.push(line);
        }
    }
    group.sort();
    let mut expected = sent.clone();
    expected.sort();
    assert_eq!(group, expected, "each message processed once by the group");
}

#[test]
fn bench_on_the_embedded_server_is_verified() {
    let out = mixbus()
        .args(["bench", "--count", "2000", "--quiet"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("embedded"), "{stdout}");
    assert!(stdout.contains("verified:"), "{stdout}");
}

#[test]
fn serving_beyond_loopback_without_a_token_is_refused() {
    let out = mixbus()
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env_remove("MIXBUS_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("token"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one clear line: {stderr}");
}

#[test]
fn a_client_without_a_server_fails_with_one_line() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = mixbus()
        .args(["pub", "--server", &port.to_string(), "a.b", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the server"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn stats_shows_a_row_per_topic() {
    let (_server, addr) = serve();
    let (_sub, lines) = sub(&addr, &["metrics.*", "--count", "3"]);
    let sent: Vec<String> = (0..3).map(|i| format!("m{i}")).collect();
    publish(&addr, "metrics.cpu", &sent);
    for _ in 0..3 {
        lines.recv_timeout(PATIENCE).unwrap();
    }
    let out = mixbus()
        .args(["stats", "--server", &addr])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("metrics.cpu"))
        .unwrap_or_else(|| panic!("no row for the topic in:\n{stdout}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[1], "3", "published count in {row}");
}
