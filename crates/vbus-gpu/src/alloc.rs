//! Best-fit allocation of byte ranges inside one chunk, with coalescing of free neighbours.
//!
//! Free ranges are kept twice: by offset (to merge neighbours on free) and by (size, offset) (to
//! find the smallest range that fits). Both are B-trees, so allocation and free are O(log n).

use std::collections::{BTreeMap, BTreeSet};

/// Every allocation is a multiple of this, and starts on it (CUDA's own allocation alignment).
pub const ALIGN_BYTES: u64 = 256;

/// Free space of one chunk.
#[derive(Debug, Clone)]
pub(crate) struct RangeAllocator {
    size_bytes: u64,
    free_by_offset: BTreeMap<u64, u64>,
    free_by_size: BTreeSet<(u64, u64)>,
    free_bytes: u64,
}

impl RangeAllocator {
    /// All of `size_bytes` free. `size_bytes` is a multiple of [`ALIGN_BYTES`].
    pub fn new(size_bytes: u64) -> Self {
        assert!(
            size_bytes.is_multiple_of(ALIGN_BYTES),
            "chunk sizes are aligned"
        );
        let mut allocator = Self {
            size_bytes,
            free_by_offset: BTreeMap::new(),
            free_by_size: BTreeSet::new(),
            free_bytes: 0,
        };
        if size_bytes > 0 {
            allocator.insert_free(0, size_bytes);
        }
        allocator
    }

    /// The size rounded up to the alignment (0 stays 0; a zero-byte allocation takes no space).
    pub fn aligned(size_bytes: u64) -> Option<u64> {
        size_bytes.checked_next_multiple_of(ALIGN_BYTES)
    }

    /// Takes `size_bytes` (already aligned, non-zero) from the smallest free range that holds
    /// it; returns its offset.
    pub fn alloc(&mut self, size_bytes: u64) -> Option<u64> {
        debug_assert!(size_bytes > 0 && size_bytes.is_multiple_of(ALIGN_BYTES));
        let &(free_size, offset) = self.free_by_size.range((size_bytes, 0)..).next()?;
        self.remove_free(offset, free_size);
        if free_size > size_bytes {
            self.insert_free(offset + size_bytes, free_size - size_bytes);
        }
        Some(offset)
    }

    /// Returns a range taken by [`RangeAllocator::alloc`].
    pub fn free(&mut self, mut offset: u64, mut size_bytes: u64) {
        assert!(
            offset + size_bytes <= self.size_bytes,
            "freed range lies in the chunk"
        );
        // Merge with the free neighbour after, then the one before.
        if let Some(&next_size) = self.free_by_offset.get(&(offset + size_bytes)) {
            self.remove_free(offset + size_bytes, next_size);
            size_bytes += next_size;
        }
        if let Some((&prev_offset, &prev_size)) = self.free_by_offset.range(..offset).next_back() {
            assert!(
                prev_offset + prev_size <= offset,
                "double free of offset {offset}"
            );
            if prev_offset + prev_size == offset {
                self.remove_free(prev_offset, prev_size);
                offset = prev_offset;
                size_bytes += prev_size;
            }
        }
        self.insert_free(offset, size_bytes);
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    /// The largest range one allocation could take.
    pub fn largest_free_bytes(&self) -> u64 {
        self.free_by_size.last().map_or(0, |&(size, _)| size)
    }

    pub fn is_empty(&self) -> bool {
        self.free_bytes == self.size_bytes
    }

    fn insert_free(&mut self, offset: u64, size_bytes: u64) {
        let previous = self.free_by_offset.insert(offset, size_bytes);
        assert!(previous.is_none(), "free ranges never overlap");
        self.free_by_size.insert((size_bytes, offset));
        self.free_bytes += size_bytes;
    }

    fn remove_free(&mut self, offset: u64, size_bytes: u64) {
        self.free_by_offset.remove(&offset);
        self.free_by_size.remove(&(size_bytes, offset));
        self.free_bytes -= size_bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_fit_and_coalescing() {
        let mut allocator = RangeAllocator::new(4096);
        let a = allocator.alloc(1024).unwrap();
        let b = allocator.alloc(1024).unwrap();
        let c = allocator.alloc(1024).unwrap();
        assert_eq!((a, b, c), (0, 1024, 2048));
        allocator.free(b, 1024);
        // The 1024-byte hole is the best fit for 768 bytes, ahead of the 1024 at the end.
        assert_eq!(allocator.alloc(768), Some(1024));
        allocator.free(1024, 768);
        allocator.free(a, 1024);
        allocator.free(c, 1024);
        assert!(allocator.is_empty());
        assert_eq!(allocator.largest_free_bytes(), 4096);
        assert_eq!(allocator.alloc(4352), None);
    }

    /// Random allocations and frees: live ranges never overlap, stay inside the chunk, and the
    /// free-byte count always balances.
    #[test]
    fn random_workload_never_overlaps() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let chunk_bytes = 1 << 20;
        let mut allocator = RangeAllocator::new(chunk_bytes);
        let mut live: Vec<(u64, u64)> = Vec::new();
        for _ in 0..20_000 {
            if live.is_empty() || next() % 3 != 0 {
                let size = RangeAllocator::aligned(1 + next() % 20_000).unwrap();
                if let Some(offset) = allocator.alloc(size) {
                    assert!(offset + size <= chunk_bytes);
                    for &(other, other_size) in &live {
                        assert!(
                            offset + size <= other || other + other_size <= offset,
                            "overlap"
                        );
                    }
                    live.push((offset, size));
                }
            } else {
                let (offset, size) = live.swap_remove((next() as usize) % live.len());
                allocator.free(offset, size);
            }
            let used: u64 = live.iter().map(|&(_, size)| size).sum();
            assert_eq!(allocator.free_bytes() + used, chunk_bytes);
        }
    }
}
