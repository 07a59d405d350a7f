//! The tiers the daemon runs, built from the configuration: L1 on the device `gpu.backend` picks,
//! L2 in RAM (its large values page-locked on a CUDA device), L3 at `CACHE/L3_DISK`, under one
//! `CacheManager`.

use anyhow::Context as _;
use vbus_cache::{CacheManager, PolicyKind, WriteMode as CacheWriteMode};
use vbus_gpu::{BackendChoice, BackendKind, Device, DeviceOptions};

use crate::config::{Config, Durability, EvictionPolicy, GpuBackend, VerifyReads, WriteMode};
use crate::home::Home;

/// Page-locked host memory beyond L2's capacity: for values that left L2 while a client still
/// holds them, and host reads of L1 values when L2 is off. (The copy engine's staging slots have
/// their own pool.)
const HOST_POOL_HEADROOM_BYTES: u64 = 256 << 20;

/// The cache a daemon serves, and where its L1 runs.
#[derive(Debug, Clone)]
pub struct Tiers {
    /// The tiered cache.
    pub cache: CacheManager,
    /// Where L1 runs; `None` when `L1_VRAM` is disabled.
    pub l1_backend: Option<BackendKind>,
    /// The device L1 runs on (the state bus keeps its GPU pages there too).
    pub device: Option<Device>,
}

/// The configuration's policy name as the cache knows it.
pub fn policy_kind(policy: EvictionPolicy) -> PolicyKind {
    match policy {
        EvictionPolicy::Lru => PolicyKind::Lru,
        EvictionPolicy::S3fifo => PolicyKind::S3Fifo,
        EvictionPolicy::Sieve => PolicyKind::Sieve,
    }
}

/// Opens the tiers of `config` at `home`. L3 is required by this version of the cache.
pub fn open(
    home: &Home,
    config: &Config,
    source: Option<std::sync::Arc<dyn vbus_cache::Source>>,
) -> anyhow::Result<Tiers> {
    let hierarchy = &config.cache_hierarchy;
    anyhow::ensure!(
        hierarchy.l3_disk.enabled,
        "config key `cache_hierarchy.L3_DISK.enabled` is false, but this version of the cache keeps \
         every value in L3; set it to true"
    );
    let l2_capacity_bytes = if hierarchy.l2_ram.enabled {
        hierarchy.l2_ram.capacity_bytes()
    } else {
        0
    };
    let mut builder = CacheManager::builder()
        .l3_dir(home.l3_dir())
        .l3_capacity_bytes(hierarchy.l3_disk.capacity_bytes())
        .l2_capacity_bytes(l2_capacity_bytes)
        .l2_policy(policy_kind(hierarchy.l2_ram.eviction_policy))
        .write_mode(match hierarchy.write_mode {
            WriteMode::WriteThrough => CacheWriteMode::Through,
            WriteMode::WriteBack => CacheWriteMode::Back,
        })
        .l3_verify(match hierarchy.verify_reads {
            VerifyReads::EveryRead => vbus_store::Verify::EveryRead,
            VerifyReads::FirstRead => vbus_store::Verify::FirstRead,
        })
        // In a cluster only writes ordered by the coherence directory make versions: a file
        // changed on disk while the daemon was down is quarantined, not a second truth.
        .l3_on_change(if config.bus_config.tracker.is_empty() {
            vbus_store::OnChange::Adopt
        } else {
            vbus_store::OnChange::Quarantine
        });
    if let Some(source) = source {
        builder = builder.source(source);
    }
    let mut l1_backend = None;
    let mut l1_device = None;
    if hierarchy.l1_vram.enabled {
        let backend = match config.gpu.backend {
            GpuBackend::Auto => BackendChoice::Auto,
            GpuBackend::Cuda => BackendChoice::Cuda,
            GpuBackend::Simulated => BackendChoice::Simulated,
        };
        let device = Device::open(&DeviceOptions {
            backend,
            device_idx: config.gpu.device_index as usize,
            capacity_bytes: hierarchy.l1_vram.capacity_bytes(),
            reserve_bytes: config.gpu.reserve_mb * (1 << 20),
            // L2's large values live in page-locked memory on a CUDA device; the pool grows in
            // chunks as they arrive.
            host_capacity_bytes: l2_capacity_bytes + HOST_POOL_HEADROOM_BYTES,
            ..DeviceOptions::default()
        })
        .with_context(|| {
            format!(
                "cannot open GPU {} for L1 (config key `gpu.backend`)",
                config.gpu.device_index
            )
        })?;
        l1_backend = Some(device.kind());
        l1_device = Some(device.clone());
        builder = builder
            .l1_device(device)
            .l1_capacity_bytes(hierarchy.l1_vram.capacity_bytes())
            .l1_policy(policy_kind(hierarchy.l1_vram.eviction_policy));
    }
    let cache = builder
        .build()
        .with_context(|| format!("cannot open the cache at {}", home.l3_dir().display()))?;
    Ok(Tiers {
        cache,
        l1_backend,
        device: l1_device,
    })
}

/// Opens the state bus of `config` at `DATA/TLOG` and `DATA/CHECKPOINTS` (replaying the log
/// after the newest checkpoint); `None` when `state.enabled` is false.
pub fn open_state(
    home: &Home,
    config: &Config,
    device: Option<&Device>,
) -> anyhow::Result<Option<vbus_state::StateBus>> {
    let state = &config.state;
    if !state.enabled {
        return Ok(None);
    }
    let data = home.root().join("DATA");
    let mut builder = vbus_state::StateBus::builder(&data)
        .log_dir(data.join("TLOG"))
        .checkpoint_dir(data.join("CHECKPOINTS"))
        .durability(match state.durability {
            Durability::Async => vbus_state::Durability::Async,
            Durability::Buffered => vbus_state::Durability::Buffered,
            Durability::Fdatasync => vbus_state::Durability::Fdatasync,
            Durability::Fsync => vbus_state::Durability::Fsync,
        })
        .segment_bytes(state.segment_size_mb << 20)
        .checkpoints_retained(state.checkpoints_retained as usize)
        .page_bytes_max(state.pages_max_mb.saturating_mul(1 << 20))
        .checkpoint_bytes_max(state.checkpoints_max_mb.saturating_mul(1 << 20));
    if let Some(device) = device {
        builder = builder.device(device.clone());
    }
    let bus = builder
        .open()
        .with_context(|| format!("cannot open the state bus at {}", data.display()))?;
    Ok(Some(bus))
}
