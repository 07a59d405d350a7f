//! S3-FIFO: a small probationary FIFO, a main FIFO with reinsertion, and a ghost FIFO of hashes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};

use super::{Entries, Victim};

/// Share of the capacity, in bytes, the small queue holds before it gives way (10%).
const SMALL_SHARE: f64 = 0.10;
/// The access counter saturates here.
const FREQ_MAX: u32 = 3;
/// Ghost entries remembered at least.
const GHOST_MIN: usize = 16;

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

/// A ghost's number: its remember number, kept to 31 bits (the tier flags ghosts in its key map
/// with the 32nd). Ghosts in the window are far fewer than 2^31, so the number names one.
pub type GhostId = u32;

/// Ghost numbers wrap here.
const GHOST_ID_MASK: u64 = (1 << 31) - 1;

/// A remembered key hash; `consumed` once its key came back (the caller already let its map
/// entry go).
#[derive(Debug, Clone, Copy)]
struct Ghost {
    key_hash: u64,
    consumed: bool,
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
/// The ghost queue is not searched by hash here: the caller keeps each ghost's number in its key
/// map under the victim's key hash ([`S3Fifo::take_remembered`]), in place of the victim's slot,
/// so a returning key finds its ghost in the probe that found no entry and hands it to
/// [`S3Fifo::insert`].
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
    /// The `ghost_len` newest remembered hashes, oldest first.
    ghosts: VecDeque<Ghost>,
    /// The remember number of `ghosts[0]`.
    ghost_front: u64,
    ghost_len: u64,
    /// The ghost the last victim left, until the caller takes it.
    remembered: Option<GhostId>,
    /// Ghosts that left the window unconsumed, until the caller drops them from its map.
    forgotten: Vec<(u64, GhostId)>,
}

/// Stale positions a ring may hold beyond its live ones before it is compacted.
const STALE_SLACK: usize = 64;

impl S3Fifo {
    pub(crate) fn reserve(&mut self, n_slots: usize) {
        // The small queue holds about a tenth; positions of removed entries linger in both.
        self.small.reserve(n_slots / 4);
        self.main.reserve(n_slots);
        self.ghosts.reserve(n_slots);
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
            ghosts: VecDeque::new(),
            ghost_front: 0,
            ghost_len: 0,
            remembered: None,
            forgotten: Vec::new(),
        }
    }

    /// A new entry of `size_bytes` in `slot`; `ghost` is the ghost its key left, when the
    /// caller found one (a returning key, which goes to main; the caller let the ghost's map
    /// entry go).
    #[inline]
    pub(crate) fn insert<E: Entries + ?Sized>(
        &mut self,
        slot: u32,
        key_hash: u64,
        size_bytes: u64,
        ghost: Option<GhostId>,
        entries: &E,
    ) {
        let returning = ghost.is_some_and(|id| self.consume_ghost(id, key_hash));
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
        self.remembered = None;
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
                self.remember(position.key_hash);
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

    /// Puts a key hash in the ghost queue, which remembers about as many keys as the queues hold:
    /// the window grows by one up to that many, and the oldest ghosts beyond it are forgotten.
    /// Consumed ghosts still count in the window.
    #[inline]
    fn remember(&mut self, key_hash: u64) {
        let seq = self.ghost_front + self.ghosts.len() as u64;
        self.ghosts.push_back(Ghost {
            key_hash,
            consumed: false,
        });
        let ghost_max = self.len().max(GHOST_MIN) as u64;
        self.ghost_len = (self.ghost_len + 1).min(ghost_max);
        while self.ghosts.len() as u64 > self.ghost_len {
            let Some(ghost) = self.ghosts.pop_front() else {
                break;
            };
            if !ghost.consumed {
                self.forgotten
                    .push((ghost.key_hash, ghost_id(self.ghost_front)));
            }
            self.ghost_front += 1;
        }
        self.remembered = Some(ghost_id(seq));
    }

    /// Where ghost `id` is in the ring, if it is in the window.
    #[inline]
    fn ghost_index(&self, id: GhostId) -> Option<usize> {
        let offset = u64::from(id).wrapping_sub(self.ghost_front) & GHOST_ID_MASK;
        usize::try_from(offset)
            .ok()
            .filter(|&index| index < self.ghosts.len())
    }

    /// Marks ghost `id` as come back; true when it is in the window, unconsumed, and remembers
    /// `key_hash`.
    #[inline]
    fn consume_ghost(&mut self, id: GhostId, key_hash: u64) -> bool {
        let Some(index) = self.ghost_index(id) else {
            return false;
        };
        let ghost = &mut self.ghosts[index];
        let fresh = !ghost.consumed && ghost.key_hash == key_hash;
        ghost.consumed = true;
        fresh
    }

    /// The key hash ghost `id` remembers, while it is in the window and unconsumed.
    #[inline]
    pub(crate) fn ghost_hash(&self, id: GhostId) -> Option<u64> {
        let ghost = self.ghosts[self.ghost_index(id)?];
        (!ghost.consumed).then_some(ghost.key_hash)
    }

    /// The ghost the last [`S3Fifo::evict`]'s victim left (a victim from small), once.
    #[inline]
    pub(crate) fn take_remembered(&mut self) -> Option<GhostId> {
        self.remembered.take()
    }

    /// A ghost that left the window unconsumed, `(key_hash, id)`, for the caller to drop.
    #[inline]
    pub(crate) fn pop_forgotten(&mut self) -> Option<(u64, GhostId)> {
        self.forgotten.pop()
    }

    pub(crate) fn index_bytes(&self) -> usize {
        (self.small.capacity() + self.main.capacity()) * std::mem::size_of::<Position>()
            + self.ghosts.capacity() * std::mem::size_of::<Ghost>()
            + self.forgotten.capacity() * std::mem::size_of::<(u64, GhostId)>()
    }

    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.small_len + self.main_len
    }
}

/// The ghost number of remember number `seq`.
#[inline]
fn ghost_id(seq: u64) -> GhostId {
    (seq & GHOST_ID_MASK) as GhostId
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
