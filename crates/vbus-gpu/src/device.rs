//! `Device`: one GPU (or the simulated device), its VRAM pool and its page-locked host pool.

use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::copy::{STAGING_CHUNK_BYTES, STAGING_POOL_BYTES, Staging};
use crate::cuda::CudaContext;
use crate::pool::{Allocation, CudaDeviceSource, CudaHostSource, HeapSource, Pool, PoolStats};
use crate::{Error, Result, driver_present};

/// Which backend a [`Device`] should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// CUDA when a driver and the device exist, else the simulated device.
    #[default]
    Auto,
    /// CUDA; opening fails without it.
    Cuda,
    /// Host memory behind the same API and accounting.
    Simulated,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;

    /// `auto`, `cuda` or `simulated`, as the configuration's `gpu.backend` spells them.
    fn from_str(name: &str) -> std::result::Result<Self, String> {
        match name {
            "auto" => Ok(Self::Auto),
            "cuda" => Ok(Self::Cuda),
            "simulated" => Ok(Self::Simulated),
            other => Err(format!(
                "unknown GPU backend {other:?}: use auto, cuda or simulated"
            )),
        }
    }
}

impl BackendChoice {
    /// The variable naming the backend VBUS's test suites run their device tests on.
    pub const TEST_ENV: &'static str = "VBUS_GPU_TEST_BACKEND";

    /// The backend [`Self::TEST_ENV`] names: `simulated` when unset, `cuda` for the fake driver
    /// (through `LD_LIBRARY_PATH`, as `scripts/test.sh` runs it) or a real GPU; an error naming
    /// the variable for anything else.
    pub fn from_test_env() -> std::result::Result<Self, String> {
        std::env::var(Self::TEST_ENV).map_or(Ok(Self::Simulated), |name| {
            name.parse()
                .map_err(|error| format!("{}: {error}", Self::TEST_ENV))
        })
    }
}

/// Which backend a [`Device`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// A CUDA device through the driver.
    Cuda,
    /// The simulated device.
    Simulated,
}

impl BackendKind {
    /// `cuda` or `simulated`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cuda => "cuda",
            Self::Simulated => "simulated",
        }
    }
}

/// How to open a [`Device`]. Plain fields; each says its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceOptions {
    /// Default [`BackendChoice::Auto`].
    pub backend: BackendChoice,
    /// The CUDA ordinal. Default 0.
    pub device_idx: usize,
    /// The most VRAM the pool takes (L1's `max_size_mb`). Default 1 GiB.
    pub capacity_bytes: u64,
    /// VRAM left free for other programs (CUDA only). Default 1 GiB.
    pub reserve_bytes: u64,
    /// The most page-locked host memory the host pool takes. Default 1 GiB.
    pub host_capacity_bytes: u64,
    /// Size of the chunks the pools take from the driver. Default 256 MiB.
    pub chunk_bytes: u64,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            backend: BackendChoice::Auto,
            device_idx: 0,
            capacity_bytes: 1 << 30,
            reserve_bytes: 1 << 30,
            host_capacity_bytes: 1 << 30,
            chunk_bytes: 256 << 20,
        }
    }
}

/// Figures of a device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DeviceStats {
    /// Where it runs.
    pub backend: BackendKind,
    /// The VRAM pool.
    pub vram: PoolStats,
    /// The page-locked host pool (heap memory on the simulated device).
    pub host: PoolStats,
    /// The copy engine's own page-locked slots (pageable copies and file loads), outside the host
    /// pool's capacity, so a full host pool never stops a copy.
    pub staging: PoolStats,
}

pub(crate) enum Backend {
    Cuda(Arc<CudaContext>),
    Simulated,
}

pub(crate) struct DeviceInner {
    pub id: u64,
    pub backend: Backend,
    pub vram: Pool,
    pub host: Pool,
    /// Where the staging ring's and the file loads' slots come from: at most
    /// [`crate::copy::STAGING_POOL_BYTES`], apart from the host pool.
    pub staging_pool: Pool,
    pub staging: Mutex<Staging>,
    /// Held by a file load: one at a time keeps the staging pool's bound.
    pub file_load: Mutex<()>,
    /// True while a background thread adds a chunk to the host pool.
    pub host_growing: AtomicBool,
}

/// One GPU, or the simulated device. Cheap to clone.
#[derive(Clone)]
pub struct Device {
    pub(crate) inner: Arc<DeviceInner>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("backend", &self.kind())
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Opens the device the options choose.
    pub fn open(options: &DeviceOptions) -> Result<Self> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let use_cuda = match options.backend {
            BackendChoice::Simulated => false,
            BackendChoice::Cuda => {
                if !driver_present() {
                    return Err(Error::NoDriver);
                }
                true
            }
            BackendChoice::Auto => {
                driver_present() && crate::discover().devices.len() > options.device_idx
            }
        };
        let (backend, vram, host, staging_pool) = if use_cuda {
            let context = CudaContext::get(options.device_idx)?;
            let vram = Pool::new(
                "VRAM",
                Box::new(CudaDeviceSource {
                    context: Arc::clone(&context),
                    reserve_bytes: options.reserve_bytes,
                }),
                options.capacity_bytes,
                options.chunk_bytes,
            );
            let host = Pool::new(
                "page-locked host memory",
                Box::new(CudaHostSource {
                    context: Arc::clone(&context),
                }),
                options.host_capacity_bytes,
                options.chunk_bytes,
            );
            let staging_pool = Pool::new(
                "page-locked staging memory",
                Box::new(CudaHostSource {
                    context: Arc::clone(&context),
                }),
                STAGING_POOL_BYTES,
                STAGING_CHUNK_BYTES,
            );
            (Backend::Cuda(context), vram, host, staging_pool)
        } else {
            let vram = Pool::new(
                "VRAM (simulated)",
                Box::new(HeapSource::new(options.capacity_bytes)),
                options.capacity_bytes,
                options.chunk_bytes,
            );
            let host = Pool::new(
                "host memory",
                Box::new(HeapSource::new(options.host_capacity_bytes)),
                options.host_capacity_bytes,
                options.chunk_bytes,
            );
            let staging_pool = Pool::new(
                "staging memory",
                Box::new(HeapSource::new(STAGING_POOL_BYTES)),
                STAGING_POOL_BYTES,
                STAGING_CHUNK_BYTES,
            );
            (Backend::Simulated, vram, host, staging_pool)
        };
        let inner = DeviceInner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            backend,
            vram,
            host,
            staging_pool,
            staging: Mutex::new(Staging::default()),
            file_load: Mutex::new(()),
            host_growing: AtomicBool::new(false),
        };
        let device = Self {
            inner: Arc::new(inner),
        };
        tracing::info!(
            backend = device.kind().as_str(),
            capacity_bytes = options.capacity_bytes,
            "device opened"
        );
        Ok(device)
    }

    /// Where this device runs.
    pub fn kind(&self) -> BackendKind {
        match self.inner.backend {
            Backend::Cuda(_) => BackendKind::Cuda,
            Backend::Simulated => BackendKind::Simulated,
        }
    }

    /// `len` bytes of device memory from the pool. Their contents are unspecified until written.
    pub fn alloc(&self, len: u64) -> Result<DeviceBuffer> {
        let allocation = self.inner.vram.alloc(len)?;
        Ok(DeviceBuffer {
            device: Arc::clone(&self.inner),
            allocation,
        })
    }

    /// `len` bytes of page-locked host memory (plain heap memory on the simulated device), zeroed
    /// the first time the pool hands them out.
    pub fn alloc_host(&self, len: u64) -> Result<HostBuffer> {
        let allocation = self.inner.host.alloc(len)?;
        Ok(HostBuffer {
            device: Arc::clone(&self.inner),
            allocation,
        })
    }

    /// Page-locked host memory from what the host pool holds now, or `None` at once: this never
    /// waits for the driver, whose page-locked chunks are slow to make (a 256 MiB one took about
    /// 170 ms on the lent H100, 1 GiB about 720 ms). When the pool runs short (less than half a
    /// chunk free, or no room for `len`), a background thread adds a chunk for later callers.
    pub fn alloc_host_ready(&self, len: u64) -> Option<HostBuffer> {
        let (allocation, grow) = self.inner.host.alloc_from_chunks(len);
        if grow {
            self.grow_host_in_background(if allocation.is_none() { len } else { 0 });
        }
        allocation.map(|allocation| HostBuffer {
            device: Arc::clone(&self.inner),
            allocation,
        })
    }

    /// Adds chunks to the host pool, waiting for the driver, until `free_bytes` are free in it or
    /// its capacity is reached; for callers that want [`Self::alloc_host_ready`] to find room
    /// from the start.
    pub fn grow_host_pool(&self, free_bytes: u64) -> Result<()> {
        loop {
            let free = self.inner.host.free_in_chunks();
            if free >= free_bytes || !self.inner.host.add_chunk(1)? {
                return Ok(());
            }
        }
    }

    /// Starts one thread (unless one is at work) that adds a chunk of at least `min_bytes` to the
    /// host pool.
    fn grow_host_in_background(&self, min_bytes: u64) {
        if self.inner.host_growing.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = Arc::clone(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("vbus-host-pool".to_owned())
            .spawn(move || {
                if let Err(err) = inner.host.add_chunk(min_bytes) {
                    tracing::warn!(error = %err, "cannot grow the page-locked host pool");
                }
                inner.host_growing.store(false, Ordering::Release);
            });
        if spawned.is_err() {
            self.inner.host_growing.store(false, Ordering::Release);
        }
    }

    /// Gives empty pool chunks back to the driver; returns the bytes released.
    pub fn trim(&self) -> u64 {
        self.inner.vram.trim() + self.inner.host.trim() + self.inner.staging_pool.trim()
    }

    /// Pool figures.
    pub fn stats(&self) -> DeviceStats {
        DeviceStats {
            backend: self.kind(),
            vram: self.inner.vram.stats(),
            host: self.inner.host.stats(),
            staging: self.inner.staging_pool.stats(),
        }
    }

    pub(crate) fn check_own(&self, device: &Arc<DeviceInner>) -> Result<()> {
        if device.id == self.inner.id {
            Ok(())
        } else {
            Err(Error::ForeignBuffer)
        }
    }
}

/// Device memory from the pool, returned to it on drop. On the simulated device it is host
/// memory that only copies touch.
pub struct DeviceBuffer {
    pub(crate) device: Arc<DeviceInner>,
    pub(crate) allocation: Allocation,
}

impl std::fmt::Debug for DeviceBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer")
            .field("len", &self.allocation.len)
            .finish_non_exhaustive()
    }
}

impl DeviceBuffer {
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.allocation.len
    }

    /// True for a zero-length buffer.
    pub fn is_empty(&self) -> bool {
        self.allocation.len == 0
    }

    /// The raw device pointer (a `CUdeviceptr`), for interop with other CUDA code; `None` on the
    /// simulated device. Valid while the buffer lives.
    pub fn device_ptr(&self) -> Option<u64> {
        match self.device.backend {
            Backend::Cuda(_) => Some(self.allocation.address),
            Backend::Simulated => None,
        }
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // Copies are complete when the call that queued them returns, so nothing pending uses
        // the range.
        self.device.vram.free(self.allocation);
    }
}

/// Page-locked host memory (heap memory on the simulated device), readable and writable as a
/// byte slice; copies between it and the device skip the staging ring.
pub struct HostBuffer {
    pub(crate) device: Arc<DeviceInner>,
    pub(crate) allocation: Allocation,
}

impl std::fmt::Debug for HostBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostBuffer")
            .field("len", &self.allocation.len)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for HostBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        if self.allocation.len == 0 {
            return &[];
        }
        // SAFETY: the range lies in a live pool chunk that outlives `self` (the pool belongs to
        // `self.device`), the pool never hands out overlapping ranges, chunks are zeroed when
        // created so every byte is initialised, and no copy is pending when `&self` is usable
        // (copies complete before the call that queued them returns).
        unsafe {
            std::slice::from_raw_parts(
                self.allocation.address as *const u8,
                self.allocation.len as usize,
            )
        }
    }
}

impl std::ops::DerefMut for HostBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        if self.allocation.len == 0 {
            return &mut [];
        }
        // SAFETY: as for `deref`; `&mut self` makes the access exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.allocation.address as *mut u8,
                self.allocation.len as usize,
            )
        }
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        self.device.host.free(self.allocation);
    }
}
