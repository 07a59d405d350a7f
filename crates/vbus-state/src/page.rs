//! Pages: bytes on the host (from a pool of pre-faulted buffers) or in device memory through
//! `vbus-gpu`, with an epoch that rises with every change.

use std::collections::HashMap;

use crate::delta::{Delta, MergeOp, combine_into};
use crate::{Error, Result};

/// A page's identifier: assigned in creation order, never reused.
pub type PageId = u64;

/// Where a page's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// Host memory.
    Cpu,
    /// Device memory (VRAM, or the simulated device).
    Gpu,
}

impl Location {
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Cpu => 0,
            Self::Gpu => 1,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::Cpu),
            1 => Some(Self::Gpu),
            _ => None,
        }
    }

    /// `cpu` or `gpu`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Gpu => "gpu",
        }
    }
}

#[derive(Debug)]
pub(crate) enum Bytes {
    Host(Vec<u8>),
    Device(vbus_gpu::DeviceBuffer),
}

#[derive(Debug)]
pub(crate) struct Page {
    pub size: u64,
    pub location: Location,
    pub epoch: u64,
    pub bytes: Bytes,
}

impl Page {
    /// The page's bytes, copied to the host.
    pub fn read(&self, device: Option<&vbus_gpu::Device>) -> Result<Vec<u8>> {
        match &self.bytes {
            Bytes::Host(bytes) => Ok(bytes.clone()),
            Bytes::Device(buffer) => {
                let device = device.ok_or(Error::NoDevice)?;
                let mut bytes = vec![0u8; self.size as usize];
                device
                    .download(buffer, 0, &mut bytes)
                    .map_err(Error::Device)?;
                Ok(bytes)
            }
        }
    }

    /// Applies a validated delta. Returns whether the page changed (a device page counts as
    /// changed whenever the delta carries bytes).
    pub fn apply(&mut self, delta: &Delta, device: Option<&vbus_gpu::Device>) -> Result<bool> {
        match &mut self.bytes {
            Bytes::Host(bytes) => delta.apply(bytes),
            Bytes::Device(buffer) => {
                delta.validate(self.size)?;
                let device = device.ok_or(Error::NoDevice)?;
                apply_on_device(device, buffer, delta)?;
                Ok(delta.payload_bytes() > 0)
            }
        }
    }

    /// Replaces the bytes (a propagation result); returns whether they changed. The host case
    /// is inlined into the propagation loop; a device page goes out of line.
    #[inline]
    pub fn replace(&mut self, new_bytes: &[u8], device: Option<&vbus_gpu::Device>) -> Result<bool> {
        match &mut self.bytes {
            Bytes::Host(bytes) => {
                if bytes.as_slice() == new_bytes {
                    return Ok(false);
                }
                bytes.copy_from_slice(new_bytes);
                Ok(true)
            }
            Bytes::Device(buffer) => replace_on_device(buffer, new_bytes, device),
        }
    }
}

/// [`Page::replace`] of a device page: its bytes are read back to tell whether they change.
#[inline(never)]
fn replace_on_device(
    buffer: &mut vbus_gpu::DeviceBuffer,
    new_bytes: &[u8],
    device: Option<&vbus_gpu::Device>,
) -> Result<bool> {
    let device = device.ok_or(Error::NoDevice)?;
    let mut old = vec![0u8; new_bytes.len()];
    device
        .download(buffer, 0, &mut old)
        .map_err(Error::Device)?;
    if old == new_bytes {
        return Ok(false);
    }
    device.upload(new_bytes, buffer, 0).map_err(Error::Device)?;
    Ok(true)
}

/// A sparse delta on a device page: the runs' bytes go up in one upload into a staging buffer,
/// then device-to-device copies scatter them. Operators other than overwrite first read the
/// runs' current bytes back and combine on the host.
fn apply_on_device(
    device: &vbus_gpu::Device,
    buffer: &mut vbus_gpu::DeviceBuffer,
    delta: &Delta,
) -> Result<()> {
    let total = delta.payload_bytes();
    if total == 0 {
        return Ok(());
    }
    let mut packed = Vec::with_capacity(total);
    for run in &delta.runs {
        if delta.op == MergeOp::Overwrite {
            packed.extend_from_slice(&run.bytes);
        } else {
            let mut current = vec![0u8; run.bytes.len()];
            device
                .download(buffer, run.offset, &mut current)
                .map_err(Error::Device)?;
            combine_into(delta.op, delta.elem, &mut current, &run.bytes);
            packed.extend_from_slice(&current);
        }
    }
    if let [run] = delta.runs.as_slice() {
        return device
            .upload(&packed, buffer, run.offset)
            .map_err(Error::Device);
    }
    let mut staging = device.alloc(total as u64).map_err(Error::Device)?;
    device
        .upload(&packed, &mut staging, 0)
        .map_err(Error::Device)?;
    let mut at = 0u64;
    for run in &delta.runs {
        let len = run.bytes.len() as u64;
        device
            .copy_device(&staging, at, buffer, run.offset, len)
            .map_err(Error::Device)?;
        at += len;
    }
    Ok(())
}

/// Freed host page buffers by size, reused zeroed: creating a page of a size seen before takes
/// no allocation and no page fault. Bounded: beyond [`PagePool::MAX_POOLED_BYTES`] freed buffers
/// go back to the allocator.
#[derive(Debug, Default)]
pub(crate) struct PagePool {
    free: HashMap<u64, Vec<Vec<u8>>, foldhash::fast::FixedState>,
    /// Buffers known to hold zeros (reserved, never used): taken without clearing. By size, in
    /// a short list (a bus reserves a few sizes), searched in order: cheaper than a hash.
    zeroed: Vec<(u64, Vec<Vec<u8>>)>,
    pooled_bytes: u64,
}

impl PagePool {
    const MAX_POOLED_BYTES: u64 = 256 << 20;
    /// Buffers made at once when a size runs out (small pages only).
    const BATCH_BYTES: u64 = 256 << 10;

    /// A zeroed buffer of `size` bytes.
    pub fn take(&mut self, size: u64) -> Vec<u8> {
        if let Some(bytes) = self
            .zeroed
            .iter_mut()
            .find(|(reserved, _)| *reserved == size)
            .and_then(|(_, list)| list.pop())
        {
            self.pooled_bytes -= size;
            return bytes;
        }
        if let Some(mut bytes) = self.free.get_mut(&size).and_then(Vec::pop) {
            self.pooled_bytes -= size;
            bytes.fill(0);
            return bytes;
        }
        // Make a batch of small buffers at once, written so their pages are faulted in now.
        let batch = Self::BATCH_BYTES
            .checked_div(size)
            .unwrap_or(1)
            .clamp(1, 64);
        if batch > 1 {
            let list = self.free.entry(size).or_default();
            for _ in 1..batch {
                let mut bytes = vec![0u8; size as usize];
                // Touch every memory page now, not at the first delta.
                for at in (0..bytes.len()).step_by(4096) {
                    bytes[at] = std::hint::black_box(0);
                }
                list.push(bytes);
            }
            self.pooled_bytes += (batch - 1) * size;
        }
        vec![0u8; size as usize]
    }

    /// Pre-faults `n_pages` buffers of `size` bytes for later pages (beyond the pool's bound:
    /// the caller asked for them).
    pub fn reserve(&mut self, size: u64, n_pages: usize) {
        let at = match self
            .zeroed
            .iter()
            .position(|(reserved, _)| *reserved == size)
        {
            Some(at) => at,
            None => {
                self.zeroed.push((size, Vec::new()));
                self.zeroed.len() - 1
            }
        };
        let list = &mut self.zeroed[at].1;
        list.reserve(n_pages);
        for _ in 0..n_pages {
            let mut bytes = vec![0u8; size as usize];
            for at in (0..bytes.len()).step_by(4096) {
                bytes[at] = std::hint::black_box(0);
            }
            list.push(bytes);
        }
        self.pooled_bytes += size * n_pages as u64;
    }

    /// Gives a buffer back.
    pub fn give(&mut self, bytes: Vec<u8>) {
        let size = bytes.len() as u64;
        if self.pooled_bytes + size <= Self::MAX_POOLED_BYTES {
            self.pooled_bytes += size;
            self.free.entry(size).or_default().push(bytes);
        }
    }
}
