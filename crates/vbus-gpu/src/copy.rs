//! The copy engine: host→device, device→host and device→device, each on its own stream; large
//! copies split into pieces; pageable memory staged through a ring of page-locked slots with
//! several pieces in flight; and file→VRAM with reader threads filling slots while earlier ones
//! are in flight.
//!
//! Every copy is complete when the call that made it returns, so buffers are never freed or
//! reused under a pending transfer.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use crate::cuda::{CudaContext, Event, Lane};
use crate::device::{Backend, Device, DeviceBuffer};
use crate::pool::Allocation;
use crate::{Error, Result};

/// Size of one slot of the staging ring (pageable copies).
pub const STAGING_SLOT_BYTES: u64 = 8 << 20;
/// Slots in the ring used by pageable copies.
const STAGING_SLOTS: usize = 4;
/// Size of one read of a file load, and of its slots. Four readers taking consecutive 2 MiB
/// pieces keep one sequential stream that the kernel's readahead follows: on the lent H100's disk
/// they read a cold file at 2.3 to 2.4 GB/s, where 8 MiB pieces read 1.6 and `dd bs=8M` 2.0.
const FILE_PIECE_BYTES: u64 = 2 << 20;
/// Slots used by a file load (readers fill some while others are in flight).
const FILE_SLOTS: usize = 16;
/// Reader threads of a file load, at most.
const FILE_READERS_MAX: usize = 4;
/// The staging pool: the ring and one file load's slots.
pub(crate) const STAGING_POOL_BYTES: u64 =
    STAGING_SLOTS as u64 * STAGING_SLOT_BYTES + FILE_SLOTS as u64 * FILE_PIECE_BYTES;
/// The staging pool's chunks: the ring takes one, a file load the other.
pub(crate) const STAGING_CHUNK_BYTES: u64 = STAGING_SLOTS as u64 * STAGING_SLOT_BYTES;
/// Threads that copy between pageable memory and a staging slot, at most.
const COPY_THREADS_MAX: usize = 4;
/// Copies smaller than this use one thread.
const PARALLEL_COPY_MIN_BYTES: usize = 1 << 20;
/// Page-locked copies are queued in pieces of this size.
const PINNED_PIECE_BYTES: u64 = 64 << 20;

/// The ring of page-locked slots for pageable copies, created on first use.
#[derive(Default)]
pub(crate) struct Staging {
    slots: Vec<Allocation>,
    events: Vec<Option<Event>>,
}

impl Device {
    /// Copies `src` into `dst` at `dst_offset`. From a [`crate::HostBuffer`] of this device the
    /// copy goes straight to the device; from any other (pageable) memory it is staged.
    pub fn upload(&self, src: &[u8], dst: &mut DeviceBuffer, dst_offset: u64) -> Result<()> {
        self.check_own(&dst.device)?;
        check_range("destination", dst_offset, src.len() as u64, dst.len())?;
        if src.is_empty() {
            return Ok(());
        }
        let dst_address = dst.allocation.address + dst_offset;
        match &self.inner.backend {
            Backend::Simulated => {
                // SAFETY: the destination range lies inside `dst`'s live allocation (checked
                // above), which no other buffer overlaps, and `&mut dst` makes the access
                // exclusive; `src` is a separate host slice.
                unsafe {
                    std::ptr::copy_nonoverlapping(src.as_ptr(), dst_address as *mut u8, src.len())
                };
                Ok(())
            }
            Backend::Cuda(context)
                if self
                    .inner
                    .host
                    .contains(src.as_ptr() as u64, src.len() as u64) =>
            {
                let queued = pieces(src.len() as u64, PINNED_PIECE_BYTES).try_for_each(
                    |(piece_offset, piece)| {
                        // SAFETY: `src` is borrowed and `dst` mutably borrowed until `settle` below
                        // has waited for the lane; the device range lies inside `dst`'s allocation.
                        unsafe {
                            context.copy_to_device(
                                dst_address + piece_offset,
                                src.as_ptr().add(piece_offset as usize),
                                piece as usize,
                                Lane::HostToDevice,
                            )
                        }
                    },
                );
                settle(context, Lane::HostToDevice, queued)
            }
            Backend::Cuda(context) => {
                let queued = self.upload_staged(context, src, dst_address);
                settle(context, Lane::HostToDevice, queued)
            }
        }
    }

    /// Copies `dst.len()` bytes of `src` from `src_offset` into `dst`. Into a
    /// [`crate::HostBuffer`] of this device the copy comes straight from the device; into any
    /// other memory it is staged.
    pub fn download(&self, src: &DeviceBuffer, src_offset: u64, dst: &mut [u8]) -> Result<()> {
        self.check_own(&src.device)?;
        check_range("source", src_offset, dst.len() as u64, src.len())?;
        if dst.is_empty() {
            return Ok(());
        }
        let src_address = src.allocation.address + src_offset;
        match &self.inner.backend {
            Backend::Simulated => {
                // SAFETY: the source range lies inside `src`'s live allocation (checked above)
                // and `dst` is a separate, exclusively borrowed host slice.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src_address as *const u8,
                        dst.as_mut_ptr(),
                        dst.len(),
                    )
                };
                Ok(())
            }
            Backend::Cuda(context)
                if self
                    .inner
                    .host
                    .contains(dst.as_ptr() as u64, dst.len() as u64) =>
            {
                let queued = pieces(dst.len() as u64, PINNED_PIECE_BYTES).try_for_each(
                    |(piece_offset, piece)| {
                        // SAFETY: `dst` is mutably borrowed and `src` borrowed until `settle` below
                        // has waited for the lane; the device range lies inside `src`'s allocation.
                        unsafe {
                            context.copy_to_host(
                                dst.as_mut_ptr().add(piece_offset as usize),
                                src_address + piece_offset,
                                piece as usize,
                                Lane::DeviceToHost,
                            )
                        }
                    },
                );
                settle(context, Lane::DeviceToHost, queued)
            }
            Backend::Cuda(context) => {
                let queued = self.download_staged(context, src_address, dst);
                settle(context, Lane::DeviceToHost, queued)
            }
        }
    }

    /// Copies `len` bytes from `src` at `src_offset` to `dst` at `dst_offset`, on the device.
    pub fn copy_device(
        &self,
        src: &DeviceBuffer,
        src_offset: u64,
        dst: &mut DeviceBuffer,
        dst_offset: u64,
        len: u64,
    ) -> Result<()> {
        self.check_own(&src.device)?;
        self.check_own(&dst.device)?;
        check_range("source", src_offset, len, src.len())?;
        check_range("destination", dst_offset, len, dst.len())?;
        if len == 0 {
            return Ok(());
        }
        let (src_address, dst_address) = (
            src.allocation.address + src_offset,
            dst.allocation.address + dst_offset,
        );
        match &self.inner.backend {
            Backend::Simulated => {
                // SAFETY: both ranges lie inside live allocations (checked above); they belong
                // to two distinct buffers (`&` and `&mut` cannot alias), which the pool never
                // overlaps.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        src_address as *const u8,
                        dst_address as *mut u8,
                        len as usize,
                    )
                };
                Ok(())
            }
            Backend::Cuda(context) => {
                // SAFETY: both ranges are live, disjoint device memory borrowed until `settle`
                // below has waited for the lane.
                let queued = unsafe {
                    context.copy_on_device(
                        dst_address,
                        src_address,
                        len as usize,
                        Lane::DeviceToDevice,
                    )
                };
                settle(context, Lane::DeviceToDevice, queued)
            }
        }
    }

    /// Reads a whole file into a new device buffer: reader threads fill page-locked slots while
    /// earlier slots are in flight to the device.
    pub fn load_file(&self, path: &Path) -> Result<DeviceBuffer> {
        let file_error = |source| Error::File {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(file_error)?;
        let len = file.metadata().map_err(file_error)?.len();
        let dst = self.alloc(len)?;
        if len == 0 {
            return Ok(dst);
        }
        // One load at a time: each reads as fast as the disk gives, and the slots stay bounded.
        let _one_load = self.inner.file_load.lock();
        let n_pieces = len.div_ceil(FILE_PIECE_BYTES);
        let n_readers = std::thread::available_parallelism()
            .map_or(2, usize::from)
            .clamp(1, FILE_READERS_MAX)
            .min(n_pieces as usize);
        let n_slots = FILE_SLOTS
            .min(n_pieces as usize + n_readers)
            .max(n_readers + 1);
        let mut slots = StagingSlots {
            pool: &self.inner.staging_pool,
            slots: Vec::with_capacity(n_slots),
        };
        for _ in 0..n_slots {
            slots
                .slots
                .push(self.inner.staging_pool.alloc(FILE_PIECE_BYTES)?);
        }
        let slot_addresses: Vec<u64> = slots.slots.iter().map(|slot| slot.address).collect();
        let slot_addresses = &slot_addresses;
        let dst_address = dst.allocation.address;
        let next_piece = AtomicU64::new(0);
        let failed = AtomicBool::new(false);
        let (free_tx, free_rx) = mpsc::sync_channel::<usize>(n_slots);
        for slot_idx in 0..n_slots {
            free_tx
                .send(slot_idx)
                .expect("the channel holds every slot");
        }
        let free_rx = Mutex::new(free_rx);
        let (filled_tx, filled_rx) =
            mpsc::sync_channel::<std::io::Result<(u64, usize, usize)>>(n_slots);

        let result = std::thread::scope(|scope| {
            for _ in 0..n_readers {
                let filled_tx = filled_tx.clone();
                let (file, free_rx, next_piece, failed, slot_addresses) =
                    (&file, &free_rx, &next_piece, &failed, slot_addresses);
                scope.spawn(move || {
                    while !failed.load(Ordering::Relaxed) {
                        let piece_idx = next_piece.fetch_add(1, Ordering::Relaxed);
                        if piece_idx >= n_pieces {
                            break;
                        }
                        let Ok(slot_idx) = free_rx.lock().recv() else {
                            break;
                        };
                        let offset = piece_idx * FILE_PIECE_BYTES;
                        let n = (len - offset).min(FILE_PIECE_BYTES) as usize;
                        // SAFETY: the slot belongs to this thread from the moment its index left
                        // the free channel until it is sent on; no copy reads it meanwhile (the
                        // copy engine returns a slot to the free channel only after its transfer
                        // completed), and it lies in a live page-locked allocation of FILE_PIECE_BYTES.
                        let slot = unsafe {
                            std::slice::from_raw_parts_mut(slot_addresses[slot_idx] as *mut u8, n)
                        };
                        let message = file
                            .read_exact_at(slot, offset)
                            .map(|()| (piece_idx, slot_idx, n));
                        if filled_tx.send(message).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(filled_tx);
            // The engine side: owns the free sender and the filled receiver, so both close when
            // it returns, which releases any reader waiting on them.
            let engine = move || -> Result<()> {
                let mut in_flight: VecDeque<(usize, Option<Event>)> = VecDeque::new();
                for _ in 0..n_pieces {
                    let (piece_idx, slot_idx, n) = filled_rx
                        .recv()
                        .map_err(|_| file_error(std::io::Error::other("a reader thread stopped")))?
                        .map_err(file_error)?;
                    let target = dst_address + piece_idx * FILE_PIECE_BYTES;
                    let event = self.transfer_slot(slot_addresses[slot_idx], target, n)?;
                    in_flight.push_back((slot_idx, event));
                    // Keep at most as many slots in flight as the readers are not filling.
                    while in_flight.len() > n_slots - n_readers {
                        let (slot_idx, event) = in_flight.pop_front().expect("not empty");
                        if let Some(event) = event {
                            event.synchronize()?;
                        }
                        let _ = free_tx.send(slot_idx);
                    }
                }
                if let Backend::Cuda(context) = &self.inner.backend {
                    context.synchronize(Lane::HostToDevice)?;
                }
                Ok(())
            };
            let mut result = engine();
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
            }
            // Slots and destination are freed after this: nothing may still be in flight.
            if let Backend::Cuda(context) = &self.inner.backend {
                result = settle(context, Lane::HostToDevice, result);
            }
            result
        });
        // Every transfer from the slots finished (or failed) before the slots are freed here.
        drop(slots);
        result?;
        Ok(dst)
    }

    /// Starts the transfer of a filled slot to `target`; the returned event completes with it
    /// (`None` on the simulated device, where the copy is done on return).
    fn transfer_slot(&self, slot_address: u64, target: u64, n: usize) -> Result<Option<Event>> {
        match &self.inner.backend {
            Backend::Simulated => {
                // SAFETY: the slot holds `n` filled bytes owned by the caller; the target range
                // lies inside the destination buffer, which only this load writes.
                unsafe {
                    std::ptr::copy_nonoverlapping(slot_address as *const u8, target as *mut u8, n)
                };
                Ok(None)
            }
            Backend::Cuda(context) => {
                // SAFETY: the slot is not reused until the returned event completes; the target
                // range lies inside the destination buffer, which only this load writes.
                unsafe {
                    context.copy_to_device(target, slot_address as *const u8, n, Lane::HostToDevice)
                }?;
                let event = context.new_event()?;
                context.record(&event, Lane::HostToDevice)?;
                Ok(Some(event))
            }
        }
    }

    fn upload_staged(
        &self,
        context: &Arc<CudaContext>,
        src: &[u8],
        dst_address: u64,
    ) -> Result<()> {
        let mut staging = self.staging()?;
        let Staging { slots, events } = &mut *staging;
        for (piece_idx, (piece_offset, piece)) in
            pieces(src.len() as u64, STAGING_SLOT_BYTES).enumerate()
        {
            let slot_idx = piece_idx % slots.len();
            if let Some(event) = events[slot_idx].take() {
                event.synchronize()?;
            }
            let (start, end) = (piece_offset as usize, (piece_offset + piece) as usize);
            // SAFETY: the slot's last transfer completed (its event was synchronised above) and
            // the staging lock makes this thread its only user.
            let slot = unsafe {
                std::slice::from_raw_parts_mut(slots[slot_idx].address as *mut u8, piece as usize)
            };
            parallel_copy(slot, &src[start..end]);
            // SAFETY: the slot is not touched again until its event completes; the device range
            // lies in the destination buffer, mutably borrowed by the caller until we return.
            unsafe {
                context.copy_to_device(
                    dst_address + piece_offset,
                    slots[slot_idx].address as *const u8,
                    piece as usize,
                    Lane::HostToDevice,
                )
            }?;
            let event = context.new_event()?;
            context.record(&event, Lane::HostToDevice)?;
            events[slot_idx] = Some(event);
        }
        context.synchronize(Lane::HostToDevice)?;
        events.iter_mut().for_each(|event| *event = None);
        Ok(())
    }

    fn download_staged(
        &self,
        context: &Arc<CudaContext>,
        src_address: u64,
        dst: &mut [u8],
    ) -> Result<()> {
        let mut staging = self.staging()?;
        let slots = staging.slots.clone();
        let mut in_flight: VecDeque<(usize, u64, u64, Event)> = VecDeque::new();
        let complete = |in_flight: &mut VecDeque<(usize, u64, u64, Event)>,
                        dst: &mut [u8]|
         -> Result<()> {
            let (slot_idx, piece_offset, piece, event) = in_flight.pop_front().expect("not empty");
            event.synchronize()?;
            // SAFETY: the transfer into the slot completed (event synchronised) and the staging
            // lock makes this thread its only user.
            let slot = unsafe {
                std::slice::from_raw_parts(slots[slot_idx].address as *const u8, piece as usize)
            };
            parallel_copy(
                &mut dst[piece_offset as usize..(piece_offset + piece) as usize],
                slot,
            );
            Ok(())
        };
        for (piece_idx, (piece_offset, piece)) in
            pieces(dst.len() as u64, STAGING_SLOT_BYTES).enumerate()
        {
            if in_flight.len() == slots.len() {
                complete(&mut in_flight, dst)?;
            }
            let slot_idx = piece_idx % slots.len();
            // SAFETY: the slot's previous transfer was completed above (the oldest in flight is
            // always the slot reused next); the source range lies in the caller's buffer.
            unsafe {
                context.copy_to_host(
                    slots[slot_idx].address as *mut u8,
                    src_address + piece_offset,
                    piece as usize,
                    Lane::DeviceToHost,
                )
            }?;
            let event = context.new_event()?;
            context.record(&event, Lane::DeviceToHost)?;
            in_flight.push_back((slot_idx, piece_offset, piece, event));
        }
        while !in_flight.is_empty() {
            complete(&mut in_flight, dst)?;
        }
        staging.events.iter_mut().for_each(|event| *event = None);
        Ok(())
    }

    /// The staging ring, its slots allocated from the staging pool on first use.
    fn staging(&self) -> Result<parking_lot::MutexGuard<'_, Staging>> {
        let mut staging = self.inner.staging.lock();
        if staging.slots.is_empty() {
            for _ in 0..STAGING_SLOTS {
                let slot = self.inner.staging_pool.alloc(STAGING_SLOT_BYTES)?;
                staging.slots.push(slot);
                staging.events.push(None);
            }
        }
        Ok(staging)
    }
}

impl Drop for crate::device::DeviceInner {
    fn drop(&mut self) {
        let staging = self.staging.get_mut();
        staging.events.clear();
        for slot in staging.slots.drain(..) {
            self.staging_pool.free(slot);
        }
    }
}

/// A file load's slots, given back to the staging pool when dropped.
struct StagingSlots<'a> {
    pool: &'a crate::pool::Pool,
    slots: Vec<Allocation>,
}

impl Drop for StagingSlots<'_> {
    fn drop(&mut self) {
        for slot in self.slots.drain(..) {
            self.pool.free(slot);
        }
    }
}

/// Waits for everything queued on `lane` whatever `queued` says, so no transfer outlives the call
/// that queued it (an error part-way leaves earlier pieces in flight); returns the first error.
fn settle(context: &CudaContext, lane: Lane, queued: Result<()>) -> Result<()> {
    let synchronized = context.synchronize(lane);
    queued.and(synchronized)
}

/// Copies `src` into `dst` (of the same length) on up to [`COPY_THREADS_MAX`] threads. One core's
/// `memcpy` moves 5 to 10 GB/s, far below what a page-locked transfer does (55 GB/s on the lent
/// H100), so a staged copy with one copying thread runs at the core's speed.
fn parallel_copy(dst: &mut [u8], src: &[u8]) {
    static N_THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let n_threads = *N_THREADS.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(COPY_THREADS_MAX))
    });
    if n_threads <= 1 || src.len() < PARALLEL_COPY_MIN_BYTES {
        dst.copy_from_slice(src);
        return;
    }
    let part_bytes = src.len().div_ceil(n_threads).next_multiple_of(4096);
    let mut refused = false;
    std::thread::scope(|scope| {
        let mut parts = dst.chunks_mut(part_bytes).zip(src.chunks(part_bytes));
        let first = parts.next();
        for (dst_part, src_part) in parts {
            let spawned = std::thread::Builder::new()
                .spawn_scoped(scope, move || dst_part.copy_from_slice(src_part));
            if spawned.is_err() {
                refused = true;
                break;
            }
        }
        if let Some((dst_part, src_part)) = first {
            dst_part.copy_from_slice(src_part);
        }
    });
    // The OS refused a thread: its part (and those after it) were never copied.
    if refused {
        dst.copy_from_slice(src);
    }
}

/// `(offset, len)` pieces of at most `piece_bytes` covering `0..len`.
fn pieces(len: u64, piece_bytes: u64) -> impl Iterator<Item = (u64, u64)> {
    (0..len.div_ceil(piece_bytes)).map(move |piece_idx| {
        let offset = piece_idx * piece_bytes;
        (offset, (len - offset).min(piece_bytes))
    })
}

fn check_range(what: &'static str, offset: u64, len: u64, size_bytes: u64) -> Result<()> {
    if offset.checked_add(len).is_some_and(|end| end <= size_bytes) {
        Ok(())
    } else {
        Err(Error::OutOfBounds {
            what,
            offset,
            len,
            size_bytes,
        })
    }
}
