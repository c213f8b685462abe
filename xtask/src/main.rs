//! Project automation for mixbus, run as `cargo xtask <command>` (std only, matklad's xtask pattern).
//!
//! `cargo xtask ci` runs every check CI runs, printing each step's name and time and stopping at the
//! first failure.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// The layer crates, bottom first: each depends on the one before it and on no other layer.
const LAYERS: &[&str] = &[
    "mixbus-eventq",
    "mixbus-pump",
    "mixbus-task",
    "mixbus-queue",
    "mixbus-bus",
];

/// Folders of library crates, where printing and unfinished markers are not allowed.
const LIBRARY_SRC: &[&str] = &[
    "crates/eventq/src",
    "crates/pump/src",
    "crates/task/src",
    "crates/queue/src",
    "crates/bus/src",
    "src",
];

/// Macros library code must not call: printing, and unfinished or debugging markers.
const FORBIDDEN_MACROS: &[&str] = &[
    "dbg",
    "todo",
    "unimplemented",
    "println",
    "eprintln",
    "print",
    "eprint",
];

type Result<T = ()> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("layers") => check_layers(),
        Some("tidy") => tidy(),
        Some("fuzz") => fuzz(&args[1..]),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 ci      fmt, clippy, tests, docs, examples, benches (built), layering and tidy checks\n  \
                 layers  check that each layer depends only on the one beneath it\n  \
                 tidy    check file headers and library hygiene\n  \
                 fuzz    run the wire-protocol decoder property test for longer (FUZZ_CASES=N)"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one folder below the workspace root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn step(name: &str, f: impl FnOnce() -> Result) -> Result {
    println!("==> {name}");
    let start = Instant::now();
    let result = f();
    let secs = start.elapsed().as_secs_f64();
    match &result {
        Ok(()) => println!("<== {name}: ok in {secs:.1}s"),
        Err(_) => println!("<== {name}: FAILED after {secs:.1}s"),
    }
    result.map_err(|err| format!("step `{name}` failed: {err}"))
}

fn run(mut cmd: Command) -> Result {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .map_err(|err| format!("could not start {shown}: {err}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} exited with {status}"))
    }
}

fn cargo_step(name: &str, args: &[&str], envs: &[(&str, &str)]) -> Result {
    step(name, || {
        let mut cmd = cargo();
        cmd.args(args);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        run(cmd)
    })
}

fn ci() -> Result {
    let start = Instant::now();
    step("tidy", tidy)?;
    step("layers", check_layers)?;
    cargo_step("fmt", &["fmt", "--all", "--check"], &[])?;
    cargo_step(
        "clippy",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo_step("test", &["test", "--workspace"], &[])?;
    // The bus tests' servers spread connections over 2 pumps; the networked ones again on 1
    // pump, where one thread serves everything.
    cargo_step(
        "test (servers on 1 pump)",
        &[
            "test",
            // The whole workspace, as in the step before, so that features unify the same way
            // and nothing is built again; only the bus crate has these test targets.
            "--workspace",
            "--test",
            "network",
            "--test",
            "suite_remote",
            "--test",
            "stats",
            "--test",
            "faults",
        ],
        &[("MIXBUS_TEST_PUMPS", "1")],
    )?;
    // Libraries only: the `mixbus` binary of mixbus-cli and the `mixbus` facade library write
    // the same `target/doc/mixbus` (cargo issue 6313), and documenting both races on it.
    cargo_step(
        "doc",
        &["doc", "--workspace", "--no-deps", "--lib"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    cargo_step("examples", &["build", "--examples"], &[])?;
    cargo_step("bench (build only)", &["bench", "--no-run"], &[])?;
    println!(
        "ci: all steps passed in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Reads the normal (non-dev) dependencies of `package` that are mixbus layers, with `cargo tree`.
fn layer_deps(package: &str) -> Result<Vec<String>> {
    let out = cargo()
        .args([
            "tree", "--quiet", "-p", package, "-e", "normal", "--depth", "1", "--prefix", "none",
            "--format", "{p}",
        ])
        .output()
        .map_err(|err| format!("could not run cargo tree: {err}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo tree -p {package} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut deps: Vec<String> = text
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| LAYERS.contains(name))
        .map(str::to_owned)
        .collect();
    deps.sort();
    deps.dedup();
    Ok(deps)
}

fn check_layers() -> Result {
    for (i, layer) in LAYERS.iter().enumerate() {
        let deps = layer_deps(layer)?;
        let expected: Vec<String> = if i == 0 {
            Vec::new()
        } else {
            vec![LAYERS[i - 1].to_owned()]
        };
        if deps != expected {
            return Err(format!(
                "{layer} must depend on {expected:?} among the layers, but depends on {deps:?}"
            ));
        }
        println!("    {layer} -> {expected:?}");
    }
    Ok(())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

fn tidy() -> Result {
    let root = root();
    let mut files = Vec::new();
    for dir in ["crates", "src", "xtask", "examples", "benches", "tests"] {
        rust_files(&root.join(dir), &mut files);
    }
    let mut problems = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap_or(file);
        let text = fs::read_to_string(file).map_err(|err| format!("{}: {err}", rel.display()))?;
        if !text.starts_with("//!") {
            problems.push(format!(
                "{}: must open with a `//!` line saying what it holds",
                rel.display()
            ));
        }
        let rel_str = rel.to_string_lossy().replace('\\', "/");
        let in_library = LIBRARY_SRC
            .iter()
            .any(|dir| rel_str.starts_with(&format!("{dir}/")));
        if in_library {
            for (n, line) in text.lines().enumerate() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                for name in FORBIDDEN_MACROS {
                    // Built here so that this file does not contain the markers it looks for.
                    let bad = format!("{name}!(");
                    if code.contains(&bad) {
                        problems.push(format!(
                            "{}:{}: `{bad}` is not allowed in library code",
                            rel.display(),
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    if problems.is_empty() {
        println!("    {} files checked", files.len());
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn fuzz(args: &[String]) -> Result {
    let cases = args
        .first()
        .cloned()
        .or_else(|| env::var("FUZZ_CASES").ok())
        .unwrap_or_else(|| "1000000".into());
    step("fuzz (protocol decoder)", || {
        let mut cmd = cargo();
        cmd.args([
            "test",
            "--release",
            "-p",
            "mixbus-bus",
            "--test",
            "protocol_fuzz",
        ])
        .env("FUZZ_CASES", &cases);
        run(cmd)
    })
}
