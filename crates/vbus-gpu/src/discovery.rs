//! Device discovery through the CUDA driver API, guarded by `is_culib_present`.

use cudarc::driver::sys;

use crate::cuda::{self, CudaContext};
use crate::{Error, Result};

/// What `vbus scan` says when no CUDA driver or no device is present.
pub const NO_GPU_NOTE: &str = "no GPU: L1 runs on the simulated device";

/// The CUDA driver that was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverInfo {
    /// The CUDA version the driver supports, as `major.minor` (from `cuDriverGetVersion`).
    pub cuda_version: String,
}

/// One CUDA device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Driver ordinal.
    pub device_idx: usize,
    /// Marketing name, for example `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Total device memory.
    pub vram_total_bytes: u64,
    /// Free device memory when the scan ran.
    pub vram_free_bytes: u64,
    /// Compute capability `(major, minor)`.
    pub compute_capability: (i32, i32),
}

/// Every CUDA device on the machine, or the reason there is none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GpuInventory {
    /// The driver, when one could be loaded and initialised.
    pub driver: Option<DriverInfo>,
    /// Devices in ordinal order; empty without a driver.
    pub devices: Vec<DeviceInfo>,
    /// Why the list is empty or incomplete (a driver error), for the report.
    pub problem: Option<String>,
}

impl GpuInventory {
    /// True when at least one device can be used for L1.
    pub fn has_gpu(&self) -> bool {
        !self.devices.is_empty()
    }
}

/// True when a CUDA driver library can be loaded. Without it, any `cudarc` driver call panics, so
/// every entry point of this crate checks this first.
pub fn driver_present() -> bool {
    // SAFETY: `is_culib_present` only tries `dlopen` on the driver's library names and drops the
    // handle; it calls no CUDA function and has no other precondition.
    unsafe { sys::is_culib_present() }
}

/// Lists every CUDA device. Never panics: without a driver the inventory is empty, and a driver
/// that fails is reported in [`GpuInventory::problem`].
pub fn discover() -> GpuInventory {
    if !driver_present() {
        return GpuInventory::default();
    }
    match discover_with_driver() {
        Ok(inventory) => inventory,
        Err(err) => GpuInventory {
            driver: None,
            devices: Vec::new(),
            problem: Some(err.to_string()),
        },
    }
}

fn discover_with_driver() -> Result<GpuInventory> {
    cudarc::driver::result::init().map_err(|err| Error::driver("cuInit", err))?;
    let driver = DriverInfo {
        cuda_version: driver_cuda_version()?,
    };
    let mut devices = Vec::new();
    let mut problem = None;
    for device_idx in 0..cuda::device_count()? {
        match device_info(device_idx) {
            Ok(info) => devices.push(info),
            Err(err) => {
                tracing::warn!(device_idx, error = %err, "gpu device could not be queried");
                problem = Some(format!("device {device_idx}: {err}"));
            }
        }
    }
    Ok(GpuInventory {
        driver: Some(driver),
        devices,
        problem,
    })
}

fn driver_cuda_version() -> Result<String> {
    let mut version: std::ffi::c_int = 0;
    // SAFETY: the driver library is present (checked by the caller) and `cuInit` succeeded;
    // `cuDriverGetVersion` writes one int through a valid pointer to a local.
    unsafe { sys::cuDriverGetVersion(&mut version) }
        .result()
        .map_err(|err| Error::driver("cuDriverGetVersion", err))?;
    Ok(format!("{}.{}", version / 1000, (version % 1000) / 10))
}

/// Queries one device. Free memory needs a context: this creates the process's context of the
/// device (about 250 ms the first time), which later users share.
fn device_info(device_idx: usize) -> Result<DeviceInfo> {
    let (name, vram_total_bytes, compute_capability) = cuda::device_properties(device_idx)?;
    let (vram_free_bytes, _) = CudaContext::get(device_idx)?.mem_info()?;
    Ok(DeviceInfo {
        device_idx,
        name,
        vram_total_bytes,
        vram_free_bytes,
        compute_capability,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_never_panics_and_is_consistent() {
        let inventory = discover();
        if !driver_present() {
            assert!(inventory.driver.is_none());
            assert!(!inventory.has_gpu());
        }
        for (position, device) in inventory.devices.iter().enumerate() {
            assert_eq!(device.device_idx, position);
            assert!(device.vram_free_bytes <= device.vram_total_bytes);
        }
    }
}
