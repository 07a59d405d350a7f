//! The raw operations benchmarks compare against: a page-locked copy and a driver allocation
//! made directly, without the pools or the copy engine. On the simulated device the raw
//! operations are a plain `memcpy` and a heap allocation.

use std::time::Instant;

use crate::cuda::Lane;
use crate::device::{Backend, Device};
use crate::pool::{ChunkSource, HeapSource};
use crate::{Error, Result};

/// Rates of raw copies between freshly allocated page-locked host memory and device memory, one
/// call each way per round; the median of `n_rounds` after a warm-up. GB/s.
pub fn raw_copy_gbps(device: &Device, size_bytes: u64, n_rounds: usize) -> Result<(f64, f64)> {
    let len = usize::try_from(size_bytes).map_err(|_| Error::OutOfBounds {
        what: "host address space",
        offset: 0,
        len: size_bytes,
        size_bytes: usize::MAX as u64,
    })?;
    let (mut h2d_samples, mut d2h_samples) = (Vec::new(), Vec::new());
    match &device.inner.backend {
        Backend::Cuda(context) => {
            let host = context.alloc_host(size_bytes)?;
            // SAFETY: `host` points to `size_bytes` writable bytes just allocated.
            unsafe { std::ptr::write_bytes(host.as_ptr(), 0x5a, len) };
            let device_ptr = context.alloc_device(size_bytes)?;
            let result = (|| -> Result<()> {
                for round in 0..=n_rounds {
                    let started = Instant::now();
                    // SAFETY: both ranges are live for the whole call and synchronised below.
                    unsafe {
                        context.copy_to_device(device_ptr, host.as_ptr(), len, Lane::HostToDevice)
                    }?;
                    context.synchronize(Lane::HostToDevice)?;
                    let h2d = gbps(size_bytes, started);
                    let started = Instant::now();
                    // SAFETY: as above.
                    unsafe {
                        context.copy_to_host(host.as_ptr(), device_ptr, len, Lane::DeviceToHost)
                    }?;
                    context.synchronize(Lane::DeviceToHost)?;
                    if round > 0 {
                        h2d_samples.push(h2d);
                        d2h_samples.push(gbps(size_bytes, started));
                    }
                }
                Ok(())
            })();
            // SAFETY: no copy is pending (each was synchronised) and neither pointer is used again.
            unsafe {
                context.free_device(device_ptr)?;
                context.free_host(host)?;
            }
            result?;
        }
        Backend::Simulated => {
            let source = vec![0x5au8; len];
            let mut destination = vec![0u8; len];
            for round in 0..=n_rounds {
                let started = Instant::now();
                destination.copy_from_slice(&source);
                let h2d = gbps(size_bytes, started);
                std::hint::black_box(&destination);
                let started = Instant::now();
                destination.copy_from_slice(&source);
                std::hint::black_box(&destination);
                if round > 0 {
                    h2d_samples.push(h2d);
                    d2h_samples.push(gbps(size_bytes, started));
                }
            }
        }
    }
    Ok((median(&mut h2d_samples), median(&mut d2h_samples)))
}

/// Median nanoseconds of one raw device allocation plus free of `size_bytes` (the driver's
/// `cuMemAlloc` + `cuMemFree`, or a heap allocation zeroed by writing on the simulated device).
pub fn raw_alloc_free_ns(device: &Device, size_bytes: u64, n_rounds: usize) -> Result<f64> {
    let mut samples = Vec::with_capacity(n_rounds);
    for _ in 0..n_rounds.max(1) {
        let started = Instant::now();
        match &device.inner.backend {
            Backend::Cuda(context) => {
                let device_ptr = context.alloc_device(size_bytes)?;
                // SAFETY: just allocated, never used, nothing pending.
                unsafe { context.free_device(device_ptr) }?;
            }
            Backend::Simulated => {
                let heap = HeapSource::new(size_bytes);
                let base = heap.alloc_chunk(size_bytes)?;
                heap.free_chunk(base, size_bytes);
            }
        }
        samples.push(started.elapsed().as_nanos() as f64);
    }
    Ok(median(&mut samples))
}

fn median(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn gbps(size_bytes: u64, started: Instant) -> f64 {
    size_bytes as f64 / started.elapsed().as_secs_f64().max(1e-9) / 1e9
}
