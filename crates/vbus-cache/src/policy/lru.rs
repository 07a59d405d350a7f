//! Least recently used.

use std::sync::atomic::{AtomicU32, Ordering};

use super::{Entries, SlotList, Victim};

/// The newest `len / MOVE_WINDOW_DIV` slots are not moved on a hit.
const MOVE_WINDOW_DIV: usize = 4;

/// Slots by recency: a hit moves a slot to the head, eviction takes the tail.
///
/// Each slot's stamp (the list's clock when it was last pushed at the head) is its entry's mark
/// ([`Entries`]), so that a hit that does not move reads the entry's line and no line of the
/// list.
///
/// A hit on a slot already among the newest quarter of the list does not move it (memcached
/// bumps an item at most once a minute for the same reason): such a hit is served under a shared
/// lock with no write at all. Eviction order is therefore least recently *moved*: a slot hit
/// again while in the newest quarter keeps the position of its earlier move. Slots outside that
/// quarter are ordered exactly by recency. A hit outside it need not take the exclusive lock
/// either: the memory tier records the move and applies recorded moves, in order, before its next
/// change under that lock, so every eviction still sees them.
#[derive(Debug, Default)]
pub struct Lru {
    list: SlotList,
}

impl Lru {
    pub(crate) fn reserve(&mut self, n_slots: usize) {
        self.list.reserve(n_slots);
    }

    #[inline]
    pub(crate) fn insert<E: Entries + ?Sized>(&mut self, slot: u32, key_hash: u64, entries: &E) {
        let stamp = self.list.push_head_with_hash(slot, key_hash);
        entries.mark(slot).store(stamp, Ordering::Relaxed);
    }

    /// A hit under a shared lock on a slot it holds, given the slot's mark: true when the slot is
    /// in the newest quarter and stays where it is; false when it must move ([`Lru::access`],
    /// under the exclusive lock, now or later: the memory tier records such moves and applies
    /// them when it next takes that lock). Until it moves, the slot's stamp is the present one,
    /// so later hits do not ask again.
    #[inline]
    pub(crate) fn access_shared(&self, mark: &AtomicU32) -> bool {
        let clock = self.list.clock();
        let age = clock.wrapping_sub(mark.load(Ordering::Relaxed));
        if (age as usize) < self.list.len() / MOVE_WINDOW_DIV {
            return true;
        }
        mark.store(clock, Ordering::Relaxed);
        false
    }

    /// A hit that moves `slot` to the head.
    #[inline]
    pub(crate) fn access<E: Entries + ?Sized>(&mut self, slot: u32, entries: &E) {
        if let Some(stamp) = self.list.move_to_head(slot) {
            entries.mark(slot).store(stamp, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn remove(&mut self, slot: u32) {
        self.list.unlink(slot);
    }

    /// The least recently used slot not kept. Kept slots are moved to the head (treated as just
    /// used), so each is passed over once per call at most.
    #[inline]
    pub(crate) fn evict<E: Entries + ?Sized>(
        &mut self,
        keep: &mut dyn FnMut(u32) -> bool,
        entries: &E,
    ) -> Option<Victim> {
        for _ in 0..self.list.len() {
            let slot = self.list.tail()?;
            if keep(slot) {
                if let Some(stamp) = self.list.move_to_head(slot) {
                    entries.mark(slot).store(stamp, Ordering::Relaxed);
                }
                continue;
            }
            return Some(self.list.unlink_victim(slot));
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
