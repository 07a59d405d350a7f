//! Host↔device copy bandwidth through page-locked memory, for `vbus scan`.

use std::time::Instant;

use cudarc::driver::{CudaContext, CudaSlice};

use crate::{Error, Result, driver_present};

/// Host→device and device→host copy rates measured on one device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostDeviceBandwidth {
    /// Host→device, page-locked source, GB/s (10^9 bytes per second).
    pub host_to_device_gbps: f64,
    /// Device→host, page-locked destination, GB/s.
    pub device_to_host_gbps: f64,
}

/// Copies `size_bytes` between a page-locked (not write-combined) host buffer and device memory,
/// `n_rounds` times each way after one warm-up, and returns the best rate of each direction.
pub fn measure_host_device_bandwidth(
    device_idx: usize,
    size_bytes: usize,
    n_rounds: usize,
) -> Result<HostDeviceBandwidth> {
    if !driver_present() {
        return Err(Error::NoDriver);
    }
    let n_devices =
        CudaContext::device_count().map_err(|err| Error::driver("cuDeviceGetCount", err))?;
    if device_idx >= usize::try_from(n_devices).unwrap_or(0) {
        return Err(Error::NoSuchDevice {
            device_idx,
            n_devices: usize::try_from(n_devices).unwrap_or(0),
        });
    }
    let context = CudaContext::new(device_idx)
        .map_err(|err| Error::driver("cuDevicePrimaryCtxRetain", err))?;
    let stream = context.default_stream();
    // SAFETY: flags 0 asks for plain page-locked memory (not write-combined). The contents are
    // uninitialised; they are written in full below before any copy reads them.
    let mut host = unsafe { context.alloc_pinned_with_flags::<u8>(size_bytes, 0) }
        .map_err(|err| Error::driver("cuMemHostAlloc", err))?;
    host.as_mut_slice()
        .map_err(|err| Error::driver("cuEventSynchronize", err))?
        .fill(0x5a);
    let mut device: CudaSlice<u8> = stream
        .alloc_zeros(size_bytes)
        .map_err(|err| Error::driver("cuMemAlloc", err))?;

    let mut best = HostDeviceBandwidth {
        host_to_device_gbps: 0.0,
        device_to_host_gbps: 0.0,
    };
    for round in 0..=n_rounds {
        let started = Instant::now();
        stream
            .memcpy_htod(&host, &mut device)
            .map_err(|err| Error::driver("cuMemcpyHtoDAsync", err))?;
        stream
            .synchronize()
            .map_err(|err| Error::driver("cuStreamSynchronize", err))?;
        let h2d = gbps(size_bytes, started);
        let started = Instant::now();
        stream
            .memcpy_dtoh(&device, &mut host)
            .map_err(|err| Error::driver("cuMemcpyDtoHAsync", err))?;
        stream
            .synchronize()
            .map_err(|err| Error::driver("cuStreamSynchronize", err))?;
        let d2h = gbps(size_bytes, started);
        if round > 0 {
            best.host_to_device_gbps = best.host_to_device_gbps.max(h2d);
            best.device_to_host_gbps = best.device_to_host_gbps.max(d2h);
        }
    }
    Ok(best)
}

fn gbps(size_bytes: usize, started: Instant) -> f64 {
    size_bytes as f64 / started.elapsed().as_secs_f64().max(1e-9) / 1e9
}
