//! SIEVE: one FIFO, a visited bit per entry, and a hand sweeping from old to new.

use std::sync::atomic::{AtomicU32, Ordering};

use super::{Entries, SlotList, Victim};

/// New entries enter at the head; a hit only sets the visited bit. Eviction moves the hand from
/// where it stopped toward the head, clearing visited bits, and evicts the first unvisited entry;
/// past the head the hand wraps to the tail.
///
/// The visited bit is the entry's mark ([`Entries::mark`]): a hit reads and writes only the
/// entry's own line, which it read to compare the key, and no line of the list.
#[derive(Debug, Default)]
pub struct Sieve {
    /// The FIFO.
    list: SlotList,
    /// Where the next sweep starts; `None` means the tail.
    hand: Option<u32>,
}

impl Sieve {
    pub(crate) fn reserve(&mut self, n_slots: usize) {
        self.list.reserve(n_slots);
    }

    #[inline]
    pub(crate) fn insert<E: Entries + ?Sized>(&mut self, slot: u32, key_hash: u64, entries: &E) {
        self.list.push_head_with_hash(slot, key_hash);
        entries.mark(slot).store(0, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn access<E: Entries + ?Sized>(&self, slot: u32, entries: &E) {
        Self::access_mark(entries.mark(slot));
    }

    /// [`Sieve::access`] given the slot's mark.
    #[inline]
    pub(crate) fn access_mark(visited: &AtomicU32) {
        // Read before writing: a hot entry's line is not dirtied (nor bounced between cores) on
        // every hit.
        if visited.load(Ordering::Relaxed) == 0 {
            visited.store(1, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn remove(&mut self, slot: u32) {
        if self.hand == Some(slot) {
            self.hand = self.list.prev(slot);
        }
        self.list.unlink(slot);
    }

    /// The first unvisited, not kept entry from the hand toward the head. Kept entries are passed
    /// over like visited ones; two full sweeps find any evictable entry.
    #[inline]
    pub(crate) fn evict<E: Entries + ?Sized>(
        &mut self,
        keep: &mut dyn FnMut(u32) -> bool,
        entries: &E,
    ) -> Option<Victim> {
        let mut current = self.hand.or_else(|| self.list.tail())?;
        for _ in 0..=2 * self.list.len() {
            let visited = entries.mark(current);
            if visited.load(Ordering::Relaxed) != 0 || keep(current) {
                visited.store(0, Ordering::Relaxed);
                current = self.list.prev(current).or_else(|| self.list.tail())?;
                continue;
            }
            self.hand = self.list.prev(current);
            return Some(self.list.unlink_victim(current));
        }
        None
    }

    pub(crate) fn index_bytes(&self) -> usize {
        self.list.index_bytes()
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }
}
