//! `CacheManager` through its public API.

mod crash;
mod l1;
mod manager;
mod model;
mod stress;

/// The device backend the GPU tests run on (`VBUS_GPU_TEST_BACKEND`, simulated by default).
pub fn test_backend() -> vbus_gpu::BackendChoice {
    vbus_gpu::BackendChoice::from_test_env().unwrap_or_else(|error| panic!("{error}"))
}
