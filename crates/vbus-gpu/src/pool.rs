//! A memory pool: large chunks from a source (the CUDA driver, or the heap for the simulated
//! device) carved by [`RangeAllocator`], so an allocation costs a few B-tree operations instead of
//! a driver call.

use parking_lot::Mutex;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::alloc::{ALIGN_BYTES, RangeAllocator};
use crate::cuda::CudaContext;
use crate::{Error, Result};

/// Chunks are multiples of this (2 MiB, the GPU's large page).
const CHUNK_ALIGN_BYTES: u64 = 2 << 20;

/// Where a pool's chunks come from.
pub(crate) trait ChunkSource: Send + Sync + std::fmt::Debug {
    /// A new chunk of `size_bytes`; returns its base address (device or host).
    fn alloc_chunk(&self, size_bytes: u64) -> Result<u64>;
    /// Returns a chunk. Called only for chunks with no live allocation and no pending work.
    fn free_chunk(&self, base: u64, size_bytes: u64);
    /// How many more bytes the source can give (free VRAM less the reserve), if it knows.
    fn available_bytes(&self) -> Option<u64>;
}

/// Figures of one pool.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PoolStats {
    /// The most the pool may take from its source.
    pub capacity_bytes: u64,
    /// Taken from the source, in chunks.
    pub reserved_bytes: u64,
    /// Handed out in live allocations (aligned sizes).
    pub allocated_bytes: u64,
    /// Live allocations.
    pub n_allocations: u64,
    /// Chunks taken from the source.
    pub n_chunks: u64,
    /// The largest allocation that fits without a new chunk.
    pub largest_free_bytes: u64,
    /// `1 - largest_free / free` of the reserved space: 0 when the free space is one range.
    pub fragmentation: f64,
}

/// A live allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Allocation {
    /// Base address: chunk base plus offset (0 for a zero-length allocation).
    pub address: u64,
    /// Bytes asked for.
    pub len: u64,
    chunk_idx: usize,
    offset: u64,
    aligned_len: u64,
}

impl Allocation {
    /// A zero-length allocation, which owns nothing.
    const EMPTY: Self = Self {
        address: 0,
        len: 0,
        chunk_idx: usize::MAX,
        offset: 0,
        aligned_len: 0,
    };
}

#[derive(Debug)]
struct Chunk {
    base: u64,
    allocator: RangeAllocator,
}

#[derive(Debug, Default)]
struct PoolState {
    chunks: Vec<Option<Chunk>>,
    /// Bytes of the chunks held, and of those being taken from the source.
    reserved_bytes: u64,
    /// Bytes of chunks being taken from the source by [`Pool::add_chunk`].
    reserved_in_flight: u64,
    allocated_bytes: u64,
    n_allocations: u64,
}

/// Chunks from one source, carved into allocations.
#[derive(Debug)]
pub(crate) struct Pool {
    what: &'static str,
    source: Box<dyn ChunkSource>,
    capacity_bytes: u64,
    chunk_bytes: u64,
    state: Mutex<PoolState>,
}

impl Pool {
    /// `what` names the memory in errors (`VRAM`, `page-locked host memory`).
    pub fn new(
        what: &'static str,
        source: Box<dyn ChunkSource>,
        capacity_bytes: u64,
        chunk_bytes: u64,
    ) -> Self {
        Self {
            what,
            source,
            capacity_bytes,
            chunk_bytes: chunk_bytes
                .max(CHUNK_ALIGN_BYTES)
                .next_multiple_of(CHUNK_ALIGN_BYTES),
            state: Mutex::new(PoolState::default()),
        }
    }

    /// `len` bytes from the smallest free range of any chunk, or from a new chunk.
    pub fn alloc(&self, len: u64) -> Result<Allocation> {
        if len == 0 {
            return Ok(Allocation::EMPTY);
        }
        let aligned_len = RangeAllocator::aligned(len)
            .ok_or_else(|| self.out_of_memory(len, &self.state.lock()))?;
        let mut state = self.state.lock();
        let chunk_idx = match Self::best_fit(&state, aligned_len) {
            Some(chunk_idx) => chunk_idx,
            None => self.grow(&mut state, aligned_len)?,
        };
        Ok(Self::carve(&mut state, chunk_idx, aligned_len, len))
    }

    /// `len` bytes from a chunk the pool holds now; `None` at once when none has room (the pool
    /// does not grow, so the caller never waits for the driver). The flag says the pool runs
    /// short (no room for `len`, or less than half a chunk free after it) while its capacity
    /// allows another chunk: the caller should have one added, away from its own path.
    pub fn alloc_from_chunks(&self, len: u64) -> (Option<Allocation>, bool) {
        if len == 0 {
            return (Some(Allocation::EMPTY), false);
        }
        let Some(aligned_len) = RangeAllocator::aligned(len) else {
            return (None, false);
        };
        let mut state = self.state.lock();
        let allocation = Self::best_fit(&state, aligned_len)
            .map(|chunk_idx| Self::carve(&mut state, chunk_idx, aligned_len, len));
        let short = allocation.is_none() || Self::free_locked(&state) < self.chunk_bytes / 2;
        let can_grow = self.capacity_bytes.saturating_sub(state.reserved_bytes) >= ALIGN_BYTES;
        (allocation, short && can_grow)
    }

    /// Bytes free in the chunks held now (not what the capacity would still allow).
    pub fn free_in_chunks(&self) -> u64 {
        Self::free_locked(&self.state.lock())
    }

    fn free_locked(state: &PoolState) -> u64 {
        state.reserved_bytes - state.allocated_bytes - state.reserved_in_flight
    }

    /// Adds one chunk with room for at least `min_bytes` (the pool's chunk size or more; less
    /// only where the capacity ends). The source is called without the pool's lock held, so
    /// allocations and frees go on meanwhile (a page-locked chunk takes the driver a tenth of a
    /// second or more). Returns false when the capacity has no room for it.
    pub fn add_chunk(&self, min_bytes: u64) -> Result<bool> {
        let Some(aligned_len) = RangeAllocator::aligned(min_bytes.max(1)) else {
            return Ok(false);
        };
        let chunk_bytes = {
            let mut state = self.state.lock();
            let chunk_bytes = self.chunk_size_for(&state, aligned_len);
            if chunk_bytes < aligned_len
                || chunk_bytes > self.source.available_bytes().unwrap_or(u64::MAX)
            {
                return Ok(false);
            }
            // Counted at once, so two growers never pass the capacity together.
            state.reserved_bytes += chunk_bytes;
            state.reserved_in_flight += chunk_bytes;
            chunk_bytes
        };
        let base = self.source.alloc_chunk(chunk_bytes);
        let mut state = self.state.lock();
        state.reserved_in_flight -= chunk_bytes;
        match base {
            Ok(base) => {
                Self::insert_chunk(&mut state, base, chunk_bytes);
                Ok(true)
            }
            Err(err) => {
                state.reserved_bytes -= chunk_bytes;
                Err(err)
            }
        }
    }

    /// Best fit across chunks: the chunk whose largest free range is the smallest that fits.
    fn best_fit(state: &PoolState, aligned_len: u64) -> Option<usize> {
        state
            .chunks
            .iter()
            .enumerate()
            .filter_map(|(chunk_idx, chunk)| {
                let largest = chunk.as_ref()?.allocator.largest_free_bytes();
                (largest >= aligned_len).then_some((largest, chunk_idx))
            })
            .min()
            .map(|(_, chunk_idx)| chunk_idx)
    }

    fn carve(state: &mut PoolState, chunk_idx: usize, aligned_len: u64, len: u64) -> Allocation {
        let chunk = state.chunks[chunk_idx]
            .as_mut()
            .expect("a fitting chunk exists");
        let offset = chunk
            .allocator
            .alloc(aligned_len)
            .expect("the chunk has a fitting range");
        let address = chunk.base + offset;
        state.allocated_bytes += aligned_len;
        state.n_allocations += 1;
        Allocation {
            address,
            len,
            chunk_idx,
            offset,
            aligned_len,
        }
    }

    /// The size of a new chunk for `aligned_len`: the pool's chunk size or more, cut to what the
    /// capacity has left (whole 2 MiB or not).
    fn chunk_size_for(&self, state: &PoolState, aligned_len: u64) -> u64 {
        self.chunk_bytes
            .max(aligned_len.next_multiple_of(CHUNK_ALIGN_BYTES))
            .min(
                self.capacity_bytes.saturating_sub(state.reserved_bytes) / ALIGN_BYTES
                    * ALIGN_BYTES,
            )
    }

    /// Takes a new chunk big enough for `aligned_len`; returns its index.
    fn grow(&self, state: &mut PoolState, aligned_len: u64) -> Result<usize> {
        let chunk_bytes = self.chunk_size_for(state, aligned_len);
        let available = self.source.available_bytes().unwrap_or(u64::MAX);
        if chunk_bytes < aligned_len || chunk_bytes > available {
            // Give back empty chunks before refusing: they may be too small but their space counts.
            if self.trim_locked(state) > 0 {
                return self.grow(state, aligned_len);
            }
            return Err(self.out_of_memory(aligned_len, state));
        }
        let base = self.source.alloc_chunk(chunk_bytes)?;
        state.reserved_bytes += chunk_bytes;
        Ok(Self::insert_chunk(state, base, chunk_bytes))
    }

    /// Files a chunk (its bytes already counted as reserved); returns its index.
    fn insert_chunk(state: &mut PoolState, base: u64, chunk_bytes: u64) -> usize {
        let chunk = Chunk {
            base,
            allocator: RangeAllocator::new(chunk_bytes),
        };
        tracing::debug!(
            chunk_bytes,
            reserved_bytes = state.reserved_bytes,
            "pool grew"
        );
        match state.chunks.iter().position(Option::is_none) {
            Some(chunk_idx) => {
                state.chunks[chunk_idx] = Some(chunk);
                chunk_idx
            }
            None => {
                state.chunks.push(Some(chunk));
                state.chunks.len() - 1
            }
        }
    }

    /// Returns an allocation. The caller guarantees no pending work uses it.
    pub fn free(&self, allocation: Allocation) {
        if allocation.len == 0 {
            return;
        }
        let mut state = self.state.lock();
        let chunk = state.chunks[allocation.chunk_idx]
            .as_mut()
            .expect("a live allocation's chunk exists");
        chunk
            .allocator
            .free(allocation.offset, allocation.aligned_len);
        state.allocated_bytes -= allocation.aligned_len;
        state.n_allocations -= 1;
    }

    /// Gives every empty chunk back to the source; returns the bytes released.
    pub fn trim(&self) -> u64 {
        self.trim_locked(&mut self.state.lock())
    }

    fn trim_locked(&self, state: &mut PoolState) -> u64 {
        let mut released = 0;
        for slot in &mut state.chunks {
            if slot
                .as_ref()
                .is_some_and(|chunk| chunk.allocator.is_empty())
            {
                let chunk = slot.take().expect("checked");
                self.source
                    .free_chunk(chunk.base, chunk.allocator.size_bytes());
                released += chunk.allocator.size_bytes();
            }
        }
        state.reserved_bytes -= released;
        released
    }

    /// True when `address..address+len` lies inside one chunk of this pool.
    pub fn contains(&self, address: u64, len: u64) -> bool {
        let state = self.state.lock();
        state.chunks.iter().flatten().any(|chunk| {
            address >= chunk.base
                && address.saturating_add(len) <= chunk.base + chunk.allocator.size_bytes()
        })
    }

    pub fn stats(&self) -> PoolStats {
        let state = self.state.lock();
        let chunks = || state.chunks.iter().flatten();
        let free_bytes: u64 = chunks().map(|chunk| chunk.allocator.free_bytes()).sum();
        let largest_free_bytes = chunks()
            .map(|chunk| chunk.allocator.largest_free_bytes())
            .max()
            .unwrap_or(0);
        PoolStats {
            capacity_bytes: self.capacity_bytes,
            reserved_bytes: state.reserved_bytes,
            allocated_bytes: state.allocated_bytes,
            n_allocations: state.n_allocations,
            n_chunks: chunks().count() as u64,
            largest_free_bytes,
            fragmentation: if free_bytes == 0 {
                0.0
            } else {
                1.0 - largest_free_bytes as f64 / free_bytes as f64
            },
        }
    }

    fn out_of_memory(&self, len: u64, state: &PoolState) -> Error {
        Error::OutOfMemory {
            what: self.what,
            requested_bytes: len,
            allocated_bytes: state.allocated_bytes,
            capacity_bytes: self.capacity_bytes.min(
                state
                    .reserved_bytes
                    .saturating_add(self.source.available_bytes().unwrap_or(u64::MAX)),
            ),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let state = self.state.get_mut();
        for chunk in state.chunks.drain(..).flatten() {
            self.source
                .free_chunk(chunk.base, chunk.allocator.size_bytes());
        }
    }
}

/// Heap memory, for the simulated device's VRAM and for host buffers without a GPU. Chunks are
/// zeroed (and so resident), so every byte a buffer exposes is initialised.
#[derive(Debug)]
pub(crate) struct HeapSource {
    /// Bytes the heap may give in total (the simulated device's VRAM size).
    pub capacity_bytes: u64,
    pub taken_bytes: Mutex<u64>,
}

impl HeapSource {
    pub fn new(capacity_bytes: u64) -> Self {
        Self {
            capacity_bytes,
            taken_bytes: Mutex::new(0),
        }
    }
}

impl ChunkSource for HeapSource {
    fn alloc_chunk(&self, size_bytes: u64) -> Result<u64> {
        let len = usize::try_from(size_bytes).map_err(|_| Error::Driver {
            call: "heap allocation",
            code: format!("{size_bytes} bytes do not fit in this address space"),
        })?;
        let layout =
            std::alloc::Layout::from_size_align(len, ALIGN_BYTES as usize).map_err(|_| {
                Error::Driver {
                    call: "heap allocation",
                    code: format!("no layout for {size_bytes} bytes"),
                }
            })?;
        // SAFETY: the layout has a non-zero size (chunks are at least 2 MiB).
        let ptr = unsafe { std::alloc::alloc(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| Error::Driver {
            call: "heap allocation",
            code: format!("the allocator refused {size_bytes} bytes"),
        })?;
        // Zeroed by writing, not lazily by the kernel: every page is resident from here on, as
        // device memory is, so first use does not pay page faults a GPU never would.
        // SAFETY: `ptr` points to `len` writable bytes just allocated.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, len) };
        *self.taken_bytes.lock() += size_bytes;
        Ok(ptr.as_ptr() as u64)
    }

    fn free_chunk(&self, base: u64, size_bytes: u64) {
        let layout = std::alloc::Layout::from_size_align(size_bytes as usize, ALIGN_BYTES as usize)
            .expect("the layout was valid at allocation");
        // SAFETY: `base` came from `alloc` with this layout and the pool frees a chunk once.
        unsafe { std::alloc::dealloc(base as *mut u8, layout) };
        *self.taken_bytes.lock() -= size_bytes;
    }

    fn available_bytes(&self) -> Option<u64> {
        Some(self.capacity_bytes - *self.taken_bytes.lock())
    }
}

/// Device memory from the CUDA driver, leaving `reserve_bytes` of VRAM free.
#[derive(Debug)]
pub(crate) struct CudaDeviceSource {
    pub context: Arc<CudaContext>,
    pub reserve_bytes: u64,
}

impl ChunkSource for CudaDeviceSource {
    fn alloc_chunk(&self, size_bytes: u64) -> Result<u64> {
        self.context.alloc_device(size_bytes)
    }

    fn free_chunk(&self, base: u64, _size_bytes: u64) {
        // SAFETY: the pool frees a chunk once, with no live allocation and no pending work.
        if let Err(err) = unsafe { self.context.free_device(base) } {
            tracing::error!(error = %err, "cannot free a VRAM chunk");
        }
    }

    fn available_bytes(&self) -> Option<u64> {
        self.context
            .mem_info()
            .ok()
            .map(|(free, _)| free.saturating_sub(self.reserve_bytes))
    }
}

/// Page-locked host memory from the CUDA driver, zeroed once per chunk.
#[derive(Debug)]
pub(crate) struct CudaHostSource {
    pub context: Arc<CudaContext>,
}

impl ChunkSource for CudaHostSource {
    fn alloc_chunk(&self, size_bytes: u64) -> Result<u64> {
        let ptr = self.context.alloc_host(size_bytes)?;
        // SAFETY: `ptr` points to `size_bytes` of writable memory just allocated.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, size_bytes as usize) };
        Ok(ptr.as_ptr() as u64)
    }

    fn free_chunk(&self, base: u64, _size_bytes: u64) {
        let Some(ptr) = NonNull::new(base as *mut u8) else {
            return;
        };
        // SAFETY: the pool frees a chunk once, with no live allocation and no pending copy.
        if let Err(err) = unsafe { self.context.free_host(ptr) } {
            tracing::error!(error = %err, "cannot free a page-locked chunk");
        }
    }

    fn available_bytes(&self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap_pool(capacity_bytes: u64, chunk_bytes: u64) -> Pool {
        Pool::new(
            "test memory",
            Box::new(HeapSource::new(capacity_bytes)),
            capacity_bytes,
            chunk_bytes,
        )
    }

    #[test]
    fn grows_by_chunks_and_reports_usage() {
        let pool = heap_pool(64 << 20, 4 << 20);
        let a = pool.alloc(1).unwrap();
        let b = pool.alloc(1 << 20).unwrap();
        let stats = pool.stats();
        assert_eq!((stats.n_chunks, stats.reserved_bytes), (1, 4 << 20));
        assert_eq!(stats.allocated_bytes, 256 + (1 << 20));
        // Larger than a chunk: a chunk of its own size.
        let big = pool.alloc(10 << 20).unwrap();
        assert_eq!(pool.stats().n_chunks, 2);
        assert!(pool.contains(big.address, 10 << 20));
        for allocation in [a, b, big] {
            pool.free(allocation);
        }
        assert_eq!(pool.stats().allocated_bytes, 0);
        assert_eq!(pool.trim(), 14 << 20);
        assert_eq!(pool.stats().reserved_bytes, 0);
    }

    #[test]
    fn out_of_memory_is_a_clean_error() {
        let pool = heap_pool(8 << 20, 4 << 20);
        let a = pool.alloc(6 << 20).unwrap();
        let err = pool.alloc(4 << 20).unwrap_err();
        assert!(
            matches!(err, Error::OutOfMemory { requested_bytes, .. } if requested_bytes == 4 << 20),
            "{err}"
        );
        assert!(err.to_string().contains("test memory"), "{err}");
        pool.free(a);
        // Empty chunks are given back when a larger one is needed.
        pool.alloc(8 << 20).unwrap();
    }

    #[test]
    fn zero_length_allocations_take_nothing() {
        let pool = heap_pool(4 << 20, 2 << 20);
        let empty = pool.alloc(0).unwrap();
        assert_eq!((empty.len, pool.stats().n_chunks), (0, 0));
        pool.free(empty);
    }
}
