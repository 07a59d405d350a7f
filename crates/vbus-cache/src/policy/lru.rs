//! Least recently used.

use super::SlotList;

/// Slots by recency: a hit moves a slot to the head, eviction takes the tail.
#[derive(Debug, Default)]
pub struct Lru {
    list: SlotList,
}

impl Lru {
    pub(crate) fn insert(&mut self, slot: u32) {
        self.list.push_head(slot);
    }

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

    pub(crate) fn index_bytes(&self) -> usize {
        self.list.index_bytes()
    }

    pub(crate) fn len(&self) -> usize {
        self.list.len()
    }
}
