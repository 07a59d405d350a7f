//! Replays an access trace against one tier of a given capacity and policy, and counts hits:
//! the hit-ratio half of `vbus-bench cache` and `vbus-bench cache --trace`.

use std::collections::HashMap;

use crate::policy::{Entries as _, Policy, PolicyKind, SlotTable};

/// Hits and misses of a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplayStats {
    /// Accesses that found their key.
    pub hits: u64,
    /// Accesses that did not (the key was then inserted, if it fit).
    pub misses: u64,
    /// Keys larger than the tier, never inserted.
    pub n_too_large: u64,
}

impl ReplayStats {
    /// Hits over accesses, from 0 to 1.
    pub fn hit_ratio(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// One tier: keys to slots, slot sizes, a policy, and the bytes in use.
#[derive(Debug)]
pub struct Tier {
    policy: Policy,
    capacity_bytes: u64,
    used_bytes: u64,
    slots_by_key: HashMap<u64, u32>,
    /// Each slot's size and the policy's hit mark.
    slots: SlotTable,
    /// Slots handed out so far.
    n_slots: u32,
    free_slots: Vec<u32>,
    stats: ReplayStats,
}

impl Tier {
    /// An empty tier of `capacity_bytes`.
    pub fn new(kind: PolicyKind, capacity_bytes: u64) -> Self {
        Self {
            policy: Policy::new(kind, capacity_bytes),
            capacity_bytes,
            used_bytes: 0,
            slots_by_key: HashMap::new(),
            slots: SlotTable::default(),
            n_slots: 0,
            free_slots: Vec::new(),
            stats: ReplayStats::default(),
        }
    }

    /// One access: a hit, or a miss followed by an insert that evicts until the key fits.
    pub fn access(&mut self, key: u64, size_bytes: u64) -> bool {
        if let Some(&slot) = self.slots_by_key.get(&key) {
            self.policy.access(slot, &self.slots);
            self.stats.hits += 1;
            return true;
        }
        self.stats.misses += 1;
        if size_bytes > self.capacity_bytes {
            self.stats.n_too_large += 1;
            return false;
        }
        while self.used_bytes + size_bytes > self.capacity_bytes {
            let Some(victim) = self.policy.evict(&mut |_| false, &self.slots) else {
                break;
            };
            self.used_bytes -= self.slots.size_bytes(victim.slot);
            self.slots_by_key.remove(&victim.key_hash);
            self.free_slots.push(victim.slot);
        }
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.n_slots += 1;
            self.n_slots - 1
        });
        self.slots.set_size(slot, size_bytes);
        self.slots_by_key.insert(key, slot);
        self.used_bytes += size_bytes;
        self.policy.insert(slot, key, size_bytes, &self.slots);
        false
    }

    /// Counts so far.
    pub fn stats(&self) -> ReplayStats {
        self.stats
    }

    /// Bytes held now.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }
}

/// Replays `(key, size)` accesses against a tier; returns its counts.
pub fn replay(
    kind: PolicyKind,
    capacity_bytes: u64,
    accesses: impl IntoIterator<Item = (u64, u64)>,
) -> ReplayStats {
    let mut tier = Tier::new(kind, capacity_bytes);
    for (key, size_bytes) in accesses {
        tier.access(key, size_bytes);
        debug_assert!(tier.used_bytes() <= capacity_bytes);
    }
    tier.stats()
}

/// Keys drawn from a Zipf distribution over `0..n_keys` with exponent `exponent`, by inverting a
/// precomputed cumulative distribution (8 bytes per key).
#[derive(Debug, Clone)]
pub struct Zipf {
    cumulative: Vec<f64>,
    rng_state: u64,
}

impl Zipf {
    /// A sampler over `n_keys` keys (at least 1); `seed` makes the sequence repeatable.
    pub fn new(n_keys: u64, exponent: f64, seed: u64) -> Self {
        let n_keys = n_keys.max(1);
        let mut cumulative = Vec::with_capacity(n_keys as usize);
        let mut total = 0.0;
        for rank in 1..=n_keys {
            total += 1.0 / (rank as f64).powf(exponent);
            cumulative.push(total);
        }
        for value in &mut cumulative {
            *value /= total;
        }
        Self {
            cumulative,
            rng_state: seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        }
    }

    /// The next key; key 0 is the most popular.
    pub fn next_key(&mut self) -> u64 {
        self.rng_state ^= self.rng_state << 13;
        self.rng_state ^= self.rng_state >> 7;
        self.rng_state ^= self.rng_state << 17;
        let uniform = (self.rng_state >> 11) as f64 / (1u64 << 53) as f64;
        self.cumulative.partition_point(|&c| c < uniform) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tier_never_exceeds_its_capacity_and_counts_every_access() {
        let mut zipf = Zipf::new(10_000, 0.9, 1);
        for kind in PolicyKind::ALL {
            let mut tier = Tier::new(kind, 50_000);
            for access_idx in 0..100_000u64 {
                let key = zipf.next_key();
                tier.access(key, 1 + key % 97);
                assert!(
                    tier.used_bytes() <= 50_000,
                    "{} at access {access_idx}",
                    kind.as_str()
                );
            }
            let stats = tier.stats();
            assert_eq!(stats.hits + stats.misses, 100_000);
            assert!(
                stats.hit_ratio() > 0.2 && stats.hit_ratio() < 1.0,
                "{}: {stats:?}",
                kind.as_str()
            );
        }
    }

    #[test]
    fn zipf_is_skewed_and_repeatable() {
        let draw = |seed| {
            let mut zipf = Zipf::new(1000, 1.0, seed);
            (0..10_000).map(|_| zipf.next_key()).collect::<Vec<_>>()
        };
        let keys = draw(7);
        assert_eq!(keys, draw(7));
        let zeros = keys.iter().filter(|&&k| k == 0).count();
        // P(key 0) = 1 / H(1000) ≈ 0.134 for exponent 1.
        assert!((1100..1600).contains(&zeros), "{zeros}");
        assert!(keys.iter().all(|&k| k < 1000));
    }

    /// A scan of one-hit keys through a hot set whose keys are hit while cached: S3-FIFO and
    /// SIEVE keep the hot set across the scan, LRU loses it every round. The property the two
    /// newer policies exist for.
    #[test]
    fn scan_resistance() {
        let mut accesses = Vec::new();
        for round in 0..200u64 {
            for _ in 0..2 {
                for hot in 0..30u64 {
                    accesses.push((hot, 1));
                }
            }
            for cold in 0..100u64 {
                accesses.push((1_000_000 + round * 1000 + cold, 1));
            }
        }
        let lru = replay(PolicyKind::Lru, 100, accesses.iter().copied()).hit_ratio();
        let s3fifo = replay(PolicyKind::S3Fifo, 100, accesses.iter().copied()).hit_ratio();
        let sieve = replay(PolicyKind::Sieve, 100, accesses.iter().copied()).hit_ratio();
        // LRU: the second pass of each round hits, 30 of 160 accesses.
        assert!(lru < 0.19, "lru {lru}");
        assert!(
            s3fifo > 0.3 && sieve > 0.3,
            "s3fifo {s3fifo}, sieve {sieve}"
        );
    }
}
