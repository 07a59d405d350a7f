//! Running out of VRAM, a failed driver allocation, bad ranges and a missing driver are clean
//! errors, never panics.

use vbus_gpu::{BackendChoice, BackendKind, Device, DeviceOptions, Error};

use crate::{backend, device};

#[test]
fn running_out_of_vram_is_a_clean_error() {
    let device = device(32 << 20, 32 << 20);
    let first = device.alloc(24 << 20).unwrap();
    let err = device.alloc(16 << 20).unwrap_err();
    assert!(
        matches!(err, Error::OutOfMemory { requested_bytes, .. } if requested_bytes == 16 << 20),
        "{err}"
    );
    assert!(err.to_string().starts_with("out of VRAM"), "{err}");
    drop(first);
    device.alloc(16 << 20).unwrap();
}

#[test]
fn ranges_are_checked() {
    let device = device(16 << 20, 16 << 20);
    let mut buffer = device.alloc(100).unwrap();
    let mut other = device.alloc(100).unwrap();
    assert!(matches!(
        device.upload(&[0u8; 101], &mut buffer, 0),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        device.upload(&[0u8; 10], &mut buffer, 95),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        device.upload(&[0u8; 1], &mut buffer, u64::MAX),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        device.download(&buffer, 1, &mut [0u8; 100]),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        device.copy_device(&buffer, 50, &mut other, 0, 51),
        Err(Error::OutOfBounds { .. })
    ));
    let message = device
        .upload(&[0u8; 101], &mut buffer, 0)
        .unwrap_err()
        .to_string();
    assert_eq!(
        message,
        "copy of 101 bytes at offset 0 does not fit a destination of 100 bytes"
    );
}

#[test]
fn buffers_of_another_device_are_refused() {
    let (first, second) = (device(16 << 20, 16 << 20), device(16 << 20, 16 << 20));
    let mut buffer = first.alloc(10).unwrap();
    assert!(matches!(
        second.upload(&[1u8; 10], &mut buffer, 0),
        Err(Error::ForeignBuffer)
    ));
}

#[test]
fn a_missing_file_is_named() {
    let device = device(16 << 20, 16 << 20);
    let err = device
        .load_file(std::path::Path::new("/nonexistent/model.safetensors"))
        .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/model.safetensors"),
        "{err}"
    );
}

/// Without a driver: no panic anywhere, `cuda` is refused, `auto` falls back to the simulated
/// device. With one (the fake or a real GPU): it is listed and `auto` picks it.
#[test]
fn the_backend_follows_the_driver_and_never_panics() {
    let inventory = vbus_gpu::discover();
    let auto = Device::open(&DeviceOptions::default()).unwrap();
    if vbus_gpu::driver_present() {
        assert!(inventory.has_gpu(), "{inventory:?}");
        assert_eq!(auto.kind(), BackendKind::Cuda);
        assert!(inventory.devices[0].vram_free_bytes <= inventory.devices[0].vram_total_bytes);
    } else {
        assert!(!inventory.has_gpu() && inventory.driver.is_none());
        assert_eq!(auto.kind(), BackendKind::Simulated);
        let cuda = DeviceOptions {
            backend: BackendChoice::Cuda,
            ..DeviceOptions::default()
        };
        assert!(matches!(Device::open(&cuda), Err(Error::NoDriver)));
        assert!(matches!(
            vbus_gpu::measure_host_device_bandwidth(0, 1 << 20, 1),
            Err(Error::NoDriver)
        ));
    }
}

const FAIL_CHILD_ENV: &str = "VBUS_GPU_TEST_FAIL_CHILD";

/// On the fake driver the Nth `cuMemAlloc` can be made to fail; the pool turns it into a clean
/// error. The check runs in a child process that sets the failure (the fake reads it at `cuInit`).
/// On the simulated device the heap's capacity is the limit, checked the same way.
#[test]
fn a_failed_allocation_is_a_clean_error() {
    if std::env::var_os(FAIL_CHILD_ENV).is_some() {
        let device = device(64 << 20, 64 << 20);
        let err = device.alloc(1 << 20).unwrap_err();
        assert!(
            matches!(&err, Error::Driver { call: "cuMemAlloc", code } if code.contains("OUT_OF_MEMORY")),
            "{err}"
        );
        // The next allocation succeeds: the failure was one call, not a broken pool.
        device.alloc(1 << 20).unwrap();
        return;
    }
    let on_fake = backend() == BackendChoice::Cuda
        && vbus_gpu::discover()
            .devices
            .first()
            .is_some_and(|d| d.name.starts_with("VBUS fake CUDA"));
    if on_fake {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "errors::a_failed_allocation_is_a_clean_error",
                "--test-threads=1",
            ])
            .env(FAIL_CHILD_ENV, "1")
            .env("VBUS_FAKE_CUDA_FAIL_ALLOC_AT", "1")
            .status()
            .unwrap();
        assert!(status.success(), "the child failed: {status}");
    } else {
        let device = device(8 << 20, 8 << 20);
        let err = device.alloc(9 << 20).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
        device.alloc(8 << 20).unwrap();
    }
}

/// Running out of the page-locked pool names it and its capacity (a driver-backed host pool has no
/// "available" figure of its own, which once overflowed the sum).
#[test]
fn running_out_of_host_memory_names_the_capacity() {
    let device = device(8 << 20, 6 << 20);
    let _held = device.alloc_host(4 << 20).unwrap();
    let err = device.alloc_host(3 << 20).unwrap_err();
    assert!(
        matches!(
            err,
            Error::OutOfMemory { requested_bytes, allocated_bytes, capacity_bytes, .. }
                if (requested_bytes, allocated_bytes, capacity_bytes) == (3 << 20, 4 << 20, 6 << 20)
        ),
        "{err}"
    );
}

/// A read that fails part-way through a load (a directory opens, then refuses `read`) is an
/// error naming the path; everything in flight is waited for and every buffer returned.
#[test]
fn a_load_that_fails_part_way_returns_everything() {
    let device = device(64 << 20, 64 << 20);
    let dir = tempfile::tempdir().unwrap();
    let err = device.load_file(dir.path()).unwrap_err();
    assert!(matches!(err, Error::File { .. }), "{err}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
    let stats = device.stats();
    assert_eq!(
        (
            stats.vram.allocated_bytes,
            stats.host.allocated_bytes,
            stats.staging.allocated_bytes
        ),
        (0, 0, 0)
    );
    // The device still works.
    let mut buffer = device.alloc(3).unwrap();
    device.upload(b"abc", &mut buffer, 0).unwrap();
}

/// Backend names parse as the configuration spells them; anything else is refused by name.
#[test]
fn backend_names_parse_and_a_bad_one_is_named() {
    use vbus_gpu::BackendChoice;
    for (name, choice) in [
        ("auto", BackendChoice::Auto),
        ("cuda", BackendChoice::Cuda),
        ("simulated", BackendChoice::Simulated),
    ] {
        assert_eq!(name.parse::<BackendChoice>(), Ok(choice));
    }
    let err = "gpu0".parse::<BackendChoice>().unwrap_err();
    assert!(
        err.contains("\"gpu0\"") && err.contains("simulated"),
        "{err}"
    );
}
