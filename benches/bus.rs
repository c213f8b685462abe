//! bus benches (filled in by the bus issue). Run with `cargo bench --bench bus`.
fn main() {}
