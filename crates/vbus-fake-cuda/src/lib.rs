//! A strict stand-in for the CUDA driver (`libcuda.so`), on host memory. Test support, never
//! shipped.
//!
//! Built as a shared library and put on `LD_LIBRARY_PATH` as `libcuda.so`, it is what `cudarc`
//! loads in place of the real driver, so VBUS's CUDA code path runs on any machine. It implements
//! only the functions VBUS calls (`cudarc` resolves each one when first called), strictly:
//!
//! - Device pointers live in their own address range, far from host memory, and are never
//!   reused. A copy outside a live allocation fails with `CUDA_ERROR_INVALID_VALUE`; one into
//!   freed memory with `CUDA_ERROR_ILLEGAL_ADDRESS`; a double free with `INVALID_VALUE`.
//! - Calls before `cuInit` fail with `NOT_INITIALIZED`; calls without a current context, or on a
//!   stream of another context, with `INVALID_CONTEXT`.
//! - Asynchronous copies are queued per stream and carried out only at a synchronization point
//!   (`cuStreamSynchronize`, `cuEventSynchronize` up to the event, or a blocking call such as
//!   `cuMemFree`), so a missing synchronization shows up as wrong bytes.
//! - `VBUS_FAKE_CUDA_TOTAL_MEM` sets the device memory in bytes (default 8 GiB);
//!   `VBUS_FAKE_CUDA_DEVICES` the number of devices (default 1); `VBUS_FAKE_CUDA_FAIL_ALLOC_AT=N`
//!   makes the Nth `cuMemAlloc` of the process fail with `OUT_OF_MEMORY`.
//!
//! Every exported function takes raw pointers from C, so this crate is the one place besides
//! `vbus-gpu` with `unsafe` code.

#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::{c_char, c_int, c_uint, c_void};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// `CUresult` values used here.
pub mod code {
    pub const SUCCESS: u32 = 0;
    pub const INVALID_VALUE: u32 = 1;
    pub const OUT_OF_MEMORY: u32 = 2;
    pub const NOT_INITIALIZED: u32 = 3;
    pub const INVALID_DEVICE: u32 = 101;
    pub const INVALID_CONTEXT: u32 = 201;
    pub const INVALID_HANDLE: u32 = 400;
    pub const ILLEGAL_ADDRESS: u32 = 700;
}

/// Where device addresses start: above anything `mmap` hands out for the heap in practice, and
/// never dereferenced by the fake itself as a host pointer.
const DEVICE_ADDRESS_BASE: u64 = 0x0000_4000_0000_0000;
/// Gap between device allocations, so an overrun never lands in a neighbour.
const DEVICE_GUARD_BYTES: u64 = 2 << 20;
/// Handles of contexts, streams and events are small integers offset by this.
const HANDLE_BASE: usize = 0x1000;

#[derive(Debug)]
struct DeviceAllocation {
    size: u64,
    context: usize,
    /// `None` once freed (the range stays known, to report use after free).
    data: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy)]
enum Op {
    HostToDevice { dst: u64, src: usize, len: usize },
    DeviceToHost { dst: usize, src: u64, len: usize },
    DeviceToDevice { dst: u64, src: u64, len: usize },
    Record { event: usize },
}

#[derive(Debug, Default)]
struct Stream {
    context: usize,
    queue: VecDeque<Op>,
}

#[derive(Debug, Default)]
struct State {
    initialized: bool,
    total_mem: u64,
    n_devices: i32,
    fail_alloc_at: Option<u64>,
    n_allocs: u64,
    next_address: u64,
    device_allocations: BTreeMap<u64, DeviceAllocation>,
    host_allocations: HashMap<usize, Vec<u8>>,
    /// Primary context handle of each device.
    contexts: HashMap<i32, usize>,
    streams: HashMap<usize, Stream>,
    /// Event → the stream it was last recorded on.
    events: HashMap<usize, Option<usize>>,
    next_handle: usize,
}

fn state() -> MutexGuard<'static, State> {
    static STATE: OnceLock<Mutex<State>> = OnceLock::new();
    STATE
        .get_or_init(|| Mutex::new(State::default()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

thread_local! {
    static CURRENT_CONTEXT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name)
        .ok()
        .and_then(|value| value.trim().parse().ok())
}

impl State {
    fn handle(&mut self) -> usize {
        self.next_handle += 1;
        HANDLE_BASE + self.next_handle
    }

    fn live_bytes(&self) -> u64 {
        self.device_allocations
            .values()
            .filter(|allocation| allocation.data.is_some())
            .map(|allocation| allocation.size)
            .sum()
    }

    /// The allocation holding `address..address+len`: its base, or the error code.
    fn find(&self, address: u64, len: usize) -> Result<u64, u32> {
        let Some((&base, allocation)) = self.device_allocations.range(..=address).next_back()
        else {
            return Err(code::INVALID_VALUE);
        };
        let end = address.checked_add(len as u64).ok_or(code::INVALID_VALUE)?;
        if address >= base + allocation.size.max(1) {
            return Err(code::INVALID_VALUE);
        }
        if allocation.data.is_none() {
            return Err(code::ILLEGAL_ADDRESS);
        }
        if end > base + allocation.size {
            return Err(code::INVALID_VALUE);
        }
        Ok(base)
    }

    fn device_bytes(&mut self, address: u64, len: usize) -> Result<&mut [u8], u32> {
        let base = self.find(address, len)?;
        let data = self
            .device_allocations
            .get_mut(&base)
            .and_then(|allocation| allocation.data.as_mut())
            .ok_or(code::ILLEGAL_ADDRESS)?;
        let start = (address - base) as usize;
        Ok(&mut data[start..start + len])
    }

    /// Carries out one queued operation.
    fn execute(&mut self, op: Op) -> u32 {
        let result = match op {
            Op::HostToDevice { dst, src, len } => self.device_bytes(dst, len).map(|bytes| {
                // SAFETY: the caller of the async copy promised `src..src+len` stays valid until
                // this synchronization point (the driver's contract); `bytes` is fake device
                // memory, a separate allocation.
                unsafe { std::ptr::copy_nonoverlapping(src as *const u8, bytes.as_mut_ptr(), len) }
            }),
            Op::DeviceToHost { dst, src, len } => self.device_bytes(src, len).map(|bytes| {
                // SAFETY: as above, for the destination host range.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst as *mut u8, len) }
            }),
            Op::DeviceToDevice { dst, src, len } => self
                .device_bytes(src, len)
                .map(|bytes| bytes.to_vec())
                .and_then(|copied| {
                    self.device_bytes(dst, len)
                        .map(|bytes| bytes.copy_from_slice(&copied))
                }),
            Op::Record { .. } => Ok(()),
        };
        result.err().unwrap_or(code::SUCCESS)
    }

    /// Runs a stream's queue, up to and including the record of `until_event` if given.
    fn drain(&mut self, stream: usize, until_event: Option<usize>) -> u32 {
        let mut status = code::SUCCESS;
        loop {
            let Some(op) = self
                .streams
                .get_mut(&stream)
                .and_then(|s| s.queue.pop_front())
            else {
                return status;
            };
            let result = self.execute(op);
            if status == code::SUCCESS {
                status = result;
            }
            if let (Op::Record { event }, Some(until)) = (op, until_event)
                && event == until
            {
                return status;
            }
        }
    }

    fn drain_all(&mut self) -> u32 {
        let streams: Vec<usize> = self.streams.keys().copied().collect();
        let mut status = code::SUCCESS;
        for stream in streams {
            let result = self.drain(stream, None);
            if status == code::SUCCESS {
                status = result;
            }
        }
        status
    }

    /// Checks that the library is initialised and a context is current; returns that context.
    fn current(&self) -> Result<usize, u32> {
        if !self.initialized {
            return Err(code::NOT_INITIALIZED);
        }
        let context = CURRENT_CONTEXT.with(|current| current.get());
        if context == 0 || !self.contexts.values().any(|&c| c == context) {
            return Err(code::INVALID_CONTEXT);
        }
        Ok(context)
    }

    fn enqueue(&mut self, stream: usize, op: Op) -> u32 {
        let context = match self.current() {
            Ok(context) => context,
            Err(code) => return code,
        };
        match self.streams.get_mut(&stream) {
            None => code::INVALID_HANDLE,
            Some(s) if s.context != context => code::INVALID_CONTEXT,
            Some(s) => {
                s.queue.push_back(op);
                code::SUCCESS
            }
        }
    }
}

macro_rules! try_code {
    ($expr:expr) => {
        match $expr {
            Ok(value) => value,
            Err(code) => return code,
        }
    };
}

/// Writes through an out-pointer, refusing null.
unsafe fn out<T>(ptr: *mut T, value: T) -> u32 {
    if ptr.is_null() {
        return code::INVALID_VALUE;
    }
    // SAFETY: the caller passes a valid, writable out-pointer (the driver's contract).
    unsafe { ptr.write(value) };
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub extern "C" fn cuInit(flags: c_uint) -> u32 {
    if flags != 0 {
        return code::INVALID_VALUE;
    }
    let mut state = state();
    if !state.initialized {
        state.initialized = true;
        state.total_mem = env_u64("VBUS_FAKE_CUDA_TOTAL_MEM").unwrap_or(8 << 30);
        state.n_devices = env_u64("VBUS_FAKE_CUDA_DEVICES").map_or(1, |n| n as i32);
        state.fail_alloc_at = env_u64("VBUS_FAKE_CUDA_FAIL_ALLOC_AT");
        state.next_address = DEVICE_ADDRESS_BASE;
    }
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> u32 {
    // SAFETY: out-pointer from the caller.
    unsafe { out(version, 12080) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> u32 {
    let state = state();
    if !state.initialized {
        return code::NOT_INITIALIZED;
    }
    // SAFETY: out-pointer from the caller.
    unsafe { out(count, state.n_devices) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGet(device: *mut c_int, ordinal: c_int) -> u32 {
    let state = state();
    if !state.initialized {
        return code::NOT_INITIALIZED;
    }
    if ordinal < 0 || ordinal >= state.n_devices {
        return code::INVALID_DEVICE;
    }
    // SAFETY: out-pointer from the caller.
    unsafe { out(device, ordinal) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, device: c_int) -> u32 {
    let state = state();
    if !state.initialized {
        return code::NOT_INITIALIZED;
    }
    if device < 0 || device >= state.n_devices {
        return code::INVALID_DEVICE;
    }
    if name.is_null() || len <= 0 {
        return code::INVALID_VALUE;
    }
    let text = format!("VBUS fake CUDA device {device}\0");
    let n = text.len().min(len as usize);
    // SAFETY: `name` points to `len` writable bytes (the driver's contract); the last byte
    // written is a NUL when the name fits.
    unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), name.cast::<u8>(), n) };
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, device: c_int) -> u32 {
    let state = state();
    if !state.initialized {
        return code::NOT_INITIALIZED;
    }
    if device < 0 || device >= state.n_devices {
        return code::INVALID_DEVICE;
    }
    // SAFETY: out-pointer from the caller.
    unsafe { out(bytes, state.total_mem as usize) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    value: *mut c_int,
    attribute: c_int,
    device: c_int,
) -> u32 {
    let state = state();
    if !state.initialized {
        return code::NOT_INITIALIZED;
    }
    if device < 0 || device >= state.n_devices {
        return code::INVALID_DEVICE;
    }
    // COMPUTE_CAPABILITY_MAJOR = 75, MINOR = 76; the fake is a 9.0 device.
    let answer = match attribute {
        75 => 9,
        76 => 0,
        _ => 0,
    };
    // SAFETY: out-pointer from the caller.
    unsafe { out(value, answer) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(context: *mut *mut c_void, device: c_int) -> u32 {
    let mut state = state();
    if !state.initialized {
        return code::NOT_INITIALIZED;
    }
    if device < 0 || device >= state.n_devices {
        return code::INVALID_DEVICE;
    }
    let handle = match state.contexts.get(&device) {
        Some(&handle) => handle,
        None => {
            let handle = state.handle();
            state.contexts.insert(device, handle);
            handle
        }
    };
    // SAFETY: out-pointer from the caller.
    unsafe { out(context, handle as *mut c_void) }
}

#[unsafe(no_mangle)]
pub extern "C" fn cuCtxSetCurrent(context: *mut c_void) -> u32 {
    let state = state();
    if !state.initialized {
        return code::NOT_INITIALIZED;
    }
    let handle = context as usize;
    if handle != 0 && !state.contexts.values().any(|&c| c == handle) {
        return code::INVALID_CONTEXT;
    }
    CURRENT_CONTEXT.with(|current| current.set(handle));
    code::SUCCESS
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> u32 {
    let state = state();
    try_code!(state.current());
    let used = state.live_bytes();
    // SAFETY: out-pointers from the caller.
    unsafe {
        let status = out(free, state.total_mem.saturating_sub(used) as usize);
        if status != code::SUCCESS {
            return status;
        }
        out(total, state.total_mem as usize)
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(device_ptr: *mut u64, size: usize) -> u32 {
    let mut state = state();
    let context = try_code!(state.current());
    if size == 0 {
        return code::INVALID_VALUE;
    }
    state.n_allocs += 1;
    if state.fail_alloc_at == Some(state.n_allocs)
        || state.live_bytes() + size as u64 > state.total_mem
    {
        return code::OUT_OF_MEMORY;
    }
    let base = state.next_address;
    state.next_address =
        base + (size as u64).next_multiple_of(DEVICE_GUARD_BYTES) + DEVICE_GUARD_BYTES;
    // Fresh device memory holds garbage, not zeros: code that reads before writing gets caught.
    let data = vec![0xA5; size];
    state.device_allocations.insert(
        base,
        DeviceAllocation {
            size: size as u64,
            context,
            data: Some(data),
        },
    );
    // SAFETY: out-pointer from the caller.
    unsafe { out(device_ptr, base) }
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemFree_v2(device_ptr: u64) -> u32 {
    let mut state = state();
    let context = try_code!(state.current());
    // A blocking call: pending work runs first (as the real driver synchronizes).
    let status = state.drain_all();
    match state.device_allocations.get_mut(&device_ptr) {
        Some(allocation) if allocation.data.is_some() && allocation.context == context => {
            allocation.data = None;
            status
        }
        Some(allocation) if allocation.data.is_some() => code::INVALID_CONTEXT,
        _ => code::INVALID_VALUE,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemHostAlloc(
    host_ptr: *mut *mut c_void,
    size: usize,
    flags: c_uint,
) -> u32 {
    let mut state = state();
    try_code!(state.current());
    if size == 0 || flags & !0x7 != 0 {
        return code::INVALID_VALUE;
    }
    let mut data = vec![0x5A; size];
    let address = data.as_mut_ptr() as usize;
    state.host_allocations.insert(address, data);
    // SAFETY: out-pointer from the caller.
    unsafe { out(host_ptr, address as *mut c_void) }
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemFreeHost(host_ptr: *mut c_void) -> u32 {
    let mut state = state();
    try_code!(state.current());
    let status = state.drain_all();
    match state.host_allocations.remove(&(host_ptr as usize)) {
        Some(_) => status,
        None => code::INVALID_VALUE,
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: u64,
    src: *const c_void,
    len: usize,
    stream: *mut c_void,
) -> u32 {
    let mut state = state();
    if len > 0 {
        if src.is_null() {
            return code::INVALID_VALUE;
        }
        try_code!(state.find(dst, len));
    }
    state.enqueue(
        stream as usize,
        Op::HostToDevice {
            dst,
            src: src as usize,
            len,
        },
    )
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: u64,
    len: usize,
    stream: *mut c_void,
) -> u32 {
    let mut state = state();
    if len > 0 {
        if dst.is_null() {
            return code::INVALID_VALUE;
        }
        try_code!(state.find(src, len));
    }
    state.enqueue(
        stream as usize,
        Op::DeviceToHost {
            dst: dst as usize,
            src,
            len,
        },
    )
}

#[unsafe(no_mangle)]
pub extern "C" fn cuMemcpyDtoDAsync_v2(dst: u64, src: u64, len: usize, stream: *mut c_void) -> u32 {
    let mut state = state();
    if len > 0 {
        try_code!(state.find(src, len));
        try_code!(state.find(dst, len));
    }
    state.enqueue(stream as usize, Op::DeviceToDevice { dst, src, len })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuStreamCreate(stream: *mut *mut c_void, _flags: c_uint) -> u32 {
    let mut state = state();
    let context = try_code!(state.current());
    let handle = state.handle();
    state.streams.insert(
        handle,
        Stream {
            context,
            queue: VecDeque::new(),
        },
    );
    // SAFETY: out-pointer from the caller.
    unsafe { out(stream, handle as *mut c_void) }
}

#[unsafe(no_mangle)]
pub extern "C" fn cuStreamSynchronize(stream: *mut c_void) -> u32 {
    let mut state = state();
    try_code!(state.current());
    if !state.streams.contains_key(&(stream as usize)) {
        return code::INVALID_HANDLE;
    }
    state.drain(stream as usize, None)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventCreate(event: *mut *mut c_void, _flags: c_uint) -> u32 {
    let mut state = state();
    try_code!(state.current());
    let handle = state.handle();
    state.events.insert(handle, None);
    // SAFETY: out-pointer from the caller.
    unsafe { out(event, handle as *mut c_void) }
}

#[unsafe(no_mangle)]
pub extern "C" fn cuEventRecord(event: *mut c_void, stream: *mut c_void) -> u32 {
    let mut state = state();
    let event = event as usize;
    if !state.events.contains_key(&event) {
        return code::INVALID_HANDLE;
    }
    let status = state.enqueue(stream as usize, Op::Record { event });
    if status == code::SUCCESS {
        state.events.insert(event, Some(stream as usize));
    }
    status
}

#[unsafe(no_mangle)]
pub extern "C" fn cuEventSynchronize(event: *mut c_void) -> u32 {
    let mut state = state();
    try_code!(state.current());
    match state.events.get(&(event as usize)) {
        None => code::INVALID_HANDLE,
        Some(None) => code::SUCCESS,
        Some(&Some(stream)) => state.drain(stream, Some(event as usize)),
    }
}

#[unsafe(no_mangle)]
pub extern "C" fn cuEventDestroy_v2(event: *mut c_void) -> u32 {
    let mut state = state();
    match state.events.remove(&(event as usize)) {
        Some(_) => code::SUCCESS,
        None => code::INVALID_HANDLE,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorString(error: u32, text: *mut *const c_char) -> u32 {
    let message: &'static [u8] = match error {
        code::SUCCESS => b"no error\0",
        code::INVALID_VALUE => b"invalid argument\0",
        code::OUT_OF_MEMORY => b"out of memory\0",
        code::NOT_INITIALIZED => b"initialization error\0",
        code::INVALID_CONTEXT => b"invalid device context\0",
        code::INVALID_HANDLE => b"invalid resource handle\0",
        code::ILLEGAL_ADDRESS => b"an illegal memory access was encountered\0",
        _ => b"unknown error\0",
    };
    // SAFETY: out-pointer from the caller; the message is static.
    unsafe { out(text, message.as_ptr().cast::<c_char>()) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetErrorName(error: u32, text: *mut *const c_char) -> u32 {
    // SAFETY: forwarded out-pointer.
    unsafe { cuGetErrorString(error, text) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The driver's state is one per process, and a blocking call drains every stream's queue
    /// (as the real driver synchronizes the device): tests that watch a queue would see another
    /// test's `cuMemFree` run their copies. Each test holds this for its whole run.
    static SERIAL: Mutex<()> = Mutex::new(());

    /// Takes [`SERIAL`], initialises the fake and makes device 0's context current on this
    /// thread; returns the guard and a new stream.
    fn setup() -> (MutexGuard<'static, ()>, *mut c_void) {
        let serial = SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        assert_eq!(cuInit(0), code::SUCCESS);
        let mut context = std::ptr::null_mut();
        // SAFETY: `context` is a valid out-pointer for the call.
        let retained = unsafe { cuDevicePrimaryCtxRetain(&mut context, 0) };
        assert_eq!(retained, code::SUCCESS);
        assert_eq!(cuCtxSetCurrent(context), code::SUCCESS);
        let mut stream = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        assert_eq!(unsafe { cuStreamCreate(&mut stream, 1) }, code::SUCCESS);
        (serial, stream)
    }

    fn alloc(size: usize) -> u64 {
        let mut device_ptr = 0u64;
        // SAFETY: `device_ptr` is a valid out-pointer for the call.
        let allocated = unsafe { cuMemAlloc_v2(&mut device_ptr, size) };
        assert_eq!(allocated, code::SUCCESS);
        device_ptr
    }

    /// The bug the fake exists for: reading a device→host copy before synchronizing gives the old
    /// bytes, not the copied ones.
    #[test]
    fn a_missing_synchronization_reads_wrong_bytes() {
        let (_serial, stream) = setup();
        let device_ptr = alloc(4096);
        let src = vec![7u8; 4096];
        let mut dst = vec![0u8; 4096];
        assert_eq!(
            cuMemcpyHtoDAsync_v2(device_ptr, src.as_ptr().cast(), 4096, stream),
            code::SUCCESS
        );
        assert_eq!(
            cuMemcpyDtoHAsync_v2(dst.as_mut_ptr().cast(), device_ptr, 4096, stream),
            code::SUCCESS
        );
        assert!(
            dst.iter().all(|&byte| byte == 0),
            "nothing arrives before a synchronization"
        );
        assert_eq!(cuStreamSynchronize(stream), code::SUCCESS);
        assert_eq!(dst, src);
    }

    #[test]
    fn an_event_synchronizes_up_to_its_record_only() {
        let (_serial, stream) = setup();
        let device_ptr = alloc(16);
        let (first, second) = (vec![1u8; 16], vec![2u8; 16]);
        let mut dst = vec![0u8; 16];
        let mut event = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        assert_eq!(unsafe { cuEventCreate(&mut event, 0) }, code::SUCCESS);
        assert_eq!(
            cuMemcpyHtoDAsync_v2(device_ptr, first.as_ptr().cast(), 16, stream),
            code::SUCCESS
        );
        assert_eq!(
            cuMemcpyDtoHAsync_v2(dst.as_mut_ptr().cast(), device_ptr, 16, stream),
            code::SUCCESS
        );
        assert_eq!(cuEventRecord(event, stream), code::SUCCESS);
        assert_eq!(
            cuMemcpyHtoDAsync_v2(device_ptr, second.as_ptr().cast(), 16, stream),
            code::SUCCESS
        );
        assert_eq!(cuEventSynchronize(event), code::SUCCESS);
        assert_eq!(dst, first);
        assert_eq!(cuStreamSynchronize(stream), code::SUCCESS);
        assert_eq!(
            cuMemcpyDtoHAsync_v2(dst.as_mut_ptr().cast(), device_ptr, 16, stream),
            code::SUCCESS
        );
        assert_eq!(cuStreamSynchronize(stream), code::SUCCESS);
        assert_eq!(dst, second);
        assert_eq!(cuEventDestroy_v2(event), code::SUCCESS);
    }

    #[test]
    fn use_after_free_double_free_and_bounds_are_reported() {
        let (_serial, stream) = setup();
        let device_ptr = alloc(1024);
        let mut dst = vec![0u8; 2048];
        assert_eq!(
            cuMemcpyDtoHAsync_v2(dst.as_mut_ptr().cast(), device_ptr, 2048, stream),
            code::INVALID_VALUE
        );
        assert_eq!(
            cuMemcpyDtoHAsync_v2(dst.as_mut_ptr().cast(), device_ptr + 1024, 1, stream),
            code::INVALID_VALUE
        );
        assert_eq!(cuMemFree_v2(device_ptr), code::SUCCESS);
        assert_eq!(
            cuMemcpyDtoHAsync_v2(dst.as_mut_ptr().cast(), device_ptr, 16, stream),
            code::ILLEGAL_ADDRESS
        );
        assert_eq!(cuMemFree_v2(device_ptr), code::INVALID_VALUE, "double free");
        assert_eq!(cuMemFree_v2(0x1234), code::INVALID_VALUE);
    }

    /// `cuMemFree` blocks like the real driver: a copy queued before it runs first, on live
    /// memory.
    #[test]
    fn a_blocking_free_runs_pending_copies_first() {
        let (_serial, stream) = setup();
        let device_ptr = alloc(64);
        let src = [3u8; 64];
        assert_eq!(
            cuMemcpyHtoDAsync_v2(device_ptr, src.as_ptr().cast(), 64, stream),
            code::SUCCESS
        );
        // cuMemFree blocks: the pending copy runs first, successfully.
        assert_eq!(cuMemFree_v2(device_ptr), code::SUCCESS);
        assert_eq!(cuStreamSynchronize(stream), code::SUCCESS);
    }

    #[test]
    fn no_current_context_is_an_error() {
        let (_serial, stream) = setup();
        let stream_handle = stream as usize;
        // A new thread has no current context.
        let handle = std::thread::spawn(move || {
            let mut device_ptr = 0u64;
            // SAFETY: valid out-pointer.
            let status = unsafe { cuMemAlloc_v2(&mut device_ptr, 16) };
            (status, cuStreamSynchronize(stream_handle as *mut c_void))
        });
        assert_eq!(
            handle.join().unwrap(),
            (code::INVALID_CONTEXT, code::INVALID_CONTEXT)
        );
    }

    #[test]
    fn fresh_device_memory_is_not_zero() {
        let (_serial, stream) = setup();
        let device_ptr = alloc(8);
        let mut dst = [0u8; 8];
        assert_eq!(
            cuMemcpyDtoHAsync_v2(dst.as_mut_ptr().cast(), device_ptr, 8, stream),
            code::SUCCESS
        );
        assert_eq!(cuStreamSynchronize(stream), code::SUCCESS);
        assert_eq!(dst, [0xA5; 8]);
    }
}
