//! `CacheManager` through its public API.

mod crash;
mod l1;
mod manager;
mod model;
mod stress;

/// The device backend the GPU tests run on, from `VBUS_GPU_TEST_BACKEND`: `simulated` (the
/// default), or `cuda` (the fake driver through `LD_LIBRARY_PATH`, as `scripts/test.sh` runs it,
/// or a real GPU).
pub fn test_backend() -> vbus_gpu::BackendChoice {
    std::env::var("VBUS_GPU_TEST_BACKEND").map_or(vbus_gpu::BackendChoice::Simulated, |name| {
        name.parse()
            .unwrap_or_else(|error| panic!("VBUS_GPU_TEST_BACKEND: {error}"))
    })
}
