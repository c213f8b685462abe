//! Event queue benches: a `Waker` wake plus `poll` round trip between two threads, and a `poll` over
//! 1,000 idle registered sockets. Run with `cargo bench --bench eventq`.
fn main() {}
