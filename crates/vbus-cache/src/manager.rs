//! `CacheManager`: `put`, `get` and `get_stats` over the tiers.
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
use std::sync::{Arc, Weak, mpsc};

use parking_lot::{Condvar, Mutex, MutexGuard};

use vbus_store::{EvictionHook, FileStore};

use crate::key::ValueBytes;
use crate::memory::{Inserted, MemoryTier, TierStats};
use crate::policy::PolicyKind;
use crate::{CacheKey, Error, Result, Source, Value};

/// Key stripes serialising puts, removes and the L2 half of loads of one key.
mod builder;
mod fill;
mod load;
mod stats;
mod write_back;

pub use builder::CacheBuilder;
use load::prefetch_worker;
pub use stats::CacheStats;
use stats::Counters;

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

/// A value in device memory: the buffer, the version it holds. Shared: a handle stays valid after
/// the value leaves L1 or a newer put replaces it.
#[derive(Debug)]
pub struct DeviceValue {
    buffer: vbus_gpu::DeviceBuffer,
    version: u64,
    kind: u8,
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

    /// The kind of the value it holds ([`Value::kind`]).
    pub fn kind(&self) -> u8 {
        self.kind
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

impl CacheManager {
    /// Stores `bytes` under `key`. Write-through: durable in L3 when this returns, and kept in L2
    /// when it fits. Write-back: kept in L2 as dirty (or written through when it cannot be).
    /// Returns the new value (its version rises with every put of the key).
    pub fn put(&self, key: impl Into<CacheKey>, bytes: &[u8]) -> Result<Value> {
        self.put_kind(key, bytes, 0)
    }

    /// [`CacheManager::put`] recording `kind` with the value (in L3's index, and on the value
    /// every tier hands out: [`Value::kind`]).
    pub fn put_kind(&self, key: impl Into<CacheKey>, bytes: &[u8], kind: u8) -> Result<Value> {
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
                WriteMode::Back => self.inner.put_dirty(&mut stripe, &key, bytes, kind)?,
                WriteMode::Through => None,
            };
            match written_back {
                Some(put) => put,
                None => self.inner.put_through(&mut stripe, &key, bytes, kind)?,
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
        self.put_device_kind(key, bytes, 0)
    }

    /// [`CacheManager::put_device`] recording `kind` ([`CacheManager::put_kind`]).
    pub fn put_device_kind(
        &self,
        key: impl Into<CacheKey>,
        bytes: &[u8],
        kind: u8,
    ) -> Result<Arc<DeviceValue>> {
        let key = key.into();
        let value = self.put_kind(key.clone(), bytes, kind)?;
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
        self.inner.refetchable.lock().remove(&key);
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
        self.inner.refetchable.lock().remove(&key);
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
            for (key, dirty) in stripe.lock().iter() {
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
