//! Property test of the wire decoder: random frames and mutated valid encodings never panic it,
//! and every valid encoding round-trips (`FUZZ_CASES` sets the number of cases).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use mixbus_bus::protocol::{ErrorCode, Op, VERSION, WireDelivery, decode, encode};
use mixbus_bus::{Backoff, SubscribeOptions};

/// A small seeded generator (xorshift64*), so failures can be replayed from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn string(&mut self) -> String {
        let n = self.below(12);
        (0..n)
            .map(|_| match self.below(4) {
                0 => 'é',
                _ => char::from(b'a' + self.below(26) as u8),
            })
            .collect()
    }
    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max);
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn headers(&mut self) -> Vec<(String, String)> {
        (0..self.below(4))
            .map(|_| (self.string(), self.string()))
            .collect()
    }
}

impl Rng {
    fn delivery(&mut self) -> WireDelivery {
        WireDelivery {
            message: self.next(),
            attempt: self.next() as u32,
            published_us: self.next(),
            topic: self.string().into(),
            headers: self.headers(),
            payload: Bytes::from(self.bytes(64)),
        }
    }
}

fn random_op(r: &mut Rng) -> Op {
    match r.below(19) {
        0 => Op::Hello {
            version: r.next() as u16,
            token: if r.below(2) == 0 {
                None
            } else {
                Some(r.string())
            },
            client: r.string(),
        },
        1 => Op::Welcome {
            version: VERSION,
            server: r.string(),
        },
        2 => Op::Publish {
            request: r.next(),
            topic: r.string(),
            headers: r.headers(),
            payload: Bytes::from(r.bytes(64)),
        },
        3 => Op::Confirm {
            request: r.next(),
            message: r.next(),
        },
        4 => {
            let mut o = if r.below(2) == 0 {
                SubscribeOptions::default()
            } else {
                SubscribeOptions::group(r.string()).manual_ack()
            };
            o = o
                .with_ack_wait(Duration::from_millis(r.below(100_000)))
                .with_max_attempts(r.next() as u32)
                .with_max_in_flight(r.below(u64::from(u32::MAX)) as usize)
                .with_backoff(Backoff::fixed(Duration::from_millis(r.below(1000))));
            if r.below(2) == 0 {
                o = o.with_dead_letter_topic(r.string());
            }
            Op::Subscribe {
                sub: r.next(),
                pattern: r.string(),
                options: o,
            }
        }
        5 => Op::Subscribed { sub: r.next() },
        6 => Op::Unsubscribe { sub: r.next() },
        7 => Op::Deliver {
            sub: r.next(),
            delivery: r.delivery(),
        },
        14 => Op::Delivers {
            sub: r.next(),
            messages: (0..=r.below(4)).map(|_| r.delivery()).collect(),
        },
        // Packed deliveries leave out what repeats the previous one: make runs that do.
        17 => {
            let mut messages: Vec<WireDelivery> = Vec::new();
            for _ in 0..=r.below(6) {
                let mut d = r.delivery();
                if let Some(prev) = messages.last() {
                    if r.below(2) == 0 {
                        d.message = prev.message.wrapping_add(1);
                    }
                    if r.below(2) == 0 {
                        d.published_us = prev.published_us;
                    }
                    if r.below(2) == 0 {
                        d.topic = prev.topic.clone();
                    }
                }
                if r.below(2) == 0 {
                    d.attempt = 1;
                    d.headers.clear();
                }
                messages.push(d);
            }
            Op::Packed {
                sub: r.next(),
                messages,
            }
        }
        18 => Op::AckRanges {
            sub: r.next(),
            ranges: (0..=r.below(4))
                .map(|_| (r.next(), 1 + r.below(u64::from(u32::MAX)) as u32))
                .collect(),
        },
        15 => Op::Acks {
            sub: r.next(),
            messages: (0..=r.below(8)).map(|_| r.next()).collect(),
        },
        8 => Op::Ack {
            sub: r.next(),
            message: r.next(),
        },
        9 => Op::Nack {
            sub: r.next(),
            message: r.next(),
            requeue: r.below(2) == 0,
        },
        10 => Op::Ping { nonce: r.next() },
        11 => Op::Pong { nonce: r.next() },
        12 => Op::Stats { request: r.next() },
        13 => Op::StatsReply {
            request: r.next(),
            rows: r.headers(),
        },
        _ => Op::Error {
            request: r.next(),
            code: ErrorCode::from_u16(r.next() as u16),
            text: r.string(),
        },
    }
}

fn mutate(r: &mut Rng, frame: &[u8]) -> Vec<u8> {
    let mut v = frame.to_vec();
    for _ in 0..=r.below(3) {
        match r.below(4) {
            0 if !v.is_empty() => {
                let i = r.below(v.len() as u64) as usize;
                v[i] ^= 1 << r.below(8);
            }
            1 => v.truncate(r.below(v.len() as u64 + 1) as usize),
            2 => v.extend(r.bytes(8)),
            _ if !v.is_empty() => {
                let i = r.below(v.len() as u64) as usize;
                v[i] = r.next() as u8;
            }
            _ => {}
        }
    }
    v
}

fn cases() -> u64 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000)
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_0001)
}

#[test]
fn smoke() {
    let op = Op::Ping { nonce: 3 };
    assert_eq!(decode(op.to_bytes()), Ok(op));
}

#[test]
fn random_frames_never_panic_the_decoder() {
    let seed = seed();
    let mut r = Rng(seed | 1);
    for case in 0..cases() {
        let mut frame = r.bytes(48);
        // Half the frames start with a valid op byte so the field decoders get exercised.
        if let Some(first) = frame.first_mut()
            && r.below(2) == 0
        {
            *first = 1 + (r.below(17) as u8);
        }
        let result = std::panic::catch_unwind(|| decode(Bytes::from(frame.clone())));
        assert!(
            result.is_ok(),
            "decoder panicked: seed {seed} case {case} frame {frame:?}"
        );
    }
}

#[test]
fn valid_encodings_round_trip_and_mutations_never_panic() {
    let seed = seed();
    let mut r = Rng(seed.rotate_left(17) | 1);
    for case in 0..cases() {
        let op = random_op(&mut r);
        let mut buf = BytesMut::new();
        encode(&op, &mut buf);
        let frame = buf.freeze();
        assert_eq!(
            decode(frame.clone()).as_ref(),
            Ok(&op),
            "seed {seed} case {case}"
        );
        let bad = mutate(&mut r, &frame);
        let result = std::panic::catch_unwind(|| decode(Bytes::from(bad.clone())));
        match result {
            Err(_) => panic!("decoder panicked: seed {seed} case {case} frame {bad:?}"),
            // Whatever a mutated frame decodes to must encode to a frame that decodes to the
            // same, and to the same bytes where the op has one encoding. A publish has two (a
            // PUBLISH, or the shorter PUB the encoder writes), and a PUB or a PACKED delivery
            // may write out a field the encoder leaves out (a request id of 0, an empty header
            // list, an id one past the previous delivery's).
            Ok(Ok(decoded)) => {
                let mut again = BytesMut::new();
                encode(&decoded, &mut again);
                let again = again.freeze();
                assert_eq!(
                    decode(again.clone()).as_ref(),
                    Ok(&decoded),
                    "seed {seed} case {case}"
                );
                if !matches!(decoded, Op::Publish { .. } | Op::Packed { .. }) {
                    assert_eq!(&again[..], &bad[..], "seed {seed} case {case}");
                }
            }
            Ok(Err(_)) => {}
        }
    }
}
