//! queue benches (filled in by the queue issue). Run with `cargo bench --bench queue`.
fn main() {}
