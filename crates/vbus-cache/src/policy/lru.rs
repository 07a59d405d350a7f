//! Least recently used.

use super::SlotList;

/// The newest `len / MOVE_WINDOW_DIV` slots are not moved on a hit.
const MOVE_WINDOW_DIV: usize = 4;

/// Slots by recency: a hit moves a slot to the head, eviction takes the tail.
///
/// A hit on a slot already among the newest quarter of the list does not move it (memcached
/// bumps an item at most once a minute for the same reason): such a hit is served under a shared
/// lock with no write at all. Eviction order is therefore least recently *moved*: a slot hit
/// again while in the newest quarter keeps the position of its earlier move. Slots outside that
/// quarter are ordered exactly by recency.
#[derive(Debug, Default)]
pub struct Lru {
    list: SlotList,
}

impl Lru {
    pub(crate) fn insert(&mut self, slot: u32, key_hash: u64) {
        self.list.push_head_with_hash(slot, key_hash);
    }

    /// A hit under a shared lock: true when `slot` is in the newest quarter and stays where it
    /// is; false when it must move ([`Lru::access`], under the exclusive lock).
    pub(crate) fn access_shared(&self, slot: u32) -> bool {
        self.list
            .age(slot)
            .is_some_and(|age| (age as usize) < self.list.len() / MOVE_WINDOW_DIV)
    }

    /// A hit that moves `slot` to the head.
    pub(crate) fn access(&mut self, slot: u32) {
        self.list.move_to_head(slot);
    }

    pub(crate) fn remove(&mut self, slot: u32) {
        self.list.unlink(slot);
    }

    /// The least recently used slot not kept. Kept slots are moved to the head (treated as just
    /// used), so each is passed over once per call at most.
    pub(crate) fn evict(&mut self, keep: &mut dyn FnMut(u32) -> bool) -> Option<u32> {
        for _ in 0..self.list.len() {
            let slot = self.list.tail()?;
            if keep(slot) {
                self.list.move_to_head(slot);
                continue;
            }
            self.list.unlink(slot);
            return Some(slot);
        }
        None
    }

    pub(crate) fn key_hash(&self, slot: u32) -> u64 {
        self.list.key_hash(slot)
    }

    pub(crate) fn index_bytes(&self) -> usize {
        self.list.index_bytes()
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }
}
