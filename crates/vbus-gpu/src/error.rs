//! Errors of `vbus-gpu`.

use std::path::PathBuf;

/// What can go wrong in `vbus-gpu`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No CUDA driver library could be loaded on this machine.
    #[error("no CUDA driver library (libcuda) could be loaded")]
    NoDriver,
    /// A CUDA driver call failed.
    #[error("cuda driver call {call} failed: {code}")]
    Driver {
        /// The driver function or the operation that failed.
        call: &'static str,
        /// The driver's error code, as the driver names it.
        code: String,
    },
    /// A device index that the driver does not have.
    #[error("gpu device index {device_idx} does not exist; this machine has {n_devices} device(s)")]
    NoSuchDevice {
        /// The index asked for.
        device_idx: usize,
        /// How many devices the driver reports.
        n_devices: usize,
    },
    /// A pool cannot hold the allocation.
    #[error(
        "out of {what}: {requested_bytes} bytes requested, {allocated_bytes} of at most {capacity_bytes} \
         bytes in use"
    )]
    OutOfMemory {
        /// Which memory (`VRAM`, `page-locked host memory`).
        what: &'static str,
        /// The allocation asked for.
        requested_bytes: u64,
        /// Bytes in live allocations.
        allocated_bytes: u64,
        /// The most the pool may hold now.
        capacity_bytes: u64,
    },
    /// A copy's range does not fit its source or destination.
    #[error("copy of {len} bytes at offset {offset} does not fit a {what} of {size_bytes} bytes")]
    OutOfBounds {
        /// `source` or `destination`.
        what: &'static str,
        /// Offset asked for.
        offset: u64,
        /// Bytes to copy.
        len: u64,
        /// Size of the buffer.
        size_bytes: u64,
    },
    /// A buffer of another device was passed.
    #[error("the buffer belongs to another device")]
    ForeignBuffer,
    /// Reading a file into device memory failed.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A failed driver call. The code is the driver's enum name, so formatting the error calls
    /// nothing in the driver.
    pub(crate) fn driver(call: &'static str, err: cudarc::driver::DriverError) -> Self {
        Self::Driver {
            call,
            code: format!("{:?}", err.0),
        }
    }
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
