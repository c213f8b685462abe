//! Frame codec benches: frames split per second from a 4 MiB buffer by `FrameDecoder::decode`
//! (one `Bytes` per frame) and by `FrameDecoder::decode_frames` (batches of 1,024 read in place).
//! Run with `cargo bench --bench codec`.
//!
//! Baseline in the same group: a hand-written loop that only walks the length prefixes of the same
//! buffer without producing `Bytes` (`codec/walk_baseline/N`), so `decode/N` over `walk_baseline/N`
//! is the overhead of our decoder.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use mixbus::task::{BytesMut, DEFAULT_MAX_FRAME_LEN, FrameDecoder, Frames, HEADER_LEN, encode};

/// Samples per case (kept small: the bench machine has 2 shared cores).
const SAMPLES: usize = 20;
/// Measurement time per case.
const MEASURE: Duration = Duration::from_secs(3);
/// Warm-up time per case.
const WARM_UP: Duration = Duration::from_secs(1);
/// Size of the buffer the frames are split from.
const BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Payload sizes: many tiny frames, and page-sized ones.
const PAYLOAD_SIZES: [usize; 2] = [16, 4096];

/// As many frames of `payload` bytes as fit in [`BUFFER_BYTES`], encoded, and their count.
fn wire(payload: usize) -> (Vec<u8>, u64) {
    let frames = BUFFER_BYTES / (HEADER_LEN + payload);
    let body: Vec<u8> = (0..payload).map(|i| i as u8).collect();
    let mut wire = BytesMut::with_capacity(frames * (HEADER_LEN + payload));
    for _ in 0..frames {
        encode(&body, &mut wire);
    }
    (wire.to_vec(), frames as u64)
}

/// The baseline: walks the length prefixes and touches each payload slice, producing nothing.
fn walk(wire: &[u8]) -> u64 {
    let mut rest = wire;
    let mut frames = 0;
    while let Some((header, body)) = rest.split_first_chunk::<HEADER_LEN>() {
        let len = u32::from_be_bytes(*header) as usize;
        if body.len() < len {
            break;
        }
        let (payload, next) = body.split_at(len);
        black_box(payload);
        rest = next;
        frames += 1;
    }
    frames
}

/// A decoder holding all of `wire`.
fn loaded(wire: &[u8]) -> FrameDecoder {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_LEN);
    decoder.extend_from_slice(wire);
    decoder
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    group
        .sample_size(SAMPLES)
        .measurement_time(MEASURE)
        .warm_up_time(WARM_UP);
    for size in PAYLOAD_SIZES {
        let (wire, frames) = wire(size);
        group.throughput(Throughput::Elements(frames));
        group.bench_with_input(BenchmarkId::new("decode", size), &wire, |b, wire| {
            b.iter_batched_ref(
                || loaded(wire),
                |decoder| {
                    let mut n = 0u64;
                    while let Some(frame) = decoder.decode().expect("valid frames") {
                        black_box(frame);
                        n += 1;
                    }
                    assert_eq!(n, frames);
                },
                BatchSize::PerIteration,
            );
        });
        group.bench_with_input(BenchmarkId::new("decode_frames", size), &wire, |b, wire| {
            let mut batch = Frames::new();
            b.iter_batched_ref(
                || loaded(wire),
                |decoder| {
                    let mut n = 0u64;
                    while decoder
                        .decode_frames(&mut batch, 1024)
                        .expect("valid frames")
                        > 0
                    {
                        for frame in batch.iter() {
                            black_box(frame);
                            n += 1;
                        }
                    }
                    assert_eq!(n, frames);
                },
                BatchSize::PerIteration,
            );
        });
        group.bench_with_input(BenchmarkId::new("walk_baseline", size), &wire, |b, wire| {
            b.iter(|| assert_eq!(walk(black_box(wire)), frames));
        });
    }
    group.finish();
}

// A hand-written `main` instead of `criterion_group!`, whose generated `pub fn` has no docs.
fn main() {
    let mut c = Criterion::default().configure_from_args();
    decode(&mut c);
    c.final_summary();
}
