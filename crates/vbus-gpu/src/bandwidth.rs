//! Host↔device copy bandwidth through page-locked memory, for `vbus scan`.

use std::time::Instant;

use crate::{BackendChoice, Device, DeviceOptions, Result};

/// Host→device and device→host copy rates measured on one device.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HostDeviceBandwidth {
    /// Host→device, page-locked source, GB/s (10^9 bytes per second).
    pub host_to_device_gbps: f64,
    /// Device→host, page-locked destination, GB/s.
    pub device_to_host_gbps: f64,
}

/// Copies `size_bytes` between a page-locked host buffer and device memory through the copy
/// engine, `n_rounds` times each way after one warm-up, and returns the best rate of each
/// direction. Fails without a CUDA device.
pub fn measure_host_device_bandwidth(
    device_idx: usize,
    size_bytes: u64,
    n_rounds: usize,
) -> Result<HostDeviceBandwidth> {
    let device = Device::open(&DeviceOptions {
        backend: BackendChoice::Cuda,
        device_idx,
        capacity_bytes: size_bytes.next_multiple_of(2 << 20),
        host_capacity_bytes: size_bytes.next_multiple_of(2 << 20),
        chunk_bytes: size_bytes.next_multiple_of(2 << 20),
        ..DeviceOptions::default()
    })?;
    let mut host = device.alloc_host(size_bytes)?;
    host.fill(0x5a);
    let mut device_buffer = device.alloc(size_bytes)?;
    let mut best = HostDeviceBandwidth {
        host_to_device_gbps: 0.0,
        device_to_host_gbps: 0.0,
    };
    for round in 0..=n_rounds {
        let started = Instant::now();
        device.upload(&host, &mut device_buffer, 0)?;
        let h2d = gbps(size_bytes, started);
        let started = Instant::now();
        device.download(&device_buffer, 0, &mut host)?;
        let d2h = gbps(size_bytes, started);
        if round > 0 {
            best.host_to_device_gbps = best.host_to_device_gbps.max(h2d);
            best.device_to_host_gbps = best.device_to_host_gbps.max(d2h);
        }
    }
    Ok(best)
}

fn gbps(size_bytes: u64, started: Instant) -> f64 {
    size_bytes as f64 / started.elapsed().as_secs_f64().max(1e-9) / 1e9
}
