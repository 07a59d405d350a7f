//! Layer 0 of VBUS: everything that touches a GPU.
//!
//! - [`Device`]: one CUDA device, or the simulated device (host memory behind the same API and
//!   the same accounting) when there is no driver or the configuration asks for it.
//! - Pools: VRAM and page-locked host memory are taken from the driver in large chunks and carved
//!   by a best-fit range allocator, so allocation and free cost a few B-tree operations.
//! - The copy engine: host→device, device→host and device→device on their own streams, pageable
//!   memory staged through a ring of page-locked slots, and file→VRAM with reader threads.
//! - [`discover`]: every GPU, guarded so that a machine without a driver never panics.
//!
//! `unsafe` is allowed here and nowhere else in the workspace (but the test-only fake driver);
//! each block carries a `// SAFETY:` comment.

mod alloc;
mod bandwidth;
mod copy;
mod cuda;
mod device;
mod discovery;
mod error;
mod pool;
#[cfg(feature = "bench")]
pub mod reference;

pub use alloc::ALIGN_BYTES;
pub use bandwidth::{HostDeviceBandwidth, measure_host_device_bandwidth};
pub use copy::STAGING_SLOT_BYTES;
pub use device::{
    BackendChoice, BackendKind, Device, DeviceBuffer, DeviceOptions, DeviceStats, HostBuffer,
};
pub use discovery::{DeviceInfo, DriverInfo, GpuInventory, NO_GPU_NOTE, discover, driver_present};
pub use error::{Error, Result};
pub use pool::PoolStats;
