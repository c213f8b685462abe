//! pump benches (filled in by the pump issue). Run with `cargo bench --bench pump`.
fn main() {}
