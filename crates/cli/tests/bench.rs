//! End-to-end: the real `mixbus` binary runs `bench` on small counts and reports a verified result.

use std::process::Command;

fn mixbus(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mixbus"))
        .args(args)
        .output()
        .expect("the mixbus binary runs")
}

/// Runs `mixbus` with `args`, checks that it succeeded (naming `what` and its output if not)
/// and returns its standard output.
fn succeeding(what: &str, args: &[&str]) -> String {
    let out = mixbus(args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what}: {stdout}{stderr}");
    stdout
}

#[test]
fn smoke() {
    let out = mixbus(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("bench"), "{help}");
}

/// Runs every workload on a small count with `backend` flags and checks each verified.
fn every_workload_is_verified(backend: &[&str]) {
    for workload in ["pubsub", "fanout", "group", "reqrep"] {
        let mut args = vec!["bench", "--workload", workload, "--count", "2000"];
        args.extend_from_slice(&["--subscribers", "2", "--quiet"]);
        args.extend_from_slice(backend);
        let stdout = succeeding(workload, &args);
        assert!(stdout.contains("verified:"), "{workload}: {stdout}");
        assert!(!stdout.contains("NOT VERIFIED"), "{workload}: {stdout}");
    }
}

#[test]
fn bench_small_count_is_verified_for_every_workload() {
    every_workload_is_verified(&["--memory"]);
}

#[test]
fn bench_json_is_one_object() {
    let out = mixbus(&["bench", "--memory", "--count", "1000", "--json"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.trim();
    assert!(line.starts_with('{') && line.ends_with('}'), "{line}");
    assert!(line.contains("\"verified\":true"), "{line}");
    assert!(line.contains("\"delivered\":1000"), "{line}");
}

#[test]
fn a_bad_flag_is_one_clear_line_and_a_non_zero_exit() {
    for (args, named) in [
        (&["bench", "--workload", "nonsense"][..], "nonsense"),
        (&["bench", "--pumps", "0"][..], "1..=256"),
        (&["serve", "--pumps", "300"][..], "1..=256"),
        (&["serve", "--spin-us", "100001"][..], "0..=100000"),
        (&["bench", "--memory", "--spin-us", "100"][..], "--memory"),
        (&["bench", "--memory", "--inline"][..], "--memory"),
    ] {
        let out = mixbus(args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn bench_of_large_messages_through_the_server_is_verified() {
    // Flat out, 64 KiB messages to 4 subscribers on one connection outran it by more than the
    // server's outbound limit (8 MiB) and got it cut off as a slow consumer: the bench lost
    // messages and failed its own check. Its publishers now stay within a window of bytes.
    let stdout = succeeding(
        "fan-out of 64 KiB",
        &[
            "bench",
            "--workload",
            "fanout",
            "--subscribers",
            "4",
            "--size",
            "65536",
            "--count",
            "1500",
            "--quiet",
        ],
    );
    assert!(
        stdout.contains("each of 4 subscribers got all 1500 messages"),
        "{stdout}"
    );
}

#[test]
fn bench_through_a_server_on_two_pumps_is_verified_for_every_workload() {
    every_workload_is_verified(&["--pumps", "2"]);
}

#[test]
fn bench_through_a_spinning_server_is_verified_for_every_workload() {
    every_workload_is_verified(&["--pumps", "1", "--spin-us", "150"]);
}

#[test]
fn bench_with_inline_handlers_is_verified_for_every_workload() {
    // Group members ack by hand from the connection's I/O thread: the acks must still reach the
    // server (a lost one would re-deliver, and the exactly-once check would fail).
    every_workload_is_verified(&["--inline"]);
}

/// The number after `"key":` in a one-line JSON object.
fn json_number(line: &str, key: &str) -> f64 {
    let at = line
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("no {key} in {line}"));
    let rest = &line[at + key.len() + 3..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {line}"))
}

#[test]
fn a_paced_bench_keeps_to_its_rate_and_reports_its_cpu_time() {
    // 40 messages at 400 per second are spaced 2.5 ms apart: the run cannot take less than
    // 39 gaps, 97.5 ms, however fast the machine (the pacing sleeps; it never runs early).
    for workload in ["pubsub", "reqrep"] {
        let stdout = succeeding(
            workload,
            &[
                "bench",
                "--memory",
                "--workload",
                workload,
                "--count",
                "40",
                "--rate",
                "400",
                "--json",
            ],
        );
        let line = stdout.trim();
        assert!(line.contains("\"verified\":true"), "{line}");
        let seconds = json_number(line, "seconds");
        assert!(
            seconds >= 0.0975,
            "{workload}: 40 messages at 400/s took {seconds} s"
        );
        assert!(json_number(line, "cpu_s") >= 0.0, "{line}");
    }
    let out = mixbus(&["bench", "--memory", "--rate", "0"]);
    assert!(!out.status.success(), "a rate of 0 was taken");
}
