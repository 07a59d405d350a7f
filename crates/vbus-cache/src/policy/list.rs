//! A doubly linked list threaded through a `Vec` by slot index: O(1) push, unlink and move,
//! no allocation per operation once the slots exist.

use super::Victim;

/// No slot.
pub(crate) const NIL: u32 = u32::MAX;
/// The `prev` of a slot not in the list.
const UNLINKED: u32 = u32::MAX - 1;

/// 16 bytes: four to a cache line, none straddling two.
#[derive(Debug)]
#[repr(align(16))]
struct Link {
    /// [`UNLINKED`] when the slot is not in the list.
    prev: u32,
    next: u32,
    /// The hash of the key the slot holds, kept for the tier: an evicted slot's hash comes from
    /// this line (already read to unlink it), not from the entry.
    key_hash: u64,
}

impl Link {
    fn unlinked() -> Self {
        Self {
            prev: UNLINKED,
            next: NIL,
            key_hash: 0,
        }
    }
}

/// Slots from head (newest) to tail (oldest).
#[derive(Debug)]
pub(crate) struct SlotList {
    links: Vec<Link>,
    head: u32,
    tail: u32,
    len: usize,
    /// Pushes at the head so far (wrapping).
    clock: u32,
}

impl Default for SlotList {
    fn default() -> Self {
        Self::new()
    }
}

impl SlotList {
    pub fn new() -> Self {
        Self {
            links: Vec::new(),
            head: NIL,
            tail: NIL,
            len: 0,
            clock: 0,
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes its allocations take.
    pub fn index_bytes(&self) -> usize {
        self.links.capacity() * std::mem::size_of::<Link>()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    pub fn contains(&self, slot: u32) -> bool {
        self.links
            .get(slot as usize)
            .is_some_and(|link| link.prev != UNLINKED)
    }

    #[inline]
    pub fn tail(&self) -> Option<u32> {
        (self.tail != NIL).then_some(self.tail)
    }

    /// Pushes at the head so far (wrapping): a slot pushed with stamp `s` has had
    /// `clock() - s` slots pushed ahead of it since, at most.
    #[inline]
    pub fn clock(&self) -> u32 {
        self.clock
    }

    /// The key hash recorded for `slot` by [`SlotList::push_head_with_hash`] (kept after unlink);
    /// 0 for a slot never linked.
    #[inline]
    pub fn key_hash(&self, slot: u32) -> u64 {
        self.links
            .get(slot as usize)
            .map_or(0, |link| link.key_hash)
    }

    /// Links `slot` at the head and records its key's hash; returns its stamp.
    #[inline]
    pub fn push_head_with_hash(&mut self, slot: u32, key_hash: u64) -> u32 {
        let stamp = self.push_head(slot);
        self.links[slot as usize].key_hash = key_hash;
        stamp
    }

    /// The slot nearer the head than `slot` (newer), if any.
    #[inline]
    pub fn prev(&self, slot: u32) -> Option<u32> {
        let prev = self.links[slot as usize].prev;
        (prev < UNLINKED).then_some(prev)
    }

    /// Room for `n_slots` more slots without growing.
    pub fn reserve(&mut self, n_slots: usize) {
        self.links.reserve(n_slots);
    }

    /// Links `slot` at the head (it must not be linked); returns its stamp, the clock before
    /// this push.
    #[inline]
    pub fn push_head(&mut self, slot: u32) -> u32 {
        let idx = slot as usize;
        if self.links.len() <= idx {
            self.links.resize_with(idx + 1, Link::unlinked);
        }
        assert!(
            self.links[idx].prev == UNLINKED && slot < UNLINKED,
            "slot {slot} is already linked, or out of range"
        );
        let link = &mut self.links[idx];
        link.prev = NIL;
        link.next = self.head;
        let stamp = self.clock;
        self.clock = self.clock.wrapping_add(1);
        if self.head != NIL {
            self.links[self.head as usize].prev = slot;
        } else {
            self.tail = slot;
        }
        self.head = slot;
        self.len += 1;
        stamp
    }

    /// Unlinks `slot`, a linked slot a policy evicts, and names it with its key hash.
    #[inline]
    pub fn unlink_victim(&mut self, slot: u32) -> Victim {
        let key_hash = self.key_hash(slot);
        self.unlink(slot);
        Victim { slot, key_hash }
    }

    /// Unlinks `slot`; returns whether it was linked.
    #[inline]
    pub fn unlink(&mut self, slot: u32) -> bool {
        if !self.contains(slot) {
            return false;
        }
        let (prev, next) = {
            let link = &self.links[slot as usize];
            (link.prev, link.next)
        };
        if prev != NIL {
            self.links[prev as usize].next = next;
        } else {
            self.head = next;
        }
        if next != NIL {
            self.links[next as usize].prev = prev;
        } else {
            self.tail = prev;
        }
        let link = &mut self.links[slot as usize];
        link.prev = UNLINKED;
        link.next = NIL;
        self.len -= 1;
        true
    }

    /// Moves `slot` to the head (the head itself is pushed there again: its age restarts);
    /// returns its new stamp, or `None` (and changes nothing) when it is not linked.
    #[inline]
    pub fn move_to_head(&mut self, slot: u32) -> Option<u32> {
        if self.head == slot && slot != NIL {
            let stamp = self.clock;
            self.clock = self.clock.wrapping_add(1);
            return Some(stamp);
        }
        self.unlink(slot).then(|| self.push_head(slot))
    }

    /// Slots from tail to head.
    #[cfg(test)]
    pub fn iter_from_tail(&self) -> impl Iterator<Item = u32> + '_ {
        std::iter::successors(self.tail(), move |&slot| self.prev(slot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_unlink_move() {
        let mut list = SlotList::default();
        assert!(list.is_empty() && list.tail().is_none() && !list.contains(0));
        for slot in [3, 1, 7] {
            list.push_head(slot);
        }
        assert_eq!(list.iter_from_tail().collect::<Vec<_>>(), [3, 1, 7]);
        assert_eq!(list.move_to_head(3), Some(3), "the fourth push");
        assert_eq!(list.move_to_head(9), None, "never linked");
        assert_eq!(
            list.move_to_head(3),
            Some(4),
            "the head is re-stamped; the refused move took no stamp"
        );
        assert_eq!(list.iter_from_tail().collect::<Vec<_>>(), [1, 7, 3]);
        assert!(list.unlink(7));
        assert!(!list.unlink(7));
        assert_eq!(list.iter_from_tail().collect::<Vec<_>>(), [1, 3]);
        assert!(list.unlink(1) && list.unlink(3));
        assert!(list.is_empty() && list.tail().is_none());
        list.push_head(7);
        assert_eq!((list.len(), list.tail()), (1, Some(7)));
    }
}
