//! `vbus-gpu` through its public API, on the backend `VBUS_GPU_TEST_BACKEND` names: `simulated`
//! (the default) or `cuda` (the fake driver through `LD_LIBRARY_PATH`, as `scripts/test.sh` runs
//! it, or a real GPU).

mod errors;
mod pool;
mod roundtrip;

use vbus_gpu::{BackendChoice, BackendKind, Device, DeviceOptions};

/// The backend under test.
pub fn backend() -> BackendChoice {
    BackendChoice::from_test_env().unwrap_or_else(|error| panic!("{error}"))
}

/// A device of the backend under test with the given VRAM and host capacities.
pub fn device(capacity_bytes: u64, host_capacity_bytes: u64) -> Device {
    let device = Device::open(&DeviceOptions {
        backend: backend(),
        capacity_bytes,
        host_capacity_bytes,
        chunk_bytes: 64 << 20,
        reserve_bytes: 0,
        ..DeviceOptions::default()
    })
    .expect("the device under test opens");
    let expected = match backend() {
        BackendChoice::Cuda => BackendKind::Cuda,
        _ => BackendKind::Simulated,
    };
    assert_eq!(device.kind(), expected);
    device
}

/// `len` bytes no compressor or lucky zero-fill could fake.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Equality without printing gigabytes when it fails.
pub fn assert_same(actual: &[u8], expected: &[u8], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    if let Some(position) = actual.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "{what}: first difference at byte {position} of {}",
            expected.len()
        );
    }
}
