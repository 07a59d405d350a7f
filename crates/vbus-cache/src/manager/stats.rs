//! The figures of every tier and the moves between them ([`CacheManager::get_stats`]).

use super::*;

/// Per-tier figures, and the hit rates in percent.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CacheStats {
    /// L1 (VRAM, or the simulated device): hits and misses of device and host gets.
    pub l1: TierStats,
    /// L2 (RAM).
    pub l2: TierStats,
    /// L3 (disk): hits and misses are the gets that reached it.
    pub l3: TierStats,
    /// Values fetched from the source.
    pub source_fetches: u64,
    /// Values promoted from L3 into L2.
    pub promotions: u64,
    /// Bytes moved L3 → L2.
    pub bytes_l3_to_l2: u64,
    /// Values copied host → device into L1.
    pub promotions_to_l1: u64,
    /// Bytes moved host → device.
    pub bytes_to_l1: u64,
    /// L1 victims copied back into L2 (they were not there).
    pub demotions_from_l1: u64,
    /// Bytes moved device → host (demotions and host reads of L1 values).
    pub bytes_from_l1: u64,
    /// Prefetch requests dropped because the queue was full.
    pub prefetch_dropped: u64,
    /// Write-back values not yet in L3.
    pub dirty_entries: u64,
    /// Their bytes: at most L2's capacity in L2, and as much again outside it (being written
    /// back, or failed to write).
    pub dirty_bytes: u64,
    /// Dirty values published to L3 (demoted out of L2, or flushed).
    pub write_backs: u64,
    /// Bytes moved L2 → L3 by write-backs.
    pub bytes_written_back: u64,
    /// Write-backs that failed; the value stays dirty and readable, and `flush` tries again.
    pub write_back_failures: u64,
    /// L1 hits over gets, percent.
    pub l1_hit_rate: f64,
    /// L2 hits over the gets that reached L2, percent.
    pub l2_hit_rate: f64,
    /// L3 hits over the gets that reached L3, percent.
    pub l3_hit_rate: f64,
}

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) l3_hits: AtomicU64,
    pub(super) l3_misses: AtomicU64,
    pub(super) source_fetches: AtomicU64,
    pub(super) promotions: AtomicU64,
    pub(super) bytes_l3_to_l2: AtomicU64,
    pub(super) promotions_to_l1: AtomicU64,
    pub(super) bytes_to_l1: AtomicU64,
    pub(super) demotions_from_l1: AtomicU64,
    pub(super) bytes_from_l1: AtomicU64,
    pub(super) prefetch_dropped: AtomicU64,
    pub(super) dirty_entries: AtomicU64,
    pub(super) dirty_bytes: AtomicU64,
    pub(super) write_backs: AtomicU64,
    pub(super) bytes_written_back: AtomicU64,
    pub(super) write_back_failures: AtomicU64,
}

impl CacheManager {
    /// Per-tier figures with `l1_hit_rate`, `l2_hit_rate`, `l3_hit_rate`.
    pub fn get_stats(&self) -> CacheStats {
        let counters = &self.inner.counters;
        let l1 = self
            .inner
            .l1
            .as_ref()
            .map(|l1| l1.tier.stats())
            .unwrap_or_default();
        let l2 = self
            .inner
            .l2
            .as_ref()
            .map(MemoryTier::stats)
            .unwrap_or_default();
        let store = self.inner.l3.stats();
        let l3 = TierStats {
            hits: counters.l3_hits.load(Ordering::Relaxed),
            misses: counters.l3_misses.load(Ordering::Relaxed),
            n_entries: store.n_files,
            used_bytes: store.used_bytes,
            capacity_bytes: store.capacity_bytes,
            n_evictions: store.n_evictions,
            evicted_bytes: store.evicted_bytes,
            n_pinned: store.n_pinned,
        };
        CacheStats {
            l1,
            l2,
            l3,
            source_fetches: counters.source_fetches.load(Ordering::Relaxed),
            promotions: counters.promotions.load(Ordering::Relaxed),
            bytes_l3_to_l2: counters.bytes_l3_to_l2.load(Ordering::Relaxed),
            promotions_to_l1: counters.promotions_to_l1.load(Ordering::Relaxed),
            bytes_to_l1: counters.bytes_to_l1.load(Ordering::Relaxed),
            demotions_from_l1: counters.demotions_from_l1.load(Ordering::Relaxed),
            bytes_from_l1: counters.bytes_from_l1.load(Ordering::Relaxed),
            prefetch_dropped: counters.prefetch_dropped.load(Ordering::Relaxed),
            dirty_entries: counters.dirty_entries.load(Ordering::Relaxed),
            dirty_bytes: counters.dirty_bytes.load(Ordering::Relaxed),
            write_backs: counters.write_backs.load(Ordering::Relaxed),
            bytes_written_back: counters.bytes_written_back.load(Ordering::Relaxed),
            write_back_failures: counters.write_back_failures.load(Ordering::Relaxed),
            l1_hit_rate: l1.hit_rate_percent(),
            l2_hit_rate: l2.hit_rate_percent(),
            l3_hit_rate: l3.hit_rate_percent(),
        }
    }
}
