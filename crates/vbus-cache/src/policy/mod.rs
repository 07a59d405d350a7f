//! Eviction policies: which entry of a tier goes first when it is full.
//!
//! A policy orders the slots of one tier (or shard); the tier owns the entries and their sizes.
//! `evict` removes the chosen slot from the policy and returns it; entries the tier must keep
//! (pinned, or the only copy) are skipped through the `keep` callback, with bounded work.
//!
//! - [`PolicyKind::Lru`]: least recently used, the seed's policy.
//! - [`PolicyKind::S3Fifo`]: S3-FIFO (Yang et al., SOSP 2023): a small FIFO of 10% of the bytes
//!   filters one-hit wonders, a main FIFO with reinsertion holds the rest, a ghost FIFO of key
//!   hashes sends returning keys straight to main.
//! - [`PolicyKind::Sieve`]: SIEVE (Zhang et al., NSDI 2024): one FIFO, a visited bit, and a hand
//!   that sweeps from old to new evicting the first unvisited entry.

mod list;
mod lru;
mod s3fifo;
mod sieve;

pub(crate) use list::SlotList;
pub use lru::Lru;
pub use s3fifo::S3Fifo;
pub use sieve::Sieve;

/// The policies a tier can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    /// Least recently used.
    Lru,
    /// S3-FIFO.
    S3Fifo,
    /// SIEVE.
    Sieve,
}

impl PolicyKind {
    /// Every policy, for benchmarks and tests.
    pub const ALL: [PolicyKind; 3] = [Self::Lru, Self::S3Fifo, Self::Sieve];

    /// `lru`, `s3fifo` or `sieve`, as the configuration names them.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lru => "lru",
            Self::S3Fifo => "s3fifo",
            Self::Sieve => "sieve",
        }
    }
}

/// One policy instance over the slots of a tier of `capacity_bytes`.
#[derive(Debug)]
pub enum Policy {
    /// See [`Lru`].
    Lru(Lru),
    /// See [`S3Fifo`].
    S3Fifo(S3Fifo),
    /// See [`Sieve`].
    Sieve(Sieve),
}

impl Policy {
    /// A policy of `kind` for a tier of `capacity_bytes`.
    pub fn new(kind: PolicyKind, capacity_bytes: u64) -> Self {
        match kind {
            PolicyKind::Lru => Self::Lru(Lru::default()),
            PolicyKind::S3Fifo => Self::S3Fifo(S3Fifo::new(capacity_bytes)),
            PolicyKind::Sieve => Self::Sieve(Sieve::default()),
        }
    }

    /// Which policy this is.
    pub fn kind(&self) -> PolicyKind {
        match self {
            Self::Lru(_) => PolicyKind::Lru,
            Self::S3Fifo(_) => PolicyKind::S3Fifo,
            Self::Sieve(_) => PolicyKind::Sieve,
        }
    }

    /// A new entry of `size_bytes` in `slot`; `key_hash` identifies its key across slots.
    pub fn insert(&mut self, slot: u32, key_hash: u64, size_bytes: u64) {
        match self {
            Self::Lru(policy) => policy.insert(slot, key_hash),
            Self::S3Fifo(policy) => policy.insert(slot, key_hash, size_bytes),
            Self::Sieve(policy) => policy.insert(slot, key_hash),
        }
    }

    /// A hit on `slot` as a tier serves it: [`Policy::access_shared`], then [`Policy::access`]
    /// when that asks for it.
    pub fn hit(&mut self, slot: u32) {
        if !self.access_shared(slot) {
            self.access(slot);
        }
    }

    /// A hit on `slot` under the exclusive lock (LRU moves it to the head whatever its age).
    pub fn access(&mut self, slot: u32) {
        match self {
            Self::Lru(policy) => policy.access(slot),
            Self::S3Fifo(policy) => policy.access(slot),
            Self::Sieve(policy) => policy.access(slot),
        }
    }

    /// A hit on `slot` under a shared lock: S3-FIFO and SIEVE only bump atomic state; LRU
    /// returns false when the slot must move (take the exclusive lock and call
    /// [`Policy::access`]).
    pub fn access_shared(&self, slot: u32) -> bool {
        match self {
            Self::Lru(policy) => policy.access_shared(slot),
            Self::S3Fifo(policy) => {
                policy.access(slot);
                true
            }
            Self::Sieve(policy) => {
                policy.access(slot);
                true
            }
        }
    }

    /// `slot` left the tier for another reason than eviction (removed, replaced, promoted).
    pub fn remove(&mut self, slot: u32) {
        match self {
            Self::Lru(policy) => policy.remove(slot),
            Self::S3Fifo(policy) => policy.remove(slot),
            Self::Sieve(policy) => policy.remove(slot),
        }
    }

    /// Chooses a victim, removes it from the policy and returns it; `None` when every entry is
    /// kept. `keep(slot)` true means the entry must stay.
    pub fn evict(&mut self, keep: &mut dyn FnMut(u32) -> bool) -> Option<u32> {
        match self {
            Self::Lru(policy) => policy.evict(keep),
            Self::S3Fifo(policy) => policy.evict(keep),
            Self::Sieve(policy) => policy.evict(keep),
        }
    }

    /// The key hash given when `slot` was last inserted; still there after the slot is evicted
    /// or removed (the tier removes a victim from its key map with it, without reading the entry
    /// first).
    pub fn key_hash(&self, slot: u32) -> u64 {
        match self {
            Self::Lru(policy) => policy.key_hash(slot),
            Self::S3Fifo(policy) => policy.key_hash(slot),
            Self::Sieve(policy) => policy.key_hash(slot),
        }
    }

    /// Bytes the policy's own structures take.
    pub fn index_bytes(&self) -> usize {
        match self {
            Self::Lru(policy) => policy.index_bytes(),
            Self::S3Fifo(policy) => policy.index_bytes(),
            Self::Sieve(policy) => policy.index_bytes(),
        }
    }

    /// Entries the policy orders.
    pub fn len(&self) -> usize {
        match self {
            Self::Lru(policy) => policy.len(),
            Self::S3Fifo(policy) => policy.len(),
            Self::Sieve(policy) => policy.len(),
        }
    }

    /// True when the policy orders no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests;
