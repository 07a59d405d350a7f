//! `CacheManager`: the seed's `put`, `get` and `get_stats` over the tiers.
//!
//! This first version is write-through: a `put` is durable in L3 (the `vbus-store` file store)
//! before it is acknowledged, then kept in L2 (the memory tier). A `get` tries L2, then L1 (copying
//! back from the device), then L3 (promoting into L2), then the [`Source`] (storing the value in L3
//! and L2). `get_device` hands out the L1 buffer itself, copying the value to the device on a miss;
//! L1 victims go back to L2 when it lacks them. Concurrent gets of one missing key load it once.
//! Write-back is not wired yet.
//!
//! Nothing is dropped while it is the only copy: every value in L2 is also in L3, so L2 may
//! evict freely; L3 evicts only values it loaded from the source (which can fetch them again),
//! never a put's value, never a pinned one.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak, mpsc};

use vbus_store::{EvictionHook, FileStore};

use crate::memory::{Inserted, MemoryTier, TierStats};
use crate::policy::PolicyKind;
use crate::{CacheKey, Error, Result, Source, Value};

/// Key stripes serialising puts, removes and the L2 half of loads of one key.
const N_STRIPES: usize = 64;
/// Times a get waits on other gets' loads of its key before loading on its own.
const SHARED_LOAD_ATTEMPTS_MAX: usize = 4;
/// Prefetch requests waiting at most; more are dropped (and counted).
const PREFETCH_QUEUE_MAX: usize = 1024;

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
    source: Option<Arc<dyn Source>>,
}

impl std::fmt::Debug for CacheBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("l2_capacity_bytes", &self.l2_capacity_bytes)
            .field("l2_policy", &self.l2_policy)
            .field("l3_dir", &self.l3_dir)
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

    /// Where a miss in every tier goes. Default none (a miss is a miss).
    pub fn source(mut self, source: Arc<dyn Source>) -> Self {
        self.source = Some(source);
        self
    }

    /// Opens L3 (reconciling it with its directory) and starts the prefetch worker.
    pub fn build(self) -> Result<CacheManager> {
        let l3_dir = self.l3_dir.ok_or(Error::NoL3Dir)?;
        let refetchable = Arc::new(Mutex::new(HashSet::new()));
        let l3 = FileStore::builder(&l3_dir)
            .capacity_bytes(self.l3_capacity_bytes)
            .open()?;
        l3.set_eviction_hook(Arc::new(RefetchableOnly {
            refetchable: Arc::clone(&refetchable),
        }));
        let l1 = self
            .l1_device
            .filter(|_| self.l1_capacity_bytes > 0)
            .map(|device| L1 {
                tier: MemoryTier::new(self.l1_policy, self.l1_capacity_bytes, 1),
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
            stripes: (0..N_STRIPES).map(|_| Mutex::new(())).collect(),
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
}

/// One load in flight: the first get does it, the others wait for its outcome.
#[derive(Default)]
struct Load {
    outcome: Mutex<Option<Result<Option<Value>, String>>>,
    done: Condvar,
}

struct Inner {
    l1: Option<L1>,
    l2: Option<MemoryTier<CacheKey, Value>>,
    l3: FileStore,
    source: Option<Arc<dyn Source>>,
    refetchable: Arc<Mutex<HashSet<CacheKey>>>,
    loads: Mutex<HashMap<CacheKey, Arc<Load>>>,
    stripes: Box<[Mutex<()>]>,
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
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        CacheBuilder {
            l1_device: None,
            l1_capacity_bytes: 1 << 30,
            l1_policy: PolicyKind::Lru,
            l2_capacity_bytes: 1 << 30,
            l2_policy: PolicyKind::Lru,
            l2_shards: 4 * cores,
            l3_dir: None,
            l3_capacity_bytes: u64::MAX,
            source: None,
        }
    }

    /// Stores `bytes` under `key`: durable in L3 when this returns, and kept in L2 when it fits.
    /// Returns the new value (its version rises with every put of the key).
    pub fn put(&self, key: impl Into<CacheKey>, bytes: &[u8]) -> Result<Value> {
        let key = key.into();
        // The whole put holds the key's stripe: the memory tiers drop their copies before L3
        // moves on, and every fill checks L3 under the same stripe, so L1 and L2 only ever hold
        // L3's current version and no reader sees a new value and then an old one.
        let _stripe = self.inner.stripe(&key);
        if let Some(l1) = &self.inner.l1 {
            l1.tier.remove(&key);
        }
        if let Some(l2) = &self.inner.l2 {
            l2.remove(&key);
        }
        let meta = self.inner.l3.store_file(key.dataset(), key.path(), bytes)?;
        // A put's value has no other copy: L3 must never evict it.
        lock(&self.inner.refetchable).remove(&key);
        let value = Value::new(bytes.to_vec(), meta.version);
        self.inner.fill_l2_at(&key, &value, &meta);
        Ok(value)
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
            let mut bytes = vec![0u8; on_device.buffer.len() as usize];
            l1.device
                .download(&on_device.buffer, 0, &mut bytes)
                .map_err(Error::Device)?;
            self.inner
                .counters
                .bytes_from_l1
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
            let value = Value::new(bytes, on_device.version);
            let _stripe = self.inner.stripe(&key);
            self.inner.fill_l2(&key, &value);
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

    /// True when L2 or L3 holds `key` (the source is not asked).
    pub fn contains(&self, key: impl Into<CacheKey>) -> bool {
        let key = key.into();
        self.inner.l2.as_ref().is_some_and(|l2| l2.contains(&key))
            || self.inner.l3.has_file_by_path(key.dataset(), key.path())
    }

    /// Removes `key` from every tier; returns whether any held it.
    pub fn remove(&self, key: impl Into<CacheKey>) -> Result<bool> {
        let key = key.into();
        let _stripe = self.inner.stripe(&key);
        let in_l1 = self
            .inner
            .l1
            .as_ref()
            .and_then(|l1| l1.tier.remove(&key))
            .is_some();
        let in_l2 = self
            .inner
            .l2
            .as_ref()
            .and_then(|l2| l2.remove(&key))
            .is_some();
        let in_l3 = self.inner.l3.remove(key.dataset(), key.path())?;
        lock(&self.inner.refetchable).remove(&key);
        Ok(in_l1 || in_l2 || in_l3)
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
        let _stripe = self.inner.stripe(&key);
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
        Ok(in_l1 || in_l2 || in_l3)
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
            l1_hit_rate: l1.hit_rate_percent(),
            l2_hit_rate: l2.hit_rate_percent(),
            l3_hit_rate: l3.hit_rate_percent(),
        }
    }

    /// The L3 store underneath (for the daemon's listing and streaming of large values).
    pub fn store(&self) -> &FileStore {
        &self.inner.l3
    }
}

impl Inner {
    fn stripe(&self, key: &CacheKey) -> MutexGuard<'_, ()> {
        let hash = foldhash::fast::FixedState::default().hash_one(key);
        lock(&self.stripes[hash as usize % self.stripes.len()])
    }

    /// Puts `value` in L2 unless L3 has moved on (a newer put, or a remove) or L2 holds a newer
    /// value. Called with the key's stripe held.
    fn fill_l2(&self, key: &CacheKey, value: &Value) -> bool {
        match self.l3.meta(key.dataset(), key.path()).ok().flatten() {
            Some(current) if current.version == value.version() => {
                self.fill_l2_at(key, value, &current)
            }
            _ => false,
        }
    }

    /// [`Inner::fill_l2`] when the caller already holds L3's current metadata (a put, which got
    /// it from the publish and holds the stripe).
    fn fill_l2_at(&self, key: &CacheKey, value: &Value, current: &vbus_store::FileMeta) -> bool {
        let Some(l2) = &self.l2 else { return false };
        // Victims need no demotion: every value in L2 is also in L3. Pins live in L3.
        let version = value.version();
        match l2.insert_unless(
            key.clone(),
            value.clone(),
            value.len() as u64,
            current.pinned,
            |held| held.version() >= version,
        ) {
            Inserted::Stored { .. } => true,
            Inserted::Refused(_) => false,
        }
    }

    /// True while L3 holds `version` of `key`. Puts keep L1 in step with L3 under the key's
    /// stripe; this check on L1 hits is a second line of defence, cheap beside a device copy.
    fn is_current(&self, key: &CacheKey, version: u64) -> Result<bool> {
        Ok(self
            .l3
            .meta(key.dataset(), key.path())?
            .is_some_and(|meta| meta.version == version))
    }

    /// Copies `value` to the device and keeps it in L1 (unless L3 has moved on, or L1 holds this
    /// version or a newer one). L1 victims go back to L2 when L2 lacks them; none is ever the
    /// only copy, as L3 holds every value. Returns the device value, kept in L1 or not.
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
            let _stripe = self.stripe(key);
            let current = self.l3.meta(key.dataset(), key.path())?;
            let Some(current) = current.filter(|meta| meta.version == value.version()) else {
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
            self.demote_from_l1(l1, &victim, &victim_value)?;
        }
        Ok(on_device)
    }

    /// Copies an L1 victim into L2 when L2 lacks it and L3 still holds its version (so a demotion
    /// never brings back a value older than a completed put). Takes the victim's stripe.
    fn demote_from_l1(&self, l1: &L1, key: &CacheKey, on_device: &DeviceValue) -> Result<()> {
        let Some(l2) = &self.l2 else { return Ok(()) };
        if l2.contains(key) || on_device.buffer.len() > l2.capacity_bytes() {
            return Ok(());
        }
        let _stripe = self.stripe(key);
        let current = self.l3.meta(key.dataset(), key.path())?;
        let Some(current) = current.filter(|meta| meta.version == on_device.version) else {
            return Ok(());
        };
        let mut bytes = vec![0u8; on_device.buffer.len() as usize];
        l1.device
            .download(&on_device.buffer, 0, &mut bytes)
            .map_err(Error::Device)?;
        let value = Value::new(bytes, on_device.version);
        let (version, size_bytes) = (value.version(), value.len() as u64);
        if let Inserted::Stored { .. } =
            l2.insert_unless(key.clone(), value, size_bytes, current.pinned, |held| {
                held.version() >= version
            })
        {
            self.counters
                .demotions_from_l1
                .fetch_add(1, Ordering::Relaxed);
            self.counters
                .bytes_from_l1
                .fetch_add(size_bytes, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Loads `key` from L3 or the source, once for all concurrent callers.
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
            // describes L3, else load again (a get never answers older than what preceded it).
            let still_current = match &shared {
                Some(value) => self.is_current(key, value.version())?,
                None => !self.l3.has_file_by_path(key.dataset(), key.path()),
            };
            if still_current {
                return Ok(shared);
            }
        }
        self.load_uncached(key)
    }

    fn load_uncached(&self, key: &CacheKey) -> Result<Option<Value>> {
        if let Some((bytes, meta)) = self.l3.get_file_with_meta(key.dataset(), key.path())? {
            self.counters.l3_hits.fetch_add(1, Ordering::Relaxed);
            let value = Value::new(bytes, meta.version);
            let _stripe = self.stripe(key);
            if self.fill_l2(key, &value) {
                self.counters.promotions.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .bytes_l3_to_l2
                    .fetch_add(value.len() as u64, Ordering::Relaxed);
            }
            return Ok(Some(value));
        }
        self.counters.l3_misses.fetch_add(1, Ordering::Relaxed);
        let Some(source) = &self.source else {
            return Ok(None);
        };
        let fetched = source.fetch(key).map_err(|message| Error::Source {
            source_name: source.name().to_owned(),
            dataset: key.dataset().to_owned(),
            path: key.path().to_owned(),
            message,
        })?;
        let Some(bytes) = fetched else {
            return Ok(None);
        };
        self.counters.source_fetches.fetch_add(1, Ordering::Relaxed);
        let _stripe = self.stripe(key);
        // A put that landed meanwhile wins: keep its value.
        if self.l3.has_file_by_path(key.dataset(), key.path()) {
            drop(_stripe);
            return Ok(self
                .l3
                .get_file_with_meta(key.dataset(), key.path())?
                .map(|(bytes, meta)| Value::new(bytes, meta.version)));
        }
        let meta = self.l3.store_file(key.dataset(), key.path(), &bytes)?;
        lock(&self.refetchable).insert(key.clone());
        let value = Value::new(bytes, meta.version);
        self.fill_l2(key, &value);
        Ok(Some(value))
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
