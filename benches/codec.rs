//! codec benches (filled in by the codec issue). Run with `cargo bench --bench codec`.
fn main() {}
