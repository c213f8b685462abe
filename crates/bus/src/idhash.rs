//! Hash maps keyed by the bus's integer ids.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// A hasher for the bus's integer ids: one multiply per integer. The ids are sequential and
/// assigned by the broker (on a client, by the server it chose to trust), never by the peer
/// whose traffic fills the map, so they need no defence against chosen collisions; SipHash's
/// cost showed in every delivery's ack bookkeeping.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by ids, hashed with [`IdHasher`].
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// A set of ids, hashed with [`IdHasher`].
pub(crate) type IdSet<K> = HashSet<K, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{DeliveryId, MessageId, SubscriptionId};

    #[test]
    fn ids_that_differ_in_either_half_hash_apart() {
        let mut set = IdSet::default();
        for sub in 0..64 {
            for msg in 0..64 {
                assert!(set.insert(DeliveryId {
                    subscription: SubscriptionId(sub),
                    message: MessageId(msg),
                }));
            }
        }
        let hashes: HashSet<u64> = set
            .iter()
            .map(|id| std::hash::BuildHasher::hash_one(set.hasher(), id))
            .collect();
        assert_eq!(hashes.len(), 64 * 64, "no two of the ids collide");
    }
}
