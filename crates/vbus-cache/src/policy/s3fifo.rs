//! S3-FIFO: a small probationary FIFO, a main FIFO with reinsertion, and a ghost FIFO of hashes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{Entries, Victim};

/// Share of the capacity, in bytes, the small queue holds before it gives way (10%).
const SMALL_SHARE: f64 = 0.10;
/// The access counter saturates here.
const FREQ_MAX: u32 = 3;

/// Which queue an entry is in, bits 2 and 3 of its mark.
const QUEUE_SHIFT: u32 = 2;
const QUEUE_MASK: u32 = 0b11 << QUEUE_SHIFT;
const SMALL: u32 = 1 << QUEUE_SHIFT;
const MAIN: u32 = 2 << QUEUE_SHIFT;
/// The hit count, bits 0 and 1 of the mark (up to [`FREQ_MAX`]).
const FREQ_MASK: u32 = 0b11;
/// The insert's stamp, the mark's upper 28 bits.
const STAMP_SHIFT: u32 = 4;

/// A queue position: the slot, the stamp of the insert that queued it (in place, as the mark
/// holds it), and the key hash, so that a victim's hash is read from the ring in order rather
/// than from a per-slot table.
#[derive(Debug, Clone, Copy)]
struct Position {
    slot: u32,
    stamp: u32,
    key_hash: u64,
}

/// Ways of a ghost set: one cache line of `u32`s, the last of which is the set's ring position.
const GHOST_WAYS: usize = 16;
/// Tags a ghost set holds.
const GHOST_TAGS: usize = GHOST_WAYS - 1;
/// The ways that hold tags, as bits.
const TAG_WAYS: u32 = (1 << GHOST_TAGS) - 1;

/// One set of the ghost table: a ring of [`GHOST_TAGS`] tags (0 is an empty way) and, in the
/// last way, where the next tag goes (the oldest, once the ring is full).
#[derive(Debug, Clone, Copy, Default)]
#[repr(align(64))]
struct GhostSet([u32; GHOST_WAYS]);

impl GhostSet {
    /// Writes `tag` over the set's oldest way.
    #[inline]
    fn push(&mut self, tag: u32) {
        let next = (self.0[GHOST_TAGS] as usize).min(GHOST_TAGS - 1);
        self.0[next] = tag;
        self.0[GHOST_TAGS] = if next + 1 < GHOST_TAGS {
            next as u32 + 1
        } else {
            0
        };
    }

    /// The way holding `tag`, if one does.
    #[inline]
    fn find(&self, tag: u32) -> Option<usize> {
        let found = ways_equal(&self.0, tag) & TAG_WAYS;
        (found != 0).then(|| found.trailing_zeros() as usize)
    }
}

/// S3-FIFO's ghost queue: the key hashes its small queue evicted, remembered as 32-bit tags in
/// a set-associative table of cache-line sets, each set a FIFO ring of its own. A key's set is
/// chosen by its tag alone (so the table can grow by re-placing tags); a new ghost overwrites
/// the oldest of its set, and a ghost whose key comes back is cleared where it is, its way
/// counting in the window until the ring comes round (as a consumed ghost does in a FIFO). The
/// table remembers about as many of the newest ghosts as it has tag ways, as a FIFO of that
/// length would; a remember is one store and a lookup reads one line. Nothing has to be
/// forgotten explicitly, and the caller's key map holds no ghosts.
#[derive(Debug, Default)]
struct Ghosts {
    sets: Vec<GhostSet>,
}

/// The ghost tag of a key hash: its low 32 bits times an odd constant (a bijection that spreads
/// hashes that differ only in low bits, such as the replay tier's keys, over the sets, which a
/// tag's high bits choose), 0 (the empty way) taken as 1.
#[inline]
pub(super) fn ghost_tag(key_hash: u64) -> u32 {
    (key_hash as u32).wrapping_mul(0x9e37_79b1).max(1)
}

/// The index of `tag`'s set among `n_sets`: its fraction of the 32-bit range, scaled.
#[inline]
pub(super) fn ghost_set_index(tag: u32, n_sets: usize) -> usize {
    ((u64::from(tag) * n_sets as u64) >> 32) as usize
}

impl Ghosts {
    /// The set of `tag`.
    #[inline]
    fn set_of(&mut self, tag: u32) -> &mut GhostSet {
        let index = ghost_set_index(tag, self.sets.len());
        &mut self.sets[index]
    }

    /// Ghosts the table can hold.
    #[inline]
    fn capacity(&self) -> usize {
        self.sets.len() * GHOST_TAGS
    }

    /// Remembers `key_hash` as the newest ghost of its set (over the set's oldest).
    #[inline]
    fn remember(&mut self, key_hash: u64) {
        let tag = ghost_tag(key_hash);
        self.set_of(tag).push(tag);
    }

    /// Forgets `key_hash`'s ghost; true when it had one (its key came back).
    #[inline]
    fn consume(&mut self, key_hash: u64) -> bool {
        let tag = ghost_tag(key_hash);
        let set = self.set_of(tag);
        let Some(way) = set.find(tag) else {
            return false;
        };
        set.0[way] = 0;
        true
    }

    /// Whether `key_hash` has a ghost.
    #[cfg(test)]
    fn holds(&self, key_hash: u64) -> bool {
        let tag = ghost_tag(key_hash);
        self.sets[ghost_set_index(tag, self.sets.len())]
            .find(tag)
            .is_some()
    }

    /// Grows the table to hold at least `n_ghosts`, a sixteenth more, re-placing the ghosts it
    /// holds oldest first (the oldest of every set, then the next oldest, ...), so each set
    /// keeps their order.
    #[cold]
    #[inline(never)]
    fn grow(&mut self, n_ghosts: usize) {
        let n_sets = (n_ghosts + n_ghosts / 16).div_ceil(GHOST_TAGS).max(1);
        let old = std::mem::replace(&mut self.sets, vec![GhostSet::default(); n_sets]);
        for age in 0..GHOST_TAGS {
            for set in &old {
                let oldest = set.0[GHOST_TAGS] as usize;
                let tag = set.0[(oldest + age) % GHOST_TAGS];
                if tag != 0 {
                    self.set_of(tag).push(tag);
                }
            }
        }
    }
}

/// New keys enter the small queue; keys seen recently in the ghost queue enter main. Eviction
/// takes from small while it holds more than 10% of the bytes: an entry hit twice or more there
/// moves to main, the others leave and their hashes go to the ghost queue. In main, an entry hit
/// since its last pass is reinserted with one hit fewer; the others leave.
///
/// The policy keeps no per-slot table: an entry's state is its mark ([`Entries::mark`]: the hit
/// count, its queue and the stamp of its insert, one word on the entry's own line, which an
/// eviction reads anyway), and its key hash travels with its queue position. The queues are
/// rings of positions, read and written in order (no pointer chasing); a removed entry is left
/// in its ring and skipped when it comes up (its mark no longer matches the position), and a
/// ring holding more stale positions than live ones is compacted.
///
/// Stamps count inserts (28 bits, wrapping): a stale position could pass for its slot's new
/// entry only if that entry was inserted a multiple of 2^28 inserts after it, in the same queue,
/// while the stale position stayed unread; it would then only reorder that entry, never break
/// the counts (a position is taken for the entry it names, which is held, in that queue).
///
/// The ghost queue is a set-associative table of key-hash tags ([`Ghosts`]) that holds about as
/// many ghosts as the queues hold entries: an insert looks for its key's ghost in one line of it,
/// an eviction from small writes one.
#[derive(Debug)]
pub struct S3Fifo {
    small: VecDeque<Position>,
    main: VecDeque<Position>,
    small_len: usize,
    main_len: usize,
    small_target_bytes: u64,
    small_bytes: u64,
    /// The next insert's stamp, already shifted into place.
    next_stamp: u32,
    /// The key hashes small evicted, about as many as the queues hold.
    ghosts: Ghosts,
}

/// Stale positions a ring may hold beyond its live ones before it is compacted.
const STALE_SLACK: usize = 64;

impl S3Fifo {
    pub(crate) fn reserve(&mut self, n_slots: usize) {
        // The small queue holds about a tenth; positions of removed entries linger in both.
        self.small.reserve(n_slots / 4);
        self.main.reserve(n_slots);
        // The ghost table is not reserved: its size follows the entries held (see `insert`), so
        // that a reserved policy makes the same choices as one that grew.
    }

    pub(crate) fn new(capacity_bytes: u64) -> Self {
        Self {
            small: VecDeque::new(),
            main: VecDeque::new(),
            small_len: 0,
            main_len: 0,
            small_target_bytes: ((capacity_bytes as f64) * SMALL_SHARE) as u64,
            small_bytes: 0,
            next_stamp: 0,
            ghosts: Ghosts::default(),
        }
    }

    /// A new entry of `size_bytes` in `slot`, for a key hashing to `key_hash`: to main when its
    /// key left a ghost (it came back), else to small.
    #[inline]
    pub(crate) fn insert<E: Entries + ?Sized>(
        &mut self,
        slot: u32,
        key_hash: u64,
        size_bytes: u64,
        entries: &E,
    ) {
        // The ghost table holds at least as many ghosts as the queues hold entries.
        if self.len() >= self.ghosts.capacity() {
            self.ghosts.grow(self.len() + 1);
        }
        let returning = self.ghosts.consume(key_hash);
        let stamp = self.next_stamp;
        self.next_stamp = stamp.wrapping_add(1 << STAMP_SHIFT);
        let position = Position {
            slot,
            stamp,
            key_hash,
        };
        if returning {
            entries.mark(slot).store(stamp | MAIN, Ordering::Relaxed);
            self.main.push_back(position);
            self.main_len += 1;
        } else {
            entries.mark(slot).store(stamp | SMALL, Ordering::Relaxed);
            self.small.push_back(position);
            self.small_len += 1;
            self.small_bytes += size_bytes;
        }
    }

    /// A hit: the slot's frequency (the low bits of its mark: hits since the last pass, kept in
    /// the caller's entry so that a hit touches no line of the policy's) goes up, to
    /// [`FREQ_MAX`]. Bumped under a shared lock, so atomic; a lost race loses one count (the
    /// other bits change only under the exclusive lock).
    #[inline]
    pub(crate) fn access<E: Entries + ?Sized>(&self, slot: u32, entries: &E) {
        Self::access_mark(entries.mark(slot));
    }

    /// [`S3Fifo::access`] given the slot's mark.
    #[inline]
    pub(crate) fn access_mark(mark: &AtomicU32) {
        let seen = mark.load(Ordering::Relaxed);
        if seen & FREQ_MASK < FREQ_MAX {
            mark.store(seen + 1, Ordering::Relaxed);
        }
    }

    pub(crate) fn remove<E: Entries + ?Sized>(&mut self, slot: u32, entries: &E) {
        let mark = entries.mark(slot);
        let seen = mark.load(Ordering::Relaxed);
        match seen & QUEUE_MASK {
            SMALL => {
                self.small_len -= 1;
                self.small_bytes -= entries.size_bytes(slot);
            }
            MAIN => self.main_len -= 1,
            _ => return,
        }
        mark.store(seen & !QUEUE_MASK, Ordering::Relaxed);
        for (ring, live, queue) in [
            (&mut self.small, self.small_len, SMALL),
            (&mut self.main, self.main_len, MAIN),
        ] {
            if ring.len() > 2 * live + STALE_SLACK {
                ring.retain(|&position| is_live(entries, position, queue));
            }
        }
    }

    /// The oldest live position of a ring, taken out of it, and its slot's mark.
    #[inline]
    fn pop_live<E: Entries + ?Sized>(
        &mut self,
        queue: u32,
        entries: &E,
    ) -> Option<(Position, u32)> {
        let ring = if queue == SMALL {
            &mut self.small
        } else {
            &mut self.main
        };
        while let Some(position) = ring.pop_front() {
            let mark = entries.mark(position.slot).load(Ordering::Relaxed);
            if names(mark, position, queue) {
                return Some((position, mark));
            }
        }
        None
    }

    /// Chooses a victim and returns it with its key hash.
    #[inline]
    pub(crate) fn evict<E: Entries + ?Sized>(
        &mut self,
        keep: &mut dyn FnMut(u32) -> bool,
        entries: &E,
    ) -> Option<Victim> {
        // Each entry moves at most a few times (small → main, and FREQ_MAX reinsertions), and
        // kept entries once per queue per call, so this bound covers every case.
        let bound = 2 * (FREQ_MAX as usize + 2) * (self.len() + 1);
        // Kept entries met in a row in main: a full pass of them means main has nothing to give,
        // and small is tried whatever its share.
        let mut main_kept_run = 0usize;
        let mut force_small = false;
        for _ in 0..bound {
            let from_small = self.small_len > 0
                && (force_small
                    || self.small_bytes > self.small_target_bytes
                    || self.main_len == 0);
            if from_small {
                let (position, mark) = self.pop_live(SMALL, entries)?;
                let slot = position.slot;
                self.small_len -= 1;
                self.small_bytes -= entries.size_bytes(slot);
                if mark & FREQ_MASK > 1 || keep(slot) {
                    // To main, its hits spent.
                    entries
                        .mark(slot)
                        .store(position.stamp | MAIN, Ordering::Relaxed);
                    self.main.push_back(position);
                    self.main_len += 1;
                    continue;
                }
                entries.mark(slot).store(position.stamp, Ordering::Relaxed);
                self.ghosts.remember(position.key_hash);
                return Some(Victim {
                    slot,
                    key_hash: position.key_hash,
                });
            }
            let (position, mark) = self.pop_live(MAIN, entries)?;
            let slot = position.slot;
            if mark & FREQ_MASK > 0 {
                entries.mark(slot).store(mark - 1, Ordering::Relaxed);
                self.main.push_back(position);
                continue;
            }
            if keep(slot) {
                self.main.push_back(position);
                main_kept_run += 1;
                if main_kept_run > self.main_len {
                    if self.small_len == 0 {
                        return None;
                    }
                    force_small = true;
                }
                continue;
            }
            self.main_len -= 1;
            entries.mark(slot).store(position.stamp, Ordering::Relaxed);
            return Some(Victim {
                slot,
                key_hash: position.key_hash,
            });
        }
        None
    }

    /// Whether `key_hash` has a ghost (its key left small and has not come back).
    #[cfg(test)]
    pub(crate) fn has_ghost(&self, key_hash: u64) -> bool {
        self.ghosts.holds(key_hash)
    }

    pub(crate) fn index_bytes(&self) -> usize {
        (self.small.capacity() + self.main.capacity()) * std::mem::size_of::<Position>()
            + self.ghosts.sets.capacity() * std::mem::size_of::<GhostSet>()
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.small_len + self.main_len
    }
}

/// A bit per way of `set` that holds `tag`, way 0 lowest (written without an early exit, so
/// that the compiler compares several ways at once).
#[inline]
fn ways_equal(set: &[u32; GHOST_WAYS], tag: u32) -> u32 {
    let mut bits = 0;
    for (way, &held) in set.iter().enumerate() {
        bits |= u32::from(held == tag).wrapping_neg() & (1 << way);
    }
    bits
}

/// Whether a queued position still stands for its slot's entry in `queue` (`SMALL` or `MAIN`).
#[inline]
fn is_live<E: Entries + ?Sized>(entries: &E, position: Position, queue: u32) -> bool {
    names(
        entries.mark(position.slot).load(Ordering::Relaxed),
        position,
        queue,
    )
}

/// Whether a slot's `mark` is that of the entry `position` queued in `queue`.
#[inline]
fn names(mark: u32, position: Position, queue: u32) -> bool {
    mark & !FREQ_MASK == position.stamp | queue
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher as _;

    use super::*;

    /// The ghost table behaves as a FIFO of about its capacity: the newest ghosts are held, old
    /// ones are gone, a consumed ghost is gone, and growing keeps what was held.
    #[test]
    fn ghosts_remember_about_their_capacity_newest_first() {
        let mut ghosts = Ghosts::default();
        ghosts.grow(4096);
        let capacity = ghosts.capacity();
        assert!((4096..4096 + 4096 / 16 + GHOST_TAGS).contains(&capacity));
        let hashes: Vec<u64> = (0..4 * capacity as u64)
            .map(|key| foldhash::fast::FixedState::with_seed(1).hash_one(key))
            .collect();
        for &hash in &hashes {
            ghosts.remember(hash);
        }
        let held = |ghosts: &Ghosts, range: &[u64]| {
            range.iter().filter(|&&hash| ghosts.holds(hash)).count()
        };
        let n = hashes.len();
        // The newest half of a capacity: all but a few of the fullest sets' held.
        let newest = &hashes[n - capacity / 2..];
        assert!(held(&ghosts, newest) >= newest.len() * 97 / 100);
        // Older than two capacities: gone (sets of 15 tags, filled evenly enough).
        let oldest = &hashes[..n - 2 * capacity];
        assert_eq!(held(&ghosts, oldest), 0);
        // About a capacity held in all.
        let total = held(&ghosts, &hashes);
        assert!(total > capacity * 9 / 10 && total <= capacity, "{total}");

        let last = hashes[n - 1];
        assert!(ghosts.consume(last));
        assert!(!ghosts.holds(last) && !ghosts.consume(last));

        let before: Vec<bool> = hashes.iter().map(|&hash| ghosts.holds(hash)).collect();
        ghosts.grow(2 * capacity);
        let after: Vec<bool> = hashes.iter().map(|&hash| ghosts.holds(hash)).collect();
        assert_eq!(before, after, "growing keeps every ghost");
    }
}
