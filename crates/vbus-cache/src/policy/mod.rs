//! Eviction policies: which entry of a tier goes first when it is full.
//!
//! A policy orders the slots of one tier (or shard); the tier owns the entries and their sizes.
//! `evict` removes the chosen slot from the policy and returns it; entries the tier must keep
//! (pinned, or the only copy) are skipped through the `keep` callback, with bounded work.
//!
//! - [`PolicyKind::Lru`]: least recently used, the default.
//! - [`PolicyKind::S3Fifo`]: S3-FIFO (Yang et al., SOSP 2023): a small FIFO of 10% of the bytes
//!   filters one-hit wonders, a main FIFO with reinsertion holds the rest, a ghost FIFO of key
//!   hashes sends returning keys straight to main.
//! - [`PolicyKind::Sieve`]: SIEVE (Zhang et al., NSDI 2024): one FIFO, a visited bit, and a hand
//!   that sweeps from old to new evicting the first unvisited entry.

use std::sync::atomic::AtomicU32;

mod list;
mod lru;
mod s3fifo;
mod sieve;

pub(crate) use list::SlotList;
pub use lru::Lru;
pub use s3fifo::S3Fifo;
pub use sieve::Sieve;

/// The caller's entries, as a policy reads them: per-slot state a policy keeps there rather
/// than in its own structures. S3-FIFO's hit count, SIEVE's visited bit and LRU's stamp are an
/// entry's mark, so a hit reads (and writes) the entry's own cache line and no line of the
/// policy's; S3-FIFO's sizes are the entries' own. Marks are atomic: hits change them under a
/// shared lock.
pub trait Entries {
    /// The mark of `slot`, a slot the policy holds.
    fn mark(&self, slot: u32) -> &AtomicU32;

    /// The size of the entry in `slot`, as it was inserted.
    fn size_bytes(&self, slot: u32) -> u64;
}

/// Marks and sizes by slot, for a caller whose entries do not hold them (the replay tier,
/// tests).
#[derive(Debug, Default)]
pub struct SlotTable {
    marks: Vec<AtomicU32>,
    sizes: Vec<u64>,
}

impl SlotTable {
    /// Records the size of a new entry in `slot`.
    pub fn set_size(&mut self, slot: u32, size_bytes: u64) {
        let idx = slot as usize;
        if self.sizes.len() <= idx {
            self.sizes.resize(idx + 1, 0);
            self.marks.resize_with(idx + 1, || AtomicU32::new(0));
        }
        self.sizes[idx] = size_bytes;
    }
}

/// The mark of a slot that holds no entry (a policy never asks for one; callers' [`Entries`]
/// hand it out rather than panic).
pub(crate) static NO_MARK: AtomicU32 = AtomicU32::new(0);

impl Entries for SlotTable {
    fn mark(&self, slot: u32) -> &AtomicU32 {
        self.marks.get(slot as usize).unwrap_or(&NO_MARK)
    }

    fn size_bytes(&self, slot: u32) -> u64 {
        self.sizes.get(slot as usize).copied().unwrap_or(0)
    }
}

/// An entry [`Policy::evict`] chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Victim {
    /// Its slot.
    pub slot: u32,
    /// The key hash it was inserted under.
    pub key_hash: u64,
}

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
///
/// `repr(u8)` gives the enum a tag byte of its own: without it the tag hides in a niche of a
/// variant's `Vec` capacity, which every hit decoded (twelve instructions to choose the
/// policy, five with the tag byte).
#[derive(Debug)]
#[repr(u8)]
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

    /// A new entry of `size_bytes` in `slot`; `key_hash` identifies its key across slots (S3-FIFO
    /// sends a key whose ghost it remembers to main). Always inlined (as is [`Policy::evict`]):
    /// the memory tier's insert calls each once, and out of line each cost a call frame of about
    /// 20 instructions per insert.
    #[inline(always)]
    pub fn insert<M: Entries + ?Sized>(
        &mut self,
        slot: u32,
        key_hash: u64,
        size_bytes: u64,
        entries: &M,
    ) {
        match self {
            Self::Lru(policy) => policy.insert(slot, key_hash, entries),
            Self::S3Fifo(policy) => policy.insert(slot, key_hash, size_bytes, entries),
            Self::Sieve(policy) => policy.insert(slot, key_hash, entries),
        }
    }

    /// A hit on `slot` as a tier serves it: [`Policy::access_shared`], then [`Policy::access`]
    /// when that asks for it.
    pub fn hit<M: Entries + ?Sized>(&mut self, slot: u32, entries: &M) {
        if !self.access_shared(entries.mark(slot)) {
            self.access(slot, entries);
        }
    }

    /// A hit on `slot` under the exclusive lock (LRU moves it to the head whatever its age).
    #[inline]
    pub fn access<M: Entries + ?Sized>(&mut self, slot: u32, entries: &M) {
        match self {
            Self::Lru(policy) => policy.access(slot, entries),
            Self::S3Fifo(policy) => policy.access(slot, entries),
            Self::Sieve(policy) => policy.access(slot, entries),
        }
    }

    /// A hit under a shared lock on a slot, given its mark ([`Entries::mark`]: the caller holds
    /// the entry already): S3-FIFO and SIEVE only bump atomic state; LRU returns false when the
    /// slot must move (call [`Policy::access`] under the exclusive lock, before any other change
    /// to the policy: the memory tier records the move and applies it when it next takes that
    /// lock).
    #[inline]
    pub fn access_shared(&self, mark: &AtomicU32) -> bool {
        match self {
            Self::Lru(policy) => policy.access_shared(mark),
            Self::S3Fifo(_) => {
                S3Fifo::access_mark(mark);
                true
            }
            Self::Sieve(_) => {
                Sieve::access_mark(mark);
                true
            }
        }
    }

    /// `slot` left the tier for another reason than eviction (removed, replaced, promoted).
    #[inline]
    pub fn remove<M: Entries + ?Sized>(&mut self, slot: u32, entries: &M) {
        match self {
            Self::Lru(policy) => policy.remove(slot),
            Self::S3Fifo(policy) => policy.remove(slot, entries),
            Self::Sieve(policy) => policy.remove(slot),
        }
    }

    /// Chooses a victim, removes it from the policy and returns it with the key hash it was
    /// inserted under (the tier removes it from its key map with that, without hashing its key
    /// again); `None` when every entry is kept. `keep(slot)` true means the entry must stay.
    #[inline(always)]
    pub fn evict<M: Entries + ?Sized>(
        &mut self,
        keep: &mut dyn FnMut(u32) -> bool,
        entries: &M,
    ) -> Option<Victim> {
        match self {
            Self::Lru(policy) => policy.evict(keep, entries),
            Self::S3Fifo(policy) => policy.evict(keep, entries),
            Self::Sieve(policy) => policy.evict(keep, entries),
        }
    }

    /// Room for `n_slots` more slots without growing (a tier that knows how many entries it will
    /// hold pays no reallocation while it fills).
    pub fn reserve(&mut self, n_slots: usize) {
        match self {
            Self::Lru(policy) => policy.reserve(n_slots),
            Self::S3Fifo(policy) => policy.reserve(n_slots),
            Self::Sieve(policy) => policy.reserve(n_slots),
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
