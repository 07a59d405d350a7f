//! [`CacheBuilder`]: the tiers' sizes, policies, L3 directory and source, then `build`.

use super::*;

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

    /// L2's eviction policy. Default [`PolicyKind::Lru`].
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
        self.refetchable
            .lock()
            .contains(&CacheKey::new(dataset, path))
    }
}
