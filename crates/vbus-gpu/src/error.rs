//! Errors of `vbus-gpu`.

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
}

impl Error {
    pub(crate) fn driver(call: &'static str, err: cudarc::driver::DriverError) -> Self {
        Self::Driver {
            call,
            code: format!("{err:?}"),
        }
    }
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
