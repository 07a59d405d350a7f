//! The CUDA driver, through `cudarc`'s thin `result` layer: one context per device per process,
//! three streams (host→device, device→host, device→device), events, and memory.
//!
//! Every function here is called only after [`crate::driver_present`] said yes: without a
//! driver, `cudarc`'s first call panics.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::{Arc, OnceLock};

use cudarc::driver::result;
use cudarc::driver::sys::{self, CUcontext, CUevent, CUstream};

use crate::{Error, Result};

/// The stream a copy runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    HostToDevice,
    DeviceToHost,
    DeviceToDevice,
}

/// A retained primary context of one device and its streams.
pub(crate) struct CudaContext {
    pub device_idx: usize,
    cu_ctx: CUcontext,
    streams: [CUstream; 3],
}

// SAFETY: CUDA contexts, streams and events are driver handles that the driver API allows to be
// used from any thread once the context is current there; `bind` makes it current before every
// use.
unsafe impl Send for CudaContext {}
// SAFETY: as above; the handles are never mutated after creation.
unsafe impl Sync for CudaContext {}

impl std::fmt::Debug for CudaContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaContext")
            .field("device_idx", &self.device_idx)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// The context last made current on this thread (as an address), to skip redundant binds.
    static BOUND: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl CudaContext {
    /// The context of `device_idx`, created once per process.
    pub fn get(device_idx: usize) -> Result<Arc<Self>> {
        static CONTEXTS: OnceLock<Mutex<HashMap<usize, Arc<CudaContext>>>> = OnceLock::new();
        let contexts = CONTEXTS.get_or_init(|| Mutex::new(HashMap::new()));
        let mut contexts = contexts.lock();
        if let Some(context) = contexts.get(&device_idx) {
            return Ok(Arc::clone(context));
        }
        let context = Arc::new(Self::create(device_idx)?);
        contexts.insert(device_idx, Arc::clone(&context));
        Ok(context)
    }

    fn create(device_idx: usize) -> Result<Self> {
        result::init().map_err(|err| Error::driver("cuInit", err))?;
        let n_devices = device_count()?;
        if device_idx >= n_devices {
            return Err(Error::NoSuchDevice {
                device_idx,
                n_devices,
            });
        }
        let cu_device = result::device::get(device_idx as i32)
            .map_err(|err| Error::driver("cuDeviceGet", err))?;
        // SAFETY: `cu_device` was just returned by `cuDeviceGet`.
        let cu_ctx = unsafe { result::primary_ctx::retain(cu_device) }
            .map_err(|err| Error::driver("cuDevicePrimaryCtxRetain", err))?;
        // SAFETY: `cu_ctx` is the context just retained.
        unsafe { result::ctx::set_current(cu_ctx) }
            .map_err(|err| Error::driver("cuCtxSetCurrent", err))?;
        let mut streams = [std::ptr::null_mut(); 3];
        for stream in &mut streams {
            *stream = result::stream::create(result::stream::StreamKind::NonBlocking)
                .map_err(|err| Error::driver("cuStreamCreate", err))?;
        }
        tracing::info!(device_idx, "cuda context created");
        Ok(Self {
            device_idx,
            cu_ctx,
            streams,
        })
    }

    /// Makes the context current on this thread.
    pub fn bind(&self) -> Result<()> {
        let address = self.cu_ctx as usize;
        if BOUND.with(|bound| bound.get()) == address {
            return Ok(());
        }
        // SAFETY: `cu_ctx` is a retained primary context that lives as long as `self`.
        unsafe { result::ctx::set_current(self.cu_ctx) }
            .map_err(|err| Error::driver("cuCtxSetCurrent", err))?;
        BOUND.with(|bound| bound.set(address));
        Ok(())
    }

    pub fn stream(&self, lane: Lane) -> CUstream {
        self.streams[lane as usize]
    }

    /// `(free, total)` device memory.
    pub fn mem_info(&self) -> Result<(u64, u64)> {
        self.bind()?;
        let (free, total) =
            result::mem_get_info().map_err(|err| Error::driver("cuMemGetInfo", err))?;
        Ok((free as u64, total as u64))
    }

    pub fn alloc_device(&self, size_bytes: u64) -> Result<u64> {
        self.bind()?;
        // SAFETY: a plain allocation; the memory is uninitialised device memory that is only
        // written and read through copies.
        unsafe { result::malloc_sync(size_bytes as usize) }
            .map_err(|err| Error::driver("cuMemAlloc", err))
    }

    /// # Safety
    /// `device_ptr` came from [`CudaContext::alloc_device`], is not used afterwards, and no work
    /// using it is pending.
    pub unsafe fn free_device(&self, device_ptr: u64) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller's contract.
        unsafe { result::free_sync(device_ptr) }.map_err(|err| Error::driver("cuMemFree", err))
    }

    /// Page-locked host memory, plain (not write-combined: the CPU reads it too).
    pub fn alloc_host(&self, size_bytes: u64) -> Result<NonNull<u8>> {
        self.bind()?;
        // SAFETY: flags 0 asks for plain page-locked memory; the caller initialises it.
        let ptr = unsafe { result::malloc_host(size_bytes as usize, 0) }
            .map_err(|err| Error::driver("cuMemHostAlloc", err))?;
        NonNull::new(ptr.cast::<u8>()).ok_or_else(|| Error::Driver {
            call: "cuMemHostAlloc",
            code: "returned a null pointer".to_owned(),
        })
    }

    /// # Safety
    /// `ptr` came from [`CudaContext::alloc_host`], is not used afterwards, and no copy using it
    /// is pending.
    pub unsafe fn free_host(&self, ptr: NonNull<u8>) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller's contract.
        unsafe { result::free_host(ptr.as_ptr().cast::<c_void>()) }
            .map_err(|err| Error::driver("cuMemFreeHost", err))
    }

    /// Queues a host→device copy.
    ///
    /// # Safety
    /// `src..src+len` stays valid and unchanged, and `dst..dst+len` is a live device range that
    /// nothing else writes, until the lane is synchronised (or an event recorded after it is).
    pub unsafe fn copy_to_device(
        &self,
        dst: u64,
        src: *const u8,
        len: usize,
        lane: Lane,
    ) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller's contract.
        let src = unsafe { std::slice::from_raw_parts(src, len) };
        // SAFETY: the caller's contract covers the device range and the stream belongs to `self`.
        unsafe { result::memcpy_htod_async(dst, src, self.stream(lane)) }
            .map_err(|err| Error::driver("cuMemcpyHtoDAsync", err))
    }

    /// Queues a device→host copy.
    ///
    /// # Safety
    /// `dst..dst+len` stays valid and is neither read nor written by anything else, and
    /// `src..src+len` is a live device range, until the lane is synchronised.
    pub unsafe fn copy_to_host(
        &self,
        dst: *mut u8,
        src: u64,
        len: usize,
        lane: Lane,
    ) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller's contract.
        let dst = unsafe { std::slice::from_raw_parts_mut(dst, len) };
        // SAFETY: the caller's contract covers the device range and the stream belongs to `self`.
        unsafe { result::memcpy_dtoh_async(dst, src, self.stream(lane)) }
            .map_err(|err| Error::driver("cuMemcpyDtoHAsync", err))
    }

    /// Queues a device→device copy.
    ///
    /// # Safety
    /// Both ranges are live device memory and do not overlap; nothing else writes `dst` until
    /// the lane is synchronised.
    pub unsafe fn copy_on_device(&self, dst: u64, src: u64, len: usize, lane: Lane) -> Result<()> {
        self.bind()?;
        // SAFETY: the caller's contract.
        unsafe { result::memcpy_dtod_async(dst, src, len, self.stream(lane)) }
            .map_err(|err| Error::driver("cuMemcpyDtoDAsync", err))
    }

    /// Waits for everything queued on `lane`.
    pub fn synchronize(&self, lane: Lane) -> Result<()> {
        self.bind()?;
        // SAFETY: the stream belongs to this context and lives as long as it.
        unsafe { result::stream::synchronize(self.stream(lane)) }
            .map_err(|err| Error::driver("cuStreamSynchronize", err))
    }

    pub fn new_event(&self) -> Result<Event> {
        self.bind()?;
        let event = result::event::create(sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)
            .map_err(|err| Error::driver("cuEventCreate", err))?;
        Ok(Event(event))
    }

    /// Marks the point in `lane` that `event` completes at.
    pub fn record(&self, event: &Event, lane: Lane) -> Result<()> {
        self.bind()?;
        // SAFETY: the event and the stream are live handles of this context.
        unsafe { result::event::record(event.0, self.stream(lane)) }
            .map_err(|err| Error::driver("cuEventRecord", err))
    }
}

/// A CUDA event, destroyed on drop.
pub(crate) struct Event(CUevent);

// SAFETY: event handles may be used from any thread of the process (see `CudaContext`).
unsafe impl Send for Event {}

impl Event {
    /// Waits until the work before the event's record point is done.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: a live event handle.
        unsafe { result::event::synchronize(self.0) }
            .map_err(|err| Error::driver("cuEventSynchronize", err))
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: the handle is live and dropped once; pending work keeps the driver's own
        // reference.
        if let Err(err) = unsafe { result::event::destroy(self.0) } {
            tracing::warn!(error = ?err.0, "cuEventDestroy failed");
        }
    }
}

/// Devices the driver reports (after `cuInit`).
pub(crate) fn device_count() -> Result<usize> {
    let n = result::device::get_count().map_err(|err| Error::driver("cuDeviceGetCount", err))?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Name, total memory and compute capability of one device, without creating a context.
pub(crate) fn device_properties(device_idx: usize) -> Result<(String, u64, (i32, i32))> {
    let cu_device =
        result::device::get(device_idx as i32).map_err(|err| Error::driver("cuDeviceGet", err))?;
    let name =
        result::device::get_name(cu_device).map_err(|err| Error::driver("cuDeviceGetName", err))?;
    // SAFETY: `cu_device` was just returned by `cuDeviceGet`.
    let total = unsafe { result::device::total_mem(cu_device) }
        .map_err(|err| Error::driver("cuDeviceTotalMem", err))?;
    let attribute = |attribute| {
        // SAFETY: as above.
        unsafe { result::device::get_attribute(cu_device, attribute) }
            .map_err(|err| Error::driver("cuDeviceGetAttribute", err))
    };
    let major = attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
    let minor = attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
    Ok((name, total as u64, (major, minor)))
}
