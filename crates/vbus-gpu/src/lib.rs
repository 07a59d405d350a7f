//! Layer 0 of VBUS: everything that touches a GPU.
//!
//! Today this crate discovers CUDA devices (guarded so that a machine without a driver never
//! panics) and measures host↔device copy bandwidth for `vbus scan`. The VRAM pool, page-locked
//! host buffers, the copy engine and the simulated device arrive with the `vbus-gpu` issue; every
//! layer above reaches the GPU only through this crate.
//!
//! `unsafe` is allowed here and nowhere else in the workspace; each block carries a `// SAFETY:`
//! comment.

mod bandwidth;
mod discovery;
mod error;

pub use bandwidth::{HostDeviceBandwidth, measure_host_device_bandwidth};
pub use discovery::{DeviceInfo, DriverInfo, GpuInventory, NO_GPU_NOTE, discover, driver_present};
pub use error::{Error, Result};
