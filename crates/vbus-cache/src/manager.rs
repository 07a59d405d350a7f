//! `CacheManager`: the seed's `put`, `get` and `get_stats` over the tiers.
//!
//! Write-through (the default): a `put` is durable in L3 (the `vbus-store` file store) before it
//! is acknowledged, then kept in L2 (the memory tier). Write-back: a `put` is kept in L2 and
//! recorded as dirty; it reaches L3 when L2 evicts it, on [`CacheManager::flush`], or when the
//! cache is dropped. A `get` tries L2, then L1 (copying back from the device), then the dirty
//! values being written back, then L3 (promoting into L2), then the [`Source`] (storing the value
//! in L3 and L2). `get_device` hands out the L1 buffer itself, copying the value to the device on
//! a miss; L1 victims go back to L2 when it lacks them. Concurrent gets of one missing key load it
//! once.
//!
//! With a CUDA device for L1, values of [`PAGE_LOCKED_MIN_BYTES`] or more are kept in the device's
//! page-locked host pool (as they are read from L3 or the device, or copied at a put), so L2 ↔ L1
//! moves are single DMA transfers; when the pool is full a value lives on the heap instead.
//!
//! Nothing is dropped while it is the only copy: a value is in L3, or it is dirty, and a dirty
//! value stays in its key's stripe map (readable) until L3 holds it, whatever L2 evicts. L3 evicts
//! only values it loaded from the source (which can fetch them again), never a put's value, never
//! a pinned one.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak, mpsc};

use vbus_store::{EvictionHook, FileStore};

use crate::key::ValueBytes;
use crate::memory::{Inserted, MemoryTier, TierStats};
use crate::policy::PolicyKind;
use crate::{CacheKey, Error, Result, Source, Value};

/// Key stripes serialising puts, removes and the L2 half of loads of one key.
const N_STRIPES: usize = 64;
/// Times a get waits on other gets' loads of its key before loading on its own.
const SHARED_LOAD_ATTEMPTS_MAX: usize = 4;
/// Prefetch requests waiting at most; more are dropped (and counted).
const PREFETCH_QUEUE_MAX: usize = 1024;
/// Values at least this large live in page-locked memory when L1 is a CUDA device; smaller ones
/// stay on the heap, where the pool's lock and its fragmentation cost more than staging saves.
pub const PAGE_LOCKED_MIN_BYTES: usize = 64 << 10;

/// When a put reaches L3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteMode {
    /// Published to L3 before `put` returns (the default).
    #[default]
    Through,
    /// Kept in L2 and published to L3 when L2 evicts it, on `flush`, or when the cache is dropped.
    /// A put that does not fit in L2, or would take the dirty bytes past twice L2's capacity
    /// (when write-backs fail), is written through. Dirty values are lost if the process dies
    /// before they are written.
    Back,
}

impl WriteMode {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Through => "write_through",
            Self::Back => "write_back",
        }
    }
}

/// Builds a [`CacheManager`]; every setter says its default.
#[derive(Clone)]
pub struct CacheBuilder {
    l1_device: Option<vbus_gpu::Device>,
    l1_capacity_bytes: u64,
    l1_policy: PolicyKind,
    l2_capacity_bytes: u64,
    l2_policy: PolicyKind,
    l2_shards: usize,
    l3_dir: Option<PathBuf>,
    l3_capacity_bytes: u64,
    l3_verify: vbus_store::Verify,
    l3_on_change: vbus_store::OnChange,
    source: Option<Arc<dyn Source>>,
    write_mode: WriteMode,
}

impl std::fmt::Debug for CacheBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("l2_capacity_bytes", &self.l2_capacity_bytes)
            .field("l2_policy", &self.l2_policy)
            .field("l3_dir", &self.l3_dir)
            .field("write_mode", &self.write_mode)
            .finish_non_exhaustive()
    }
}

impl CacheBuilder {
    /// The device L1 lives on (a CUDA device, or the simulated one). Default none: no L1.
    pub fn l1_device(mut self, device: vbus_gpu::Device) -> Self {
        self.l1_device = Some(device);
        self
    }

    /// L1's capacity in bytes (the device's pool must be at least as large). Default 1 GiB.
    pub fn l1_capacity_bytes(mut self, l1_capacity_bytes: u64) -> Self {
        self.l1_capacity_bytes = l1_capacity_bytes;
        self
    }

    /// L1's eviction policy. Default [`PolicyKind::Lru`].
    pub fn l1_policy(mut self, l1_policy: PolicyKind) -> Self {
        self.l1_policy = l1_policy;
        self
    }

    /// L2's capacity in bytes; 0 turns L2 off. Default 1 GiB.
    pub fn l2_capacity_bytes(mut self, l2_capacity_bytes: u64) -> Self {
        self.l2_capacity_bytes = l2_capacity_bytes;
        self
    }

    /// L2's eviction policy. Default [`PolicyKind::Lru`] (the seed's).
    pub fn l2_policy(mut self, l2_policy: PolicyKind) -> Self {
        self.l2_policy = l2_policy;
        self
    }

    /// L2's shards, rounded up to a power of two. Default four per core.
    pub fn l2_shards(mut self, l2_shards: usize) -> Self {
        self.l2_shards = l2_shards.max(1);
        self
    }

    /// L3's directory (`CACHE/L3_DISK` in a home). Required.
    pub fn l3_dir(mut self, l3_dir: impl Into<PathBuf>) -> Self {
        self.l3_dir = Some(l3_dir.into());
        self
    }

    /// L3's capacity in bytes. Default unlimited.
    pub fn l3_capacity_bytes(mut self, l3_capacity_bytes: u64) -> Self {
        self.l3_capacity_bytes = l3_capacity_bytes;
        self
    }

    /// Which reads of L3 check the bytes. Default [`vbus_store::Verify::EveryRead`].
    pub fn l3_verify(mut self, verify: vbus_store::Verify) -> Self {
        self.l3_verify = verify;
        self
    }

    /// What opening L3 does with files changed behind its back. Default
    /// [`vbus_store::OnChange::Adopt`]; a cluster member quarantines them.
    pub fn l3_on_change(mut self, on_change: vbus_store::OnChange) -> Self {
        self.l3_on_change = on_change;
        self
    }

    /// Where a miss in every tier goes. Default none (a miss is a miss).
    pub fn source(mut self, source: Arc<dyn Source>) -> Self {
        self.source = Some(source);
        self
    }

    /// When a put reaches L3. Default [`WriteMode::Through`].
    pub fn write_mode(mut self, write_mode: WriteMode) -> Self {
        self.write_mode = write_mode;
        self
    }

    /// Opens L3 (reconciling it with its directory) and starts the prefetch worker.
    pub fn build(self) -> Result<CacheManager> {
        let l3_dir = self.l3_dir.ok_or(Error::NoL3Dir)?;
        let refetchable = Arc::new(Mutex::new(HashSet::new()));
        let l3 = FileStore::builder(&l3_dir)
            .capacity_bytes(self.l3_capacity_bytes)
            .verify(self.l3_verify)
            .on_change(self.l3_on_change)
            .open()?;
        l3.set_eviction_hook(Arc::new(RefetchableOnly {
            refetchable: Arc::clone(&refetchable),
        }));
        let l1 = self
            .l1_device
            .filter(|_| self.l1_capacity_bytes > 0)
            .map(|device| L1 {
                tier: MemoryTier::new(self.l1_policy, self.l1_capacity_bytes, 1),
                page_locked: device.kind() == vbus_gpu::BackendKind::Cuda,
                device,
            });
        let l2 = (self.l2_capacity_bytes > 0)
            .then(|| MemoryTier::new(self.l2_policy, self.l2_capacity_bytes, self.l2_shards));
        let (prefetch_tx, prefetch_rx) = mpsc::sync_channel::<CacheKey>(PREFETCH_QUEUE_MAX);
        let inner = Arc::new(Inner {
            l1,
            l2,
            l3,
            source: self.source,
            refetchable,
            loads: Mutex::new(HashMap::new()),
            stripes: (0..N_STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            write_mode: self.write_mode,
            counters: Counters::default(),
            prefetch_tx,
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("vbus-prefetch".to_owned())
            .spawn(move || prefetch_worker(weak, prefetch_rx))
            .map_err(Error::Thread)?;
        Ok(CacheManager { inner })
    }
}

/// L3's eviction hook: only values that came from the source may go.
struct RefetchableOnly {
    refetchable: Arc<Mutex<HashSet<CacheKey>>>,
}

impl EvictionHook for RefetchableOnly {
    fn may_evict(&self, dataset: &str, path: &str, _version: u64) -> bool {
        lock(&self.refetchable).contains(&CacheKey::new(dataset, path))
    }
}

/// A value found by [`CacheManager::open`].
#[derive(Debug)]
pub enum Found {
    /// In memory (L2, a dirty value, or promoted).
    Memory(Value),
    /// A reader over the L3 file, of the version its metadata names.
    File(vbus_store::FileReader),
}

/// One value of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The path inside the dataset.
    pub path: String,
    /// Its size.
    pub size_bytes: u64,
    /// Its version.
    pub version: u64,
    /// Whether it is pinned.
    pub pinned: bool,
    /// A write-back value not yet in L3.
    pub dirty: bool,
}

/// Per-tier figures, and the seed's hit rates in percent.
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
    /// The seed's `l1_hit_rate`, percent.
    pub l1_hit_rate: f64,
    /// The seed's `l2_hit_rate`, percent.
    pub l2_hit_rate: f64,
    /// The seed's `l3_hit_rate`, percent.
    pub l3_hit_rate: f64,
}

#[derive(Debug, Default)]
struct Counters {
    l3_hits: AtomicU64,
    l3_misses: AtomicU64,
    source_fetches: AtomicU64,
    promotions: AtomicU64,
    bytes_l3_to_l2: AtomicU64,
    promotions_to_l1: AtomicU64,
    bytes_to_l1: AtomicU64,
    demotions_from_l1: AtomicU64,
    bytes_from_l1: AtomicU64,
    prefetch_dropped: AtomicU64,
    dirty_entries: AtomicU64,
    dirty_bytes: AtomicU64,
    write_backs: AtomicU64,
    bytes_written_back: AtomicU64,
    write_back_failures: AtomicU64,
}

/// A value in device memory: the buffer, the version it holds. Shared: a handle stays valid after
/// the value leaves L1 or a newer put replaces it.
#[derive(Debug)]
pub struct DeviceValue {
    buffer: vbus_gpu::DeviceBuffer,
    version: u64,
}

impl DeviceValue {
    /// The device buffer (its raw pointer is [`vbus_gpu::DeviceBuffer::device_ptr`]).
    pub fn buffer(&self) -> &vbus_gpu::DeviceBuffer {
        &self.buffer
    }

    /// The version of the value it holds.
    pub fn version(&self) -> u64 {
        self.version
    }
}

/// L1: the accounting and order of a memory tier over buffers of a device.
struct L1 {
    tier: MemoryTier<CacheKey, Arc<DeviceValue>>,
    device: vbus_gpu::Device,
    /// Host values go to the device's page-locked pool (a CUDA device; the simulated device's
    /// "page-locked" memory is only heap).
    page_locked: bool,
}

/// One load in flight: the first get does it, the others wait for its outcome.
#[derive(Default)]
struct Load {
    outcome: Mutex<Option<Result<Option<Value>, String>>>,
    done: Condvar,
}

/// A write-back value not yet in L3, and whether it is pinned (applied to L3 when it is written).
#[derive(Clone)]
struct Dirty {
    value: Value,
    pinned: bool,
}

/// One key stripe: held to change a key, and the dirty values of the keys it covers.
type Stripe<'a> = MutexGuard<'a, HashMap<CacheKey, Dirty>>;

/// L2 victims: written to L3 when they were dirty, after the stripe that evicted them is released.
type Victims = Vec<(CacheKey, Value, u64)>;

/// The newest version of a key anywhere (dirty, else in L3), and whether it is pinned.
#[derive(Debug, Clone, Copy)]
struct Current {
    version: u64,
    pinned: bool,
}

struct Inner {
    l1: Option<L1>,
    l2: Option<MemoryTier<CacheKey, Value>>,
    l3: FileStore,
    source: Option<Arc<dyn Source>>,
    refetchable: Arc<Mutex<HashSet<CacheKey>>>,
    loads: Mutex<HashMap<CacheKey, Arc<Load>>>,
    stripes: Box<[Mutex<HashMap<CacheKey, Dirty>>]>,
    write_mode: WriteMode,
    counters: Counters,
    prefetch_tx: mpsc::SyncSender<CacheKey>,
}

/// The tiered cache. Cheap to clone.
#[derive(Clone)]
pub struct CacheManager {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for CacheManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheManager")
            .field("l3", &self.inner.l3.root())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl CacheManager {
    /// A builder with the defaults.
    pub fn builder() -> CacheBuilder {
        CacheBuilder {
            l1_device: None,
            l1_capacity_bytes: 1 << 30,
            l1_policy: PolicyKind::Lru,
            l2_capacity_bytes: 1 << 30,
            l2_policy: PolicyKind::Lru,
            l2_shards: crate::memory::default_shards(),
            l3_dir: None,
            l3_capacity_bytes: u64::MAX,
            l3_verify: vbus_store::Verify::EveryRead,
            l3_on_change: vbus_store::OnChange::Adopt,
            source: None,
            write_mode: WriteMode::Through,
        }
    }

    /// Stores `bytes` under `key`. Write-through: durable in L3 when this returns, and kept in L2
    /// when it fits. Write-back: kept in L2 as dirty (or written through when it cannot be).
    /// Returns the new value (its version rises with every put of the key).
    pub fn put(&self, key: impl Into<CacheKey>, bytes: &[u8]) -> Result<Value> {
        let key = key.into();
        let (value, victims) = {
            // The whole put holds the key's stripe: the memory tiers drop their copies before
            // the key's newest version moves on, and every fill checks that version under the
            // same stripe, so L1 and L2 only ever hold it and no reader sees a new value and then
            // an old one.
            let mut stripe = self.inner.stripe(&key);
            if let Some(l1) = &self.inner.l1 {
                l1.tier.remove(&key);
            }
            if let Some(l2) = &self.inner.l2 {
                l2.remove(&key);
            }
            let written_back = match self.inner.write_mode {
                WriteMode::Back => self.inner.put_dirty(&mut stripe, &key, bytes)?,
                WriteMode::Through => None,
            };
            match written_back {
                Some(put) => put,
                None => self.inner.put_through(&mut stripe, &key, bytes)?,
            }
        };
        self.inner.write_back_victims(victims);
        Ok(value)
    }

    /// How puts reach L3.
    pub fn write_mode(&self) -> WriteMode {
        self.inner.write_mode
    }

    /// Writes every dirty value to L3 (write-back mode); the values stay in L2. Returns the first
    /// error after trying them all; those that failed stay dirty.
    pub fn flush(&self) -> Result<()> {
        self.inner.flush()
    }

    /// The value of `key` from the fastest tier that holds it, or from the source; `None` when
    /// nothing has it.
    pub fn get(&self, key: impl Into<CacheKey>) -> Result<Option<Value>> {
        let key = key.into();
        if let Some(value) = self.inner.l2.as_ref().and_then(|l2| l2.get(&key)) {
            return Ok(Some(value));
        }
        if let Some(l1) = &self.inner.l1
            && let Some(on_device) = l1.tier.get(&key)
            && self.inner.is_current(&key, on_device.version)?
        {
            // A host read of an L1 value copies it back (and keeps it in L2 when it fits).
            let value = self.inner.download(l1, &on_device)?;
            self.inner
                .counters
                .bytes_from_l1
                .fetch_add(value.len() as u64, Ordering::Relaxed);
            let victims = {
                let stripe = self.inner.stripe(&key);
                self.inner.fill_l2(&stripe, &key, &value)?
            };
            self.inner.write_back_victims(victims.unwrap_or_default());
            return Ok(Some(value));
        }
        self.inner.load(&key)
    }

    /// The value of `key` in device memory (L1): the L1 buffer itself on a hit, without a copy;
    /// otherwise the value is read from the other tiers (or the source) and copied to the device
    /// first. `None` when nothing has the key. Fails when the cache has no L1.
    pub fn get_device(&self, key: impl Into<CacheKey>) -> Result<Option<Arc<DeviceValue>>> {
        let key = key.into();
        let l1 = self.inner.l1.as_ref().ok_or(Error::NoL1)?;
        if let Some(on_device) = l1.tier.get(&key)
            && self.inner.is_current(&key, on_device.version)?
        {
            return Ok(Some(on_device));
        }
        let Some(value) = (match self.inner.l2.as_ref().and_then(|l2| l2.peek(&key)) {
            Some(value) => Some(value),
            None => self.inner.load(&key)?,
        }) else {
            return Ok(None);
        };
        self.inner.fill_l1(&key, &value).map(Some)
    }

    /// Stores `bytes` under `key` like [`CacheManager::put`], and also places the value in L1.
    pub fn put_device(&self, key: impl Into<CacheKey>, bytes: &[u8]) -> Result<Arc<DeviceValue>> {
        let key = key.into();
        let value = self.put(key.clone(), bytes)?;
        self.inner.fill_l1(&key, &value)
    }

    /// True when L2, the dirty values or L3 hold `key` (the source is not asked).
    pub fn contains(&self, key: impl Into<CacheKey>) -> bool {
        let key = key.into();
        self.inner.l2.as_ref().is_some_and(|l2| l2.contains(&key))
            || self.inner.stripe(&key).contains_key(&key)
            || self.inner.l3.has_file_by_path(key.dataset(), key.path())
    }

    /// Removes `key` from every tier; returns whether any held it.
    pub fn remove(&self, key: impl Into<CacheKey>) -> Result<bool> {
        let key = key.into();
        let mut stripe = self.inner.stripe(&key);
        let in_l1 = self
            .inner
            .l1
            .as_ref()
            .and_then(|l1| l1.tier.remove(&key))
            .is_some();
        let dirty = self.inner.forget_dirty(&mut stripe, &key).is_some();
        let in_l2 = self
            .inner
            .l2
            .as_ref()
            .and_then(|l2| l2.remove(&key))
            .is_some();
        let in_l3 = self.inner.l3.remove(key.dataset(), key.path())?;
        lock(&self.inner.refetchable).remove(&key);
        Ok(in_l1 || in_l2 || dirty || in_l3)
    }

    /// Pins `key` in every tier that holds it (never evicted); returns whether any holds it.
    pub fn pin(&self, key: impl Into<CacheKey>) -> Result<bool> {
        self.set_pinned(key.into(), true)
    }

    /// Unpins `key`; returns whether any tier holds it.
    pub fn unpin(&self, key: impl Into<CacheKey>) -> Result<bool> {
        self.set_pinned(key.into(), false)
    }

    fn set_pinned(&self, key: CacheKey, pinned: bool) -> Result<bool> {
        let mut stripe = self.inner.stripe(&key);
        let dirty = stripe
            .get_mut(&key)
            .map(|dirty| dirty.pinned = pinned)
            .is_some();
        let in_l1 = self
            .inner
            .l1
            .as_ref()
            .is_some_and(|l1| l1.tier.set_pinned(&key, pinned));
        let in_l2 = self
            .inner
            .l2
            .as_ref()
            .is_some_and(|l2| l2.set_pinned(&key, pinned));
        let in_l3 = if pinned {
            self.inner.l3.pin(key.dataset(), key.path())?
        } else {
            self.inner.l3.unpin(key.dataset(), key.path())?
        };
        Ok(in_l1 || in_l2 || dirty || in_l3)
    }

    /// Asks for `keys` to be loaded into L2 in the background (the hook the access-pattern router
    /// uses). Returns how many were queued; the rest are dropped when the queue is full.
    pub fn prefetch<K: Into<CacheKey>>(&self, keys: impl IntoIterator<Item = K>) -> usize {
        let mut queued = 0;
        for key in keys {
            match self.inner.prefetch_tx.try_send(key.into()) {
                Ok(()) => queued += 1,
                Err(_) => {
                    self.inner
                        .counters
                        .prefetch_dropped
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        queued
    }

    /// Per-tier figures with the seed's `l1_hit_rate`, `l2_hit_rate`, `l3_hit_rate`.
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

    /// The L3 store underneath (for the daemon's listing and streaming of large values).
    pub fn store(&self) -> &FileStore {
        &self.inner.l3
    }

    /// A value for streaming out: from memory when a memory tier holds it, or it is dirty, or it
    /// is in L3 and at most `promote_max_bytes` (then it is promoted as by [`CacheManager::get`]);
    /// otherwise a reader over its L3 file, in constant memory and without promotion. A value
    /// in no tier goes to the source through `get`. `None` when nothing has it.
    pub fn open(&self, key: impl Into<CacheKey>, promote_max_bytes: u64) -> Result<Option<Found>> {
        let key = key.into();
        if let Some(value) = self.inner.l2.as_ref().and_then(|l2| l2.get(&key)) {
            return Ok(Some(Found::Memory(value)));
        }
        if let Some(dirty) = self.inner.stripe(&key).get(&key) {
            return Ok(Some(Found::Memory(dirty.value.clone())));
        }
        let in_l1 = self
            .inner
            .l1
            .as_ref()
            .is_some_and(|l1| l1.tier.contains(&key));
        match self.inner.l3.meta(key.dataset(), key.path())? {
            Some(meta) if !in_l1 && meta.size_bytes > promote_max_bytes => {
                let reader = match self.inner.l3.file_reader(key.dataset(), key.path()) {
                    // Its first piece failed its checksum and the file was quarantined: a source
                    // has a good copy.
                    Err(err @ vbus_store::Error::ChecksumMismatch { .. })
                        if self.inner.source.is_some() =>
                    {
                        tracing::warn!(key = %key, error = %err, "L3's copy is damaged; fetching it again");
                        return Ok(self.get(key)?.map(Found::Memory));
                    }
                    found => found?,
                };
                match reader {
                    Some(reader) => {
                        self.inner.counters.l3_hits.fetch_add(1, Ordering::Relaxed);
                        Ok(Some(Found::File(reader)))
                    }
                    // Removed in between: a miss.
                    None => Ok(self.get(key)?.map(Found::Memory)),
                }
            }
            _ => Ok(self.get(key)?.map(Found::Memory)),
        }
    }

    /// A writer staging a value for `key` in L3, for values streamed in; nothing is visible
    /// until [`CacheManager::commit`].
    pub fn writer(&self, key: impl Into<CacheKey>) -> Result<vbus_store::FileWriter> {
        let key = key.into();
        Ok(self.inner.l3.file_writer(key.dataset(), key.path())?)
    }

    /// Publishes a streamed value to L3 (write-through whatever the mode: it was never in
    /// memory): the memory tiers drop their copies of `key` and a dirty value is superseded.
    /// Returns its version.
    pub fn commit(&self, key: impl Into<CacheKey>, writer: vbus_store::FileWriter) -> Result<u64> {
        self.publish_l3(key.into(), || writer.commit())
    }

    /// Publishes a complete file from outside the cache (a pull's staged file, hashed by the
    /// caller) to L3 as [`vbus_store::FileStore::adopt`] does; the memory tiers drop their
    /// copies of `key` and a dirty value is superseded. Returns its version.
    pub fn adopt(
        &self,
        key: impl Into<CacheKey>,
        src: &std::path::Path,
        hash: [u8; 32],
    ) -> Result<u64> {
        let key = key.into();
        let (dataset, path) = (key.dataset().to_owned(), key.path().to_owned());
        self.publish_l3(key, || self.inner.l3.adopt(&dataset, &path, src, hash))
    }

    /// Publishes a file to L3 by `publish` (write-through whatever the mode: it was never in
    /// memory): the memory tiers drop their copies of `key` first and a dirty value is
    /// superseded. Returns its version.
    fn publish_l3(
        &self,
        key: CacheKey,
        publish: impl FnOnce() -> std::result::Result<vbus_store::FileMeta, vbus_store::Error>,
    ) -> Result<u64> {
        let mut stripe = self.inner.stripe(&key);
        if let Some(l1) = &self.inner.l1 {
            l1.tier.remove(&key);
        }
        if let Some(l2) = &self.inner.l2 {
            l2.remove(&key);
        }
        let dirty_pinned = stripe.get(&key).is_some_and(|dirty| dirty.pinned);
        let meta = publish()?;
        self.inner.forget_dirty(&mut stripe, &key);
        if dirty_pinned && !meta.pinned {
            self.inner.l3.pin(key.dataset(), key.path())?;
        }
        lock(&self.inner.refetchable).remove(&key);
        Ok(meta.version)
    }

    /// The values of `dataset`: L3's files and the dirty values not yet written, by path.
    pub fn list(&self, dataset: &str) -> Result<Vec<Listed>> {
        let mut listed: std::collections::BTreeMap<String, Listed> = self
            .inner
            .l3
            .list(dataset)?
            .into_iter()
            .map(|meta| {
                (
                    meta.path.clone(),
                    Listed {
                        path: meta.path,
                        size_bytes: meta.size_bytes,
                        version: meta.version,
                        pinned: meta.pinned,
                        dirty: false,
                    },
                )
            })
            .collect();
        for stripe in self.inner.stripes.iter() {
            for (key, dirty) in lock(stripe).iter() {
                if key.dataset() == dataset {
                    listed.insert(
                        key.path().to_owned(),
                        Listed {
                            path: key.path().to_owned(),
                            size_bytes: dirty.value.len() as u64,
                            version: dirty.value.version(),
                            pinned: dirty.pinned,
                            dirty: true,
                        },
                    );
                }
            }
        }
        Ok(listed.into_values().collect())
    }
}

impl Inner {
    fn stripe(&self, key: &CacheKey) -> Stripe<'_> {
        let hash = foldhash::fast::FixedState::default().hash_one(key);
        lock(&self.stripes[hash as usize % self.stripes.len()])
    }

    /// The key's newest version: its dirty value, else L3's file. Called with its stripe held.
    fn current(&self, stripe: &Stripe<'_>, key: &CacheKey) -> Result<Option<Current>> {
        if let Some(dirty) = stripe.get(key) {
            return Ok(Some(Current {
                version: dirty.value.version(),
                pinned: dirty.pinned,
            }));
        }
        Ok(self
            .l3
            .meta(key.dataset(), key.path())?
            .map(|meta| Current {
                version: meta.version,
                pinned: meta.pinned,
            }))
    }

    /// True while `version` is the key's newest. Puts keep L1 in step under the key's stripe;
    /// this check on L1 hits is a second line of defence, cheap beside a device copy.
    fn is_current(&self, key: &CacheKey, version: u64) -> Result<bool> {
        let stripe = self.stripe(key);
        Ok(self
            .current(&stripe, key)?
            .is_some_and(|current| current.version == version))
    }

    /// A write-through put: publishes to L3, then keeps the value in L2. A dirty value of the
    /// key is superseded only once L3 holds the new one (it stays readable if the publish fails).
    fn put_through(
        &self,
        stripe: &mut Stripe<'_>,
        key: &CacheKey,
        bytes: &[u8],
    ) -> Result<(Value, Victims)> {
        let dirty_pinned = stripe.get(key).is_some_and(|dirty| dirty.pinned);
        let mut meta = self.l3.store_file(key.dataset(), key.path(), bytes)?;
        self.forget_dirty(stripe, key);
        if dirty_pinned && !meta.pinned {
            self.l3.pin(key.dataset(), key.path())?;
            meta.pinned = true;
        }
        // A put's value has no other copy: L3 must never evict it.
        lock(&self.refetchable).remove(key);
        let value = self.value_from_slice(bytes, meta.version);
        let current = Current {
            version: meta.version,
            pinned: meta.pinned,
        };
        let victims = self.fill_l2_at(key, &value, current).unwrap_or_default();
        Ok((value, victims))
    }

    /// A write-back put: keeps the value in L2 and records it as dirty, at a version reserved in
    /// L3. `None` when it cannot stay in memory alone (no L2, too large, L2 full of pinned values,
    /// or the dirty bytes would pass twice L2's capacity): the caller writes it through.
    fn put_dirty(
        &self,
        stripe: &mut Stripe<'_>,
        key: &CacheKey,
        bytes: &[u8],
    ) -> Result<Option<(Value, Victims)>> {
        let Some(l2) = &self.l2 else { return Ok(None) };
        let size_bytes = bytes.len() as u64;
        let replaced_bytes = stripe.get(key).map_or(0, |dirty| dirty.value.len() as u64);
        let dirty_bytes =
            (self.counters.dirty_bytes.load(Ordering::Relaxed)).saturating_sub(replaced_bytes);
        // Dirty values in L2 take at most its capacity; those outside it (being written back, or
        // whose write-back failed) may take as much again, and no more.
        if size_bytes > l2.capacity_bytes()
            || dirty_bytes + size_bytes > l2.capacity_bytes().saturating_mul(2)
        {
            return Ok(None);
        }
        let pinned = self.current(stripe, key)?.is_some_and(|c| c.pinned);
        let version = self.l3.reserve_version();
        let value = self.value_from_slice(bytes, version);
        let evicted =
            match l2.insert_unless(key.clone(), value.clone(), size_bytes, pinned, |held| {
                held.version() >= version
            }) {
                Inserted::Stored { evicted } => evicted,
                Inserted::Refused(_) => return Ok(None),
            };
        self.forget_dirty(stripe, key);
        stripe.insert(
            key.clone(),
            Dirty {
                value: value.clone(),
                pinned,
            },
        );
        self.counters.dirty_entries.fetch_add(1, Ordering::Relaxed);
        self.counters
            .dirty_bytes
            .fetch_add(size_bytes, Ordering::Relaxed);
        Ok(Some((value, evicted)))
    }

    /// Drops the key's dirty value (superseded or removed); returns it.
    fn forget_dirty(&self, stripe: &mut Stripe<'_>, key: &CacheKey) -> Option<Dirty> {
        let dirty = stripe.remove(key)?;
        self.counters.dirty_entries.fetch_sub(1, Ordering::Relaxed);
        self.counters
            .dirty_bytes
            .fetch_sub(dirty.value.len() as u64, Ordering::Relaxed);
        Some(dirty)
    }

    /// Publishes the key's dirty value to L3 at its version; it stays dirty if that fails.
    fn publish_dirty(&self, stripe: &mut Stripe<'_>, key: &CacheKey) -> Result<()> {
        let Some(dirty) = stripe.get(key).cloned() else {
            return Ok(());
        };
        let meta = self.l3.store_file_as(
            key.dataset(),
            key.path(),
            dirty.value.bytes(),
            dirty.value.version(),
        )?;
        if dirty.pinned && !meta.pinned {
            self.l3.pin(key.dataset(), key.path())?;
        }
        lock(&self.refetchable).remove(key);
        self.forget_dirty(stripe, key);
        self.counters.write_backs.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_written_back
            .fetch_add(dirty.value.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Writes L2 victims that are dirty to L3, each under its own stripe (taken after the
    /// evicting key's stripe is released: holding both could deadlock). Until then a victim
    /// stays readable from its stripe map. A failure is logged and counted; the value stays dirty.
    fn write_back_victims(&self, victims: Victims) {
        if self.write_mode == WriteMode::Through {
            return;
        }
        for (key, value, _) in victims {
            let mut stripe = self.stripe(&key);
            // A newer put of the key is in L2 (dirty or not): nothing to write.
            if stripe
                .get(&key)
                .is_none_or(|dirty| dirty.value.version() != value.version())
            {
                continue;
            }
            if let Err(err) = self.publish_dirty(&mut stripe, &key) {
                self.counters
                    .write_back_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(key = %key, error = %err, "write-back to L3 failed; the value stays dirty in memory");
            }
        }
    }

    /// Writes every dirty value, stripe by stripe. (Several threads were tried: on this 2-core
    /// machine they were slower, the BLAKE3 hashing competing for the cores.)
    fn flush(&self) -> Result<()> {
        let mut first_err = None;
        for stripe in self.stripes.iter() {
            let mut stripe = lock(stripe);
            let keys: Vec<CacheKey> = stripe.keys().cloned().collect();
            for key in keys {
                if let Err(err) = self.publish_dirty(&mut stripe, &key) {
                    self.counters
                        .write_back_failures
                        .fetch_add(1, Ordering::Relaxed);
                    first_err.get_or_insert(err);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Puts `value` in L2 unless the key has moved on (a newer put, or a remove) or L2 holds a
    /// newer value. Called with the key's stripe held. `None` when it was not stored; the victims
    /// when it was.
    fn fill_l2(
        &self,
        stripe: &Stripe<'_>,
        key: &CacheKey,
        value: &Value,
    ) -> Result<Option<Victims>> {
        Ok(match self.current(stripe, key)? {
            Some(current) if current.version == value.version() => {
                self.fill_l2_at(key, value, current)
            }
            _ => None,
        })
    }

    /// [`Inner::fill_l2`] when the caller already knows the key's newest version (a put, which
    /// got it from the publish and holds the stripe).
    fn fill_l2_at(&self, key: &CacheKey, value: &Value, current: Current) -> Option<Victims> {
        let l2 = self.l2.as_ref()?;
        let version = value.version();
        match l2.insert_unless(
            key.clone(),
            value.clone(),
            value.len() as u64,
            current.pinned,
            |held| held.version() >= version,
        ) {
            Inserted::Stored { evicted } => Some(evicted),
            Inserted::Refused(_) => None,
        }
    }

    /// Page-locked room for a value of `len` bytes: when L1 is on CUDA, the value is at least
    /// [`PAGE_LOCKED_MIN_BYTES`] and the pool has room now (it grows in the background, never
    /// while a caller waits). `None` means the heap.
    fn page_locked_room(&self, len: usize) -> Option<vbus_gpu::HostBuffer> {
        if len < PAGE_LOCKED_MIN_BYTES {
            return None;
        }
        let l1 = self.l1.as_ref().filter(|l1| l1.page_locked)?;
        l1.device.alloc_host_ready(len as u64)
    }

    /// Room for a value of `len` bytes, to be filled: page-locked where
    /// [`Self::page_locked_room`] gives it, else zeroed heap.
    fn value_bytes(&self, len: usize) -> ValueBytes {
        self.page_locked_room(len)
            .map_or_else(|| ValueBytes::Heap(vec![0; len]), ValueBytes::PageLocked)
    }

    /// A value holding a copy of `bytes` (a put's), placed as [`Self::value_bytes`] places it.
    fn value_from_slice(&self, bytes: &[u8], version: u64) -> Value {
        let bytes = match self.page_locked_room(bytes.len()) {
            Some(mut room) => {
                room.copy_from_slice(bytes);
                ValueBytes::PageLocked(room)
            }
            None => ValueBytes::Heap(bytes.to_vec()),
        };
        Value::from_bytes(bytes, version)
    }

    /// An L1 value copied back to the host (by DMA when it lands in page-locked memory).
    fn download(&self, l1: &L1, on_device: &DeviceValue) -> Result<Value> {
        let mut bytes = self.value_bytes(on_device.buffer.len() as usize);
        l1.device
            .download(&on_device.buffer, 0, bytes.as_mut())
            .map_err(Error::Device)?;
        Ok(Value::from_bytes(bytes, on_device.version))
    }

    /// Copies `value` to the device and keeps it in L1 (unless the key has moved on, or L1 holds
    /// this version or a newer one). L1 victims go back to L2 when L2 lacks them; none is ever
    /// the only copy, as L3 or the dirty values hold every value. Returns the device value, kept
    /// in L1 or not.
    fn fill_l1(&self, key: &CacheKey, value: &Value) -> Result<Arc<DeviceValue>> {
        let l1 = self.l1.as_ref().ok_or(Error::NoL1)?;
        let mut buffer = l1.device.alloc(value.len() as u64).map_err(Error::Device)?;
        l1.device
            .upload(value.bytes(), &mut buffer, 0)
            .map_err(Error::Device)?;
        self.counters
            .promotions_to_l1
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_to_l1
            .fetch_add(value.len() as u64, Ordering::Relaxed);
        let on_device = Arc::new(DeviceValue {
            buffer,
            version: value.version(),
        });
        let victims = {
            let stripe = self.stripe(key);
            let Some(current) = self
                .current(&stripe, key)?
                .filter(|current| current.version == value.version())
            else {
                return Ok(on_device);
            };
            let version = value.version();
            match l1.tier.insert_unless(
                key.clone(),
                Arc::clone(&on_device),
                value.len() as u64,
                current.pinned,
                |held| held.version >= version,
            ) {
                Inserted::Stored { evicted } => evicted,
                Inserted::Refused(_) => Vec::new(),
            }
        };
        // Each victim under its own stripe, after this key's is released (taking both at once
        // could deadlock with a fill of the victim's key).
        for (victim, victim_value, _) in victims {
            let l2_victims = self.demote_from_l1(l1, &victim, &victim_value)?;
            self.write_back_victims(l2_victims);
        }
        Ok(on_device)
    }

    /// Copies an L1 victim into L2 when L2 lacks it and it is still the key's newest version (so
    /// a demotion never brings back a value older than a completed put). Takes the victim's
    /// stripe; returns L2's victims.
    fn demote_from_l1(&self, l1: &L1, key: &CacheKey, on_device: &DeviceValue) -> Result<Victims> {
        let Some(l2) = &self.l2 else {
            return Ok(Vec::new());
        };
        if l2.contains(key) || on_device.buffer.len() > l2.capacity_bytes() {
            return Ok(Vec::new());
        }
        let stripe = self.stripe(key);
        let Some(current) = self
            .current(&stripe, key)?
            .filter(|current| current.version == on_device.version)
        else {
            return Ok(Vec::new());
        };
        let value = self.download(l1, on_device)?;
        let Some(victims) = self.fill_l2_at(key, &value, current) else {
            return Ok(Vec::new());
        };
        self.counters
            .demotions_from_l1
            .fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_from_l1
            .fetch_add(value.len() as u64, Ordering::Relaxed);
        Ok(victims)
    }

    /// Loads `key` from the dirty values, L3 or the source, once for all concurrent callers.
    fn load(&self, key: &CacheKey) -> Result<Option<Value>> {
        for _ in 0..SHARED_LOAD_ATTEMPTS_MAX {
            let (load, leader) = {
                let mut loads = lock(&self.loads);
                match loads.get(key) {
                    Some(load) => (Arc::clone(load), false),
                    None => {
                        let load = Arc::new(Load::default());
                        loads.insert(key.clone(), Arc::clone(&load));
                        (load, true)
                    }
                }
            };
            if leader {
                let result = self.load_uncached(key);
                *lock(&load.outcome) = Some(
                    result
                        .as_ref()
                        .map(Clone::clone)
                        .map_err(ToString::to_string),
                );
                load.done.notify_all();
                lock(&self.loads).remove(key);
                return result;
            }
            let shared = {
                let mut outcome = lock(&load.outcome);
                while outcome.is_none() {
                    outcome = load.done.wait(outcome).unwrap_or_else(|p| p.into_inner());
                }
                outcome.clone().expect("checked")
            };
            let shared = shared.map_err(|message| Error::SharedLoad {
                dataset: key.dataset().to_owned(),
                path: key.path().to_owned(),
                message,
            })?;
            // The load may have read L3 before this get began: use its outcome only if it still
            // describes the key, else load again (a get never answers older than what preceded
            // it).
            let current = {
                let stripe = self.stripe(key);
                self.current(&stripe, key)?
            };
            let still_current = match (&shared, current) {
                (Some(value), Some(current)) => value.version() == current.version,
                (None, None) => true,
                _ => false,
            };
            if still_current {
                return Ok(shared);
            }
        }
        self.load_uncached(key)
    }

    fn load_uncached(&self, key: &CacheKey) -> Result<Option<Value>> {
        // A dirty value L2 evicted and a write-back has not finished with.
        if let Some(dirty) = self.stripe(key).get(key) {
            return Ok(Some(dirty.value.clone()));
        }
        let from_l3 = match self
            .l3
            .get_file_into(key.dataset(), key.path(), |len| self.value_bytes(len))
        {
            // The file failed its checksum and was quarantined: a source has a good copy.
            Err(err @ vbus_store::Error::ChecksumMismatch { .. }) if self.source.is_some() => {
                tracing::warn!(key = %key, error = %err, "L3's copy is damaged; fetching it again");
                None
            }
            found => found?,
        };
        if let Some((bytes, meta)) = from_l3 {
            self.counters.l3_hits.fetch_add(1, Ordering::Relaxed);
            let value = Value::from_bytes(bytes, meta.version);
            let victims = {
                let stripe = self.stripe(key);
                self.fill_l2(&stripe, key, &value)?
            };
            if let Some(victims) = victims {
                self.counters.promotions.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes_l3_to_l2
                    .fetch_add(value.len() as u64, Ordering::Relaxed);
                self.write_back_victims(victims);
            }
            return Ok(Some(value));
        }
        self.counters.l3_misses.fetch_add(1, Ordering::Relaxed);
        let Some(source) = &self.source else {
            return Ok(None);
        };
        let fetched = source.fetch(key).map_err(|err| Error::Source {
            source_name: source.name().to_owned(),
            dataset: key.dataset().to_owned(),
            path: key.path().to_owned(),
            source: err,
        })?;
        let Some(bytes) = fetched else {
            return Ok(None);
        };
        self.counters.source_fetches.fetch_add(1, Ordering::Relaxed);
        let (value, victims) = {
            let stripe = self.stripe(key);
            // A put that landed meanwhile wins: keep its value.
            if let Some(dirty) = stripe.get(key) {
                return Ok(Some(dirty.value.clone()));
            }
            if self.l3.has_file_by_path(key.dataset(), key.path()) {
                drop(stripe);
                return Ok(self
                    .l3
                    .get_file_into(key.dataset(), key.path(), |len| self.value_bytes(len))?
                    .map(|(bytes, meta)| Value::from_bytes(bytes, meta.version)));
            }
            let meta = self.l3.store_file(key.dataset(), key.path(), &bytes)?;
            lock(&self.refetchable).insert(key.clone());
            let value = Value::new(bytes, meta.version);
            let victims = self.fill_l2(&stripe, key, &value)?;
            (value, victims)
        };
        self.write_back_victims(victims.unwrap_or_default());
        Ok(Some(value))
    }
}

impl Drop for Inner {
    /// Dirty values reach L3 when the last handle goes.
    fn drop(&mut self) {
        if let Err(err) = self.flush() {
            tracing::error!(error = %err, "write-back at close failed; dirty values were lost");
        }
    }
}

/// Loads prefetched keys until the cache is dropped.
fn prefetch_worker(inner: Weak<Inner>, requests: mpsc::Receiver<CacheKey>) {
    while let Ok(key) = requests.recv() {
        let Some(inner) = inner.upgrade() else { return };
        let cached = inner.l2.as_ref().is_some_and(|l2| l2.contains(&key));
        if !cached && let Err(err) = inner.load(&key) {
            tracing::debug!(key = %key, error = %err, "prefetch failed");
        }
    }
}
