//! A memory tier: values held in RAM (L2, or the host side of L1's accounting), sharded by key
//! hash. Each shard is a hash table of slots, a slab of entries and an eviction policy under one
//! read-write lock (`parking_lot`'s, as `quick_cache` uses: its uncontended paths are cheaper
//! than the standard library's, and a thread that meets the other kind of holder spins briefly
//! before it parks; `vbus-bench cache` measured LRU about 8% faster on one thread and two). A
//! hit takes the shared lock (S3-FIFO and SIEVE only bump atomic state; an LRU hit that must
//! reorder records the move, applied by the next holder of the exclusive lock); inserts,
//! removals and evictions take it exclusively.
//! Hits and misses are counted per thread (each thread writes only its own counters, so a get
//! makes no atomic read-modify-write and shares no counter line with other cores), the rest is
//! changed under the shard's lock, so every counter is exact under contention. A key is hashed
//! once per operation.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::policy::{Entries, NO_MARK, Policy, PolicyKind};

/// Slots a shard may hand out (2^31, far beyond any shard's entries): slot numbers stay clear of
/// the top values of a `u32`, which the policies' lists and `can_make_room` use as markers.
const MAX_SLOTS: usize = 1 << 31;

/// The shard count the cache manager gives its L2 tier: four per core (as `quick_cache` does),
/// so that threads rarely meet on a lock while the shards' headers stay in L1 (a get reads its
/// shard's lock and table header before any entry).
pub fn default_shards() -> usize {
    4 * std::thread::available_parallelism().map_or(2, usize::from)
}

/// One thread's hit and miss counts for a tier, on a cache line of its own. Only the owning
/// thread writes them (a load and a store, no read-modify-write: exact, as no other thread
/// writes); any thread reads them.
#[derive(Debug, Default)]
#[repr(align(64))]
struct GetCounts {
    hits: AtomicU64,
    misses: AtomicU64,
}

impl GetCounts {
    #[inline]
    fn bump(counter: &AtomicU64) {
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

/// Counters and gauges of a tier (summed over shards).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TierStats {
    /// `get`s that found their key.
    pub hits: u64,
    /// `get`s that did not.
    pub misses: u64,
    /// Entries held.
    pub n_entries: u64,
    /// Bytes held (as the inserts weighed them).
    pub used_bytes: u64,
    /// The most bytes the tier holds.
    pub capacity_bytes: u64,
    /// Entries evicted to make room.
    pub n_evictions: u64,
    /// Their bytes.
    pub evicted_bytes: u64,
    /// Pinned entries.
    pub n_pinned: u64,
}

impl TierStats {
    /// Hits over gets, in percent (as `l1_hit_rate` and the others are reported).
    pub fn hit_rate_percent(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            100.0 * self.hits as f64 / total as f64
        }
    }
}

/// What an insert did.
#[derive(Debug)]
pub enum Inserted<K, V> {
    /// The value is in the tier; these entries were evicted to make room (the caller demotes
    /// them or lets them go).
    Stored {
        /// `(key, value, size_bytes)` of each victim.
        evicted: Vec<(K, V, u64)>,
    },
    /// The value does not fit: it is larger than a shard, or everything else is pinned. The
    /// tier is unchanged, and the value is handed back.
    Refused(V),
}

/// Aligned to 32 bytes so that a small entry (a `u64` key and value: 32 bytes) never straddles two
/// cache lines: a get reads one line of the slab. The key's hash is not kept (it is recomputed on
/// the rare paths that need it: eviction and table growth), which keeps such an entry that small.
#[derive(Debug)]
#[repr(align(32))]
struct Entry<K, V> {
    key: K,
    value: V,
    size_bytes: u64,
    pinned: bool,
    /// The policy's hit state ([`Entries::mark`]), in the padding: a hit touches this line
    /// only.
    mark: AtomicU32,
}

impl<K, V> Entries for [Option<Entry<K, V>>] {
    fn mark(&self, slot: u32) -> &AtomicU32 {
        match self.get(slot as usize) {
            Some(Some(entry)) => &entry.mark,
            _ => &NO_MARK,
        }
    }

    fn size_bytes(&self, slot: u32) -> u64 {
        self.get(slot as usize)
            .and_then(Option::as_ref)
            .map_or(0, |entry| entry.size_bytes)
    }
}

/// LRU moves a shard records under its shared lock before a hit must take the exclusive one.
const PENDING_MOVES: usize = 32;

/// One shard: the lock-protected state, on cache lines of its own, and the LRU moves hits asked
/// for under the shared lock. The next holder of the exclusive lock applies those first, in the
/// order they were recorded, before it changes anything ([`Shard::write`]): every eviction sees
/// exact recency, and an LRU hit that must move its entry takes no exclusive lock (unless the
/// record is full).
#[derive(Debug)]
#[repr(C, align(64))]
struct Shard<K, V> {
    state: RwLock<ShardState<K, V>>,
    /// Moves recorded (may run past [`PENDING_MOVES`]: those hits found no room and move
    /// themselves under the exclusive lock).
    n_pending: AtomicU32,
    /// The slots of the recorded moves; written and read only under the lock (shared to record,
    /// exclusive to apply), so relaxed accesses suffice.
    pending: [AtomicU32; PENDING_MOVES],
}

/// The fields a get reads come first (`repr(C)` keeps the order), so that with the lock word
/// they take the shard's first two cache lines: a get reads no other line of the shard header.
#[derive(Debug)]
#[repr(C)]
struct ShardState<K, V> {
    /// Slots of the entry slab, found by the key's hash and compared by key.
    slots_by_key: hashbrown::HashTable<u32>,
    entries: Vec<Option<Entry<K, V>>>,
    policy: Policy,
    free_slots: Vec<u32>,
    /// The tier's hasher (the same in every shard).
    hasher: foldhash::fast::FixedState,
    capacity_bytes: u64,
    used_bytes: u64,
    pinned_bytes: u64,
    stats: TierStats,
}

/// A sharded, byte-bounded map with an eviction policy.
#[derive(Debug)]
pub struct MemoryTier<K, V> {
    shards: Box<[Shard<K, V>]>,
    hasher: foldhash::fast::FixedState,
    capacity_bytes: u64,
    /// Hits and misses of `get`, per thread.
    get_counts: thread_local::ThreadLocal<GetCounts>,
}

impl<K: Hash + Eq + Clone, V: Clone> MemoryTier<K, V> {
    /// A tier of `capacity_bytes` split into `n_shards` (rounded up to a power of two, at least
    /// 1); each shard holds an equal share and runs its own `kind` policy.
    pub fn new(kind: PolicyKind, capacity_bytes: u64, n_shards: usize) -> Self {
        let n_shards = n_shards.max(1).next_power_of_two();
        let shard_capacity = capacity_bytes / n_shards as u64;
        let hasher = foldhash::fast::FixedState::with_seed(0x5eed_cafe);
        let shards = (0..n_shards)
            .map(|_| Shard {
                n_pending: AtomicU32::new(0),
                pending: std::array::from_fn(|_| AtomicU32::new(0)),
                state: RwLock::new(ShardState {
                    slots_by_key: hashbrown::HashTable::new(),
                    entries: Vec::new(),
                    free_slots: Vec::new(),
                    policy: Policy::new(kind, shard_capacity),
                    hasher: hasher.clone(),
                    capacity_bytes: shard_capacity,
                    used_bytes: 0,
                    pinned_bytes: 0,
                    stats: TierStats {
                        capacity_bytes: shard_capacity,
                        ..TierStats::default()
                    },
                }),
            })
            .collect();
        Self {
            shards,
            hasher,
            capacity_bytes: shard_capacity * n_shards as u64,
            get_counts: thread_local::ThreadLocal::new(),
        }
    }

    /// This thread's get counters.
    #[inline]
    fn get_counts(&self) -> &GetCounts {
        match self.get_counts.get() {
            Some(counts) => counts,
            None => self.new_get_counts(),
        }
    }

    /// A thread's first get: its counters are created. Out of line, so that a get's frame holds
    /// no 64-byte-aligned `GetCounts` (its alignment cost every get a stack realignment).
    #[cold]
    #[inline(never)]
    fn new_get_counts(&self) -> &GetCounts {
        self.get_counts.get_or(GetCounts::default)
    }

    #[inline]
    fn shard(&self, key: &K) -> (&Shard<K, V>, u64) {
        let hash = self.hasher.hash_one(key);
        let shard_idx = (hash >> 40) as usize & (self.shards.len() - 1);
        (&self.shards[shard_idx], hash)
    }

    /// Makes room for about `n_entries` entries across the shards, so filling the tier to that
    /// many reallocates nothing (as `quick_cache` sizes its tables from the item count it is
    /// given). A hint: the tier still grows past it.
    pub fn reserve(&self, n_entries: usize) {
        let n_shards = self.shards.len();
        // A little over the even share: keys do not spread exactly evenly.
        let per_shard = n_entries.div_ceil(n_shards) + n_entries.div_ceil(n_shards) / 8;
        for shard in self.shards.iter() {
            let mut state = shard.write();
            let state = &mut *state;
            state.entries.reserve(per_shard);
            state.policy.reserve(per_shard);
            let (entries, hasher) = (&state.entries, &state.hasher);
            state
                .slots_by_key
                .reserve(per_shard, |&slot| slot_hash(entries, hasher, slot));
        }
    }

    /// The value of `key`, counted as a hit or a miss and told to the policy.
    #[inline]
    pub fn get(&self, key: &K) -> Option<V> {
        let (shard, hash) = self.shard(key);
        let slot = {
            let state = shard.read();
            let Some((slot, entry)) = state.find_entry(hash, key) else {
                GetCounts::bump(&self.get_counts().misses);
                return None;
            };
            if state.policy.access_shared(&entry.mark) || shard.record_move(slot) {
                GetCounts::bump(&self.get_counts().hits);
                return Some(entry.value.clone());
            }
            slot
        };
        self.get_moving(shard, hash, key, slot)
    }

    /// The rest of a get whose LRU move found the shard's record full: the exclusive lock, and
    /// the key looked up again (it may have left). Out of line, so the common get keeps a small
    /// frame.
    #[cold]
    #[inline(never)]
    fn get_moving(&self, shard: &Shard<K, V>, hash: u64, key: &K, found: u32) -> Option<V> {
        let mut state = shard.write();
        // The slot still holding the key is enough: a slot holds one entry, found by its key.
        let slot = if state.holds(found, key) {
            found
        } else {
            let Some(slot) = state.find(hash, key) else {
                GetCounts::bump(&self.get_counts().misses);
                return None;
            };
            slot
        };
        let state = &mut *state;
        state.policy.access(slot, &state.entries[..]);
        GetCounts::bump(&self.get_counts().hits);
        state.entries[slot as usize]
            .as_ref()
            .map(|entry| entry.value.clone())
    }

    /// The value of `key` without counting or touching the policy.
    pub fn peek(&self, key: &K) -> Option<V> {
        let (shard, hash) = self.shard(key);
        let state = shard.read();
        let slot = state.find(hash, key)?;
        state.entries[slot as usize]
            .as_ref()
            .map(|entry| entry.value.clone())
    }

    /// True when `key` is held.
    pub fn contains(&self, key: &K) -> bool {
        let (shard, hash) = self.shard(key);
        shard.read().find(hash, key).is_some()
    }

    /// Stores `value` under `key`, replacing any earlier value (a replaced value is not an
    /// eviction), evicting unpinned entries until it fits.
    pub fn insert(&self, key: K, value: V, size_bytes: u64) -> Inserted<K, V> {
        self.insert_unless(key, value, size_bytes, false, |_| false)
    }

    /// Like [`MemoryTier::insert`], but victims go to `on_evict` (under the shard's lock: keep it
    /// short) instead of a returned list; returns whether the value was stored.
    #[inline]
    pub fn insert_with(
        &self,
        key: K,
        value: V,
        size_bytes: u64,
        on_evict: impl FnMut(K, V, u64),
    ) -> bool {
        self.insert_core(key, value, size_bytes, false, |_| false, on_evict)
            .is_ok()
    }

    /// Like [`MemoryTier::insert`], but the entry is pinned from the start when `pinned` (or when
    /// the entry it replaces was), and when the key is held and `keep(existing)` says so, the tier
    /// is left unchanged and the new value refused (a load never replaces a newer put).
    pub fn insert_unless(
        &self,
        key: K,
        value: V,
        size_bytes: u64,
        pinned: bool,
        keep: impl FnOnce(&V) -> bool,
    ) -> Inserted<K, V> {
        let mut evicted = Vec::new();
        match self.insert_core(key, value, size_bytes, pinned, keep, |key, value, size| {
            evicted.push((key, value, size));
        }) {
            Ok(()) => Inserted::Stored { evicted },
            Err(value) => Inserted::Refused(value),
        }
    }

    /// The insert: victims go to `on_evict`; `Err` hands back a refused value.
    #[inline]
    fn insert_core(
        &self,
        key: K,
        value: V,
        size_bytes: u64,
        pinned: bool,
        keep: impl FnOnce(&V) -> bool,
        mut on_evict: impl FnMut(K, V, u64),
    ) -> Result<(), V> {
        let (shard, hash) = self.shard(&key);
        let mut guard = shard.write();
        let shard = &mut *guard;
        let existing = shard.find(hash, &key);
        if let Some(slot) = existing
            && shard.entries[slot as usize]
                .as_ref()
                .is_some_and(|entry| keep(&entry.value))
        {
            return Err(value);
        }
        if size_bytes > shard.capacity_bytes {
            return Err(value);
        }
        let mut pinned = pinned;
        if let Some(slot) = existing {
            let old = shard.entries[slot as usize]
                .as_ref()
                .expect("mapped slots hold entries");
            pinned |= old.pinned;
            // Replacing in place must still fit once the old bytes are gone.
            let others = shard.used_bytes - old.size_bytes;
            if !shard.can_make_room(others, size_bytes, slot) {
                return Err(value);
            }
            shard.remove_slot(slot, hash);
        } else if !shard.can_make_room(shard.used_bytes, size_bytes, u32::MAX) {
            return Err(value);
        }
        while shard.used_bytes + size_bytes > shard.capacity_bytes {
            let entries = &shard.entries;
            // Without pins the policy's choice stands: no entry is looked at.
            let any_pinned = shard.pinned_bytes > 0;
            let victim = shard
                .policy
                .evict(
                    &mut |slot| {
                        any_pinned
                            && entries[slot as usize]
                                .as_ref()
                                .is_some_and(|entry| entry.pinned)
                    },
                    &entries[..],
                )
                .expect("can_make_room found enough unpinned bytes");
            let entry = shard.take_slot(victim.slot, victim.key_hash);
            shard.stats.n_evictions += 1;
            shard.stats.evicted_bytes += entry.size_bytes;
            on_evict(entry.key, entry.value, entry.size_bytes);
        }
        let slot = match shard.free_slots.pop() {
            Some(slot) => slot,
            None if shard.entries.len() >= MAX_SLOTS => return Err(value),
            None => {
                shard.entries.push(None);
                (shard.entries.len() - 1) as u32
            }
        };
        shard.entries[slot as usize] = Some(Entry {
            key,
            value,
            size_bytes,
            pinned,
            mark: AtomicU32::new(0),
        });
        let (entries, hasher) = (&shard.entries, &shard.hasher);
        shard
            .slots_by_key
            .insert_unique(hash, slot, |&other| slot_hash(entries, hasher, other));
        shard.used_bytes += size_bytes;
        shard.stats.n_entries += 1;
        shard.stats.used_bytes = shard.used_bytes;
        if pinned {
            shard.stats.n_pinned += 1;
            shard.pinned_bytes += size_bytes;
        }
        shard
            .policy
            .insert(slot, hash, size_bytes, &shard.entries[..]);
        Ok(())
    }

    /// Removes `key`; returns its value.
    pub fn remove(&self, key: &K) -> Option<V> {
        let (shard, hash) = self.shard(key);
        let mut state = shard.write();
        let slot = state.find(hash, key)?;
        Some(state.remove_slot(slot, hash).value)
    }

    /// Pins or unpins `key` (a pinned entry is never evicted); false when it is not held.
    pub fn set_pinned(&self, key: &K, pinned: bool) -> bool {
        let (shard, hash) = self.shard(key);
        let mut state = shard.write();
        let Some(slot) = state.find(hash, key) else {
            return false;
        };
        let shard = &mut *state;
        let Some(entry) = &mut shard.entries[slot as usize] else {
            unreachable!("find returns slots holding entries");
        };
        let was = std::mem::replace(&mut entry.pinned, pinned);
        match (was, pinned) {
            (false, true) => {
                shard.stats.n_pinned += 1;
                shard.pinned_bytes += entry.size_bytes;
            }
            (true, false) => {
                shard.stats.n_pinned -= 1;
                shard.pinned_bytes -= entry.size_bytes;
            }
            _ => {}
        }
        true
    }

    /// The counters of every shard, summed.
    pub fn stats(&self) -> TierStats {
        let mut total = TierStats::default();
        for counts in self.get_counts.iter() {
            total.hits += counts.hits.load(Ordering::Relaxed);
            total.misses += counts.misses.load(Ordering::Relaxed);
        }
        for shard in self.shards.iter() {
            let state = shard.read();
            let stats = state.stats;
            total.n_entries += stats.n_entries;
            total.used_bytes += stats.used_bytes;
            total.capacity_bytes += stats.capacity_bytes;
            total.n_evictions += stats.n_evictions;
            total.evicted_bytes += stats.evicted_bytes;
            total.n_pinned += stats.n_pinned;
        }
        total
    }

    /// Bytes the tier's own structures take (key map, entry slab with keys, free list, policy),
    /// from their allocated capacities, values included; subtract `size_of::<V>()` per entry for
    /// the index overhead. Keys that own heap memory add it on top.
    pub fn index_bytes(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                let shard = shard.read();
                shard.slots_by_key.capacity() * (std::mem::size_of::<u32>() + 1)
                    + shard.entries.capacity() * std::mem::size_of::<Option<Entry<K, V>>>()
                    + shard.free_slots.capacity() * std::mem::size_of::<u32>()
                    + shard.policy.index_bytes()
            })
            .sum()
    }

    /// The tier's capacity: the shards' shares summed.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }
}

impl<K, V> Shard<K, V> {
    // A panic under the lock leaves the shard consistent (each change completes before anything
    // that can panic), and the lock, which has no poisoning, is released as the guard drops.
    fn read(&self) -> RwLockReadGuard<'_, ShardState<K, V>> {
        self.state.read()
    }

    /// The exclusive lock, with the recorded LRU moves applied.
    #[inline]
    fn write(&self) -> RwLockWriteGuard<'_, ShardState<K, V>> {
        let mut state = self.state.write();
        let n_pending = self.n_pending.load(Ordering::Relaxed) as usize;
        if n_pending > 0 {
            self.apply_moves(&mut state, n_pending);
        }
        state
    }

    /// Applies the first `n_pending` recorded moves (out of line: only LRU records any).
    #[inline(never)]
    fn apply_moves(&self, state: &mut ShardState<K, V>, n_pending: usize) {
        for slot in &self.pending[..n_pending.min(PENDING_MOVES)] {
            // No slot changed hands since it was recorded: that takes this lock.
            state
                .policy
                .access(slot.load(Ordering::Relaxed), &state.entries[..]);
        }
        self.n_pending.store(0, Ordering::Relaxed);
    }

    /// Records the move of an LRU hit on `slot`, under the shared lock; false when the record is
    /// full (move it under the exclusive lock).
    #[inline]
    fn record_move(&self, slot: u32) -> bool {
        let idx = self.n_pending.fetch_add(1, Ordering::Relaxed) as usize;
        match self.pending.get(idx) {
            Some(cell) => {
                cell.store(slot, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

impl<K: Hash + Eq, V> ShardState<K, V> {
    /// The slot holding `key`, and its entry.
    #[inline]
    fn find_entry(&self, hash: u64, key: &K) -> Option<(u32, &Entry<K, V>)> {
        let mut found = None;
        let &slot = self.slots_by_key.find(hash, |&other| {
            found = self.entry_holding(other, key);
            found.is_some()
        })?;
        Some((slot, found?))
    }

    /// The slot holding `key`.
    #[inline]
    fn find(&self, hash: u64, key: &K) -> Option<u32> {
        self.find_entry(hash, key).map(|(slot, _)| slot)
    }

    /// The entry in `slot`, when it holds `key`.
    #[inline]
    fn entry_holding(&self, slot: u32, key: &K) -> Option<&Entry<K, V>> {
        self.entries
            .get(slot as usize)
            .and_then(Option::as_ref)
            .filter(|entry| entry.key == *key)
    }

    /// Whether `slot` holds `key`.
    #[inline]
    fn holds(&self, slot: u32, key: &K) -> bool {
        self.entry_holding(slot, key).is_some()
    }

    /// Whether evicting unpinned entries (other than `except`) can free room for `size_bytes`
    /// when `used_bytes` are in use.
    #[inline]
    fn can_make_room(&self, used_bytes: u64, size_bytes: u64, except: u32) -> bool {
        if used_bytes + size_bytes <= self.capacity_bytes {
            return true;
        }
        let except_pinned_bytes = self
            .entries
            .get(except as usize)
            .and_then(Option::as_ref)
            .filter(|entry| entry.pinned)
            .map_or(0, |entry| entry.size_bytes);
        self.pinned_bytes - except_pinned_bytes + size_bytes <= self.capacity_bytes
    }

    /// Removes a slot's entry, whose key hashes to `hash`, from map, policy and accounting.
    fn remove_slot(&mut self, slot: u32, hash: u64) -> Entry<K, V> {
        self.policy.remove(slot, &self.entries[..]);
        self.take_slot(slot, hash)
    }

    /// Removes a slot's entry, whose key hashes to `hash`, from map and accounting (the policy
    /// already let it go), and frees the slot. The entry is taken before the map is searched (by
    /// slot number, not key), so the loads of its line and of the map's overlap instead of
    /// waiting on each other.
    #[inline]
    fn take_slot(&mut self, slot: u32, hash: u64) -> Entry<K, V> {
        let entry = self.entries[slot as usize]
            .take()
            .expect("the slot holds an entry");
        self.used_bytes -= entry.size_bytes;
        self.stats.used_bytes = self.used_bytes;
        self.stats.n_entries -= 1;
        if entry.pinned {
            self.stats.n_pinned -= 1;
            self.pinned_bytes -= entry.size_bytes;
        }
        let found = self.slots_by_key.find_entry(hash, |&other| other == slot);
        debug_assert!(
            found.is_ok(),
            "slot {slot} is in the key map under its hash"
        );
        if let Ok(found) = found {
            found.remove();
        }
        self.free_slots.push(slot);
        entry
    }
}

/// The hash a key-map slot was stored under: its entry's key's.
fn slot_hash<K: Hash, V>(
    entries: &[Option<Entry<K, V>>],
    hasher: &foldhash::fast::FixedState,
    slot: u32,
) -> u64 {
    entries[slot as usize]
        .as_ref()
        .map_or(0, |entry| hasher.hash_one(&entry.key))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Random inserts, gets, removes and pins against a map: every get returns the latest value
    /// or nothing, no shard exceeds its share, pinned entries never leave, and every value that
    /// left was either removed, replaced or reported as evicted.
    #[test]
    fn agrees_with_a_map_and_keeps_its_bounds() {
        for kind in PolicyKind::ALL {
            let mut rng = fastrand::Rng::with_seed(11);
            let tier: MemoryTier<u32, u64> = MemoryTier::new(kind, 8 * 4000, 8);
            let mut model: HashMap<u32, (u64, u64, bool)> = HashMap::new();
            for op_idx in 0..50_000u64 {
                let key = rng.u32(..3000);
                match rng.u32(..10) {
                    0..=3 => {
                        let size = rng.u64(1..200);
                        match tier.insert(key, op_idx, size) {
                            Inserted::Stored { evicted } => {
                                let pinned = model.get(&key).is_some_and(|m| m.2);
                                for (victim, value, victim_size) in evicted {
                                    let modelled =
                                        model.remove(&victim).expect("victims were held");
                                    assert_eq!((value, victim_size), (modelled.0, modelled.1));
                                    assert!(
                                        !modelled.2,
                                        "{}: a pinned entry was evicted",
                                        kind.as_str()
                                    );
                                }
                                model.insert(key, (op_idx, size, pinned));
                            }
                            Inserted::Refused(value) => assert_eq!(value, op_idx),
                        }
                    }
                    4..=7 => assert_eq!(
                        tier.get(&key),
                        model.get(&key).map(|m| m.0),
                        "{} op {op_idx}",
                        kind.as_str()
                    ),
                    8 => assert_eq!(tier.remove(&key), model.remove(&key).map(|m| m.0)),
                    _ => {
                        let pinned = rng.u32(..4) == 0;
                        assert_eq!(tier.set_pinned(&key, pinned), model.contains_key(&key));
                        if let Some(modelled) = model.get_mut(&key) {
                            modelled.2 = pinned;
                        }
                    }
                }
                let stats = tier.stats();
                assert_eq!(stats.n_entries, model.len() as u64);
                assert_eq!(stats.used_bytes, model.values().map(|m| m.1).sum::<u64>());
                assert!(stats.used_bytes <= stats.capacity_bytes);
                assert_eq!(
                    stats.n_pinned,
                    model.values().filter(|m| m.2).count() as u64
                );
            }
        }
    }

    /// With one shard, the tier's hits are the policy's over a plain map (the replay tier).
    /// A small entry takes one half cache line.
    #[test]
    fn hits_match_the_replay_tier() {
        assert_eq!(std::mem::size_of::<Option<Entry<u64, u64>>>(), 32);
        let mut zipf = crate::replay::Zipf::new(20_000, 1.0, 3);
        let stream: Vec<u64> = (0..200_000).map(|_| zipf.next_key()).collect();
        // (LRU is left out: the replay tier moves on every hit, the memory tier not within the
        // newest quarter.)
        for kind in [PolicyKind::S3Fifo, PolicyKind::Sieve] {
            let tier: MemoryTier<u64, u64> = MemoryTier::new(kind, 2_000, 1);
            let mut replayed = crate::replay::Tier::new(kind, 2_000);
            let hasher = foldhash::fast::FixedState::with_seed(0x5eed_cafe);
            for &key in &stream {
                if tier.get(&key).is_none() {
                    assert!(tier.insert_with(key, key, 1, |_, _, _| {}));
                }
                // The replay tier takes keys as their own hashes: give it the tier's hashes.
                replayed.access(hasher.hash_one(key), 1);
            }
            let (ours, theirs) = (tier.stats(), replayed.stats());
            assert_eq!(ours.hits, theirs.hits, "{}", kind.as_str());
            assert_eq!(ours.misses, theirs.misses, "{}", kind.as_str());
            assert!(ours.hits > stream.len() as u64 / 2, "{}", kind.as_str());
        }
    }

    /// LRU moves recorded under the shared lock are applied, in order, before the next change:
    /// evictions follow exact recency, also when more hits ask to move than the record holds.
    #[test]
    fn recorded_lru_moves_keep_exact_recency() {
        let n_keys = 1_000u64;
        let tier: MemoryTier<u64, u64> = MemoryTier::new(PolicyKind::Lru, n_keys, 1);
        for key in 0..n_keys {
            assert!(tier.insert_with(key, key, 1, |_, _, _| {}));
        }
        // The oldest 100 keys, hit newest-first: outside the newest quarter, so each must move;
        // the first PENDING_MOVES are recorded, the rest move under the exclusive lock.
        let hit_order: Vec<u64> = (0..100).rev().collect();
        for key in &hit_order {
            assert_eq!(tier.get(key), Some(*key));
        }
        let mut victims = Vec::new();
        for key in n_keys..2 * n_keys {
            assert!(tier.insert_with(key, key, 1, |victim, _, _| victims.push(victim)));
        }
        // Never-hit keys leave first, oldest first; then the hit keys in the order of their hits.
        let expected: Vec<u64> = (100..n_keys).chain(hit_order).collect();
        assert_eq!(victims, expected);
        assert_eq!(tier.stats().hits, 100);
    }

    /// `reserve` is only a size hint: a reserved tier makes the same choices as one that grew,
    /// and grows past the hint.
    #[test]
    fn reserving_changes_no_choice() {
        let mut zipf = crate::replay::Zipf::new(50_000, 1.0, 9);
        let stream: Vec<u64> = (0..100_000).map(|_| zipf.next_key()).collect();
        for kind in PolicyKind::ALL {
            let grown: MemoryTier<u64, u64> = MemoryTier::new(kind, 5_000, 4);
            let reserved: MemoryTier<u64, u64> = MemoryTier::new(kind, 5_000, 4);
            reserved.reserve(1_000);
            for &key in &stream {
                for tier in [&grown, &reserved] {
                    if tier.get(&key).is_none() {
                        assert!(tier.insert_with(key, key, 1, |_, _, _| {}));
                    }
                }
            }
            let (grown, reserved) = (grown.stats(), reserved.stats());
            assert_eq!(
                (grown.hits, grown.misses, grown.n_evictions, grown.n_entries),
                (
                    reserved.hits,
                    reserved.misses,
                    reserved.n_evictions,
                    reserved.n_entries
                ),
                "{}",
                kind.as_str()
            );
            assert_eq!(
                reserved.n_entries,
                5_000,
                "{}: full, past the hint",
                kind.as_str()
            );
        }
    }

    /// Gets are counted per thread: the counts of threads that ended stay (their counters pass
    /// to later threads), and none is lost while threads run together.
    #[test]
    fn counters_are_exact_under_contention() {
        for kind in PolicyKind::ALL {
            counters_are_exact_under_contention_with(kind);
        }
    }

    fn counters_are_exact_under_contention_with(kind: PolicyKind) {
        // 5000 keys of 64 bytes against 160 KiB: full, so LRU moves hits and evicts.
        let tier: MemoryTier<u64, u64> = MemoryTier::new(kind, 160 << 10, 4);
        for round in 1..=3u64 {
            std::thread::scope(|scope| {
                for thread_idx in 0..4u64 {
                    let tier = &tier;
                    scope.spawn(move || {
                        for op_idx in 0..20_000u64 {
                            let key = (op_idx * 7 + thread_idx) % 5000;
                            if tier.get(&key).is_none() {
                                let _ = tier.insert(key, op_idx, 64);
                            }
                        }
                    });
                }
                // Read while the threads count.
                let running = tier.stats();
                assert!(running.hits + running.misses <= round * 80_000);
            });
            let stats = tier.stats();
            assert_eq!(stats.hits + stats.misses, round * 80_000, "round {round}");
        }
        assert_eq!(tier.get(&1), tier.peek(&1));
        let stats = tier.stats();
        assert_eq!(stats.hits + stats.misses, 240_001);
        assert!(stats.n_evictions > 0, "{}: the tier filled", kind.as_str());
        assert!(stats.used_bytes <= stats.capacity_bytes);
        assert_eq!(stats.used_bytes, stats.n_entries * 64);
    }

    #[test]
    fn insert_with_reports_the_same_victims_as_insert() {
        let listed: MemoryTier<u32, u32> = MemoryTier::new(PolicyKind::S3Fifo, 1000, 1);
        let called: MemoryTier<u32, u32> = MemoryTier::new(PolicyKind::S3Fifo, 1000, 1);
        let mut rng = fastrand::Rng::with_seed(9);
        for op in 0..5000u32 {
            let (key, size) = (rng.u32(..300), rng.u64(1..40));
            let from_list = match listed.insert(key, op, size) {
                Inserted::Stored { evicted } => Some(evicted),
                Inserted::Refused(_) => None,
            };
            let mut victims = Vec::new();
            let stored = called.insert_with(key, op, size, |k, v, s| victims.push((k, v, s)));
            assert_eq!(from_list, stored.then_some(victims), "op {op}");
        }
        assert_eq!(listed.stats(), called.stats());
    }

    #[test]
    fn too_large_and_all_pinned_are_refused() {
        let tier: MemoryTier<u32, &str> = MemoryTier::new(PolicyKind::Lru, 100, 1);
        assert!(matches!(
            tier.insert(1, "big", 101),
            Inserted::Refused("big")
        ));
        assert!(matches!(tier.insert(1, "a", 60), Inserted::Stored { .. }));
        assert!(tier.set_pinned(&1, true));
        assert!(matches!(tier.insert(2, "b", 60), Inserted::Refused("b")));
        assert_eq!(tier.get(&1), Some("a"));
        assert!(tier.set_pinned(&1, false));
        match tier.insert(2, "b", 60) {
            Inserted::Stored { evicted } => assert_eq!(evicted, [(1, "a", 60)]),
            Inserted::Refused(_) => panic!("room could be made"),
        }
        let stats = tier.stats();
        assert_eq!(
            (stats.hits, stats.n_evictions, stats.evicted_bytes),
            (1, 1, 60)
        );
        assert!((stats.hit_rate_percent() - 100.0).abs() < 1e-9);
    }
}
