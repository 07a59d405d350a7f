//! Random bytes round-trip bit-exactly through every path, for sizes 0, 1, 4095, 4096,
//! 1 MiB + 7 and 1 GiB.

use std::io::Write as _;

use vbus_gpu::Device;

use crate::{assert_same, device, random_bytes};

/// Every path for one size: pageable up and down (staged), page-locked up and down (direct),
/// device to device, file to device, and copies at an offset.
fn round_trip_every_path(device: &Device, len: usize, seed: u64) {
    let bytes = random_bytes(len, seed);
    let what = |path: &str| format!("{len} bytes, {path}");

    let mut on_device = device.alloc(len as u64).unwrap();
    device.upload(&bytes, &mut on_device, 0).unwrap();
    let mut back = vec![0u8; len];
    device.download(&on_device, 0, &mut back).unwrap();
    assert_same(&back, &bytes, &what("pageable"));

    let mut pinned = device.alloc_host(len as u64).unwrap();
    pinned.copy_from_slice(&bytes);
    let mut on_device_2 = device.alloc(len as u64).unwrap();
    device.upload(&pinned, &mut on_device_2, 0).unwrap();
    let mut pinned_back = device.alloc_host(len as u64).unwrap();
    device.download(&on_device_2, 0, &mut pinned_back).unwrap();
    assert_same(&pinned_back, &bytes, &what("page-locked"));
    drop((pinned, pinned_back, on_device_2));

    let mut copied = device.alloc(len as u64).unwrap();
    device
        .copy_device(&on_device, 0, &mut copied, 0, len as u64)
        .unwrap();
    drop(on_device);
    back.fill(0);
    device.download(&copied, 0, &mut back).unwrap();
    assert_same(&back, &bytes, &what("device to device"));
    drop(copied);

    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&bytes).unwrap();
    file.flush().unwrap();
    let loaded = device.load_file(file.path()).unwrap();
    assert_eq!(loaded.len(), len as u64);
    back.fill(0);
    device.download(&loaded, 0, &mut back).unwrap();
    assert_same(&back, &bytes, &what("file to device"));
    drop(loaded);

    // At an offset inside a larger buffer, and back out of the middle.
    let mut larger = device.alloc(len as u64 + 300).unwrap();
    device.upload(&bytes, &mut larger, 123).unwrap();
    back.fill(0);
    device.download(&larger, 123, &mut back).unwrap();
    assert_same(&back, &bytes, &what("at offset 123"));
}

#[test]
fn small_and_odd_sizes_round_trip_through_every_path() {
    let device = device(256 << 20, 256 << 20);
    for (seed, len) in [0usize, 1, 4095, 4096, (1 << 20) + 7, (24 << 20) + 3]
        .into_iter()
        .enumerate()
    {
        round_trip_every_path(&device, len, seed as u64 + 1);
    }
    let stats = device.stats();
    assert_eq!(
        stats.vram.allocated_bytes, 0,
        "every device buffer was returned"
    );
    assert_eq!(stats.vram.n_allocations, 0);
}

#[test]
fn a_gibibyte_round_trips_through_every_path() {
    let device = device((2 << 30) + (512 << 20), (2 << 30) + (256 << 20));
    round_trip_every_path(&device, 1 << 30, 99);
}

#[test]
fn partial_ranges_land_where_asked() {
    let device = device(64 << 20, 64 << 20);
    let mut buffer = device.alloc(10_000).unwrap();
    device.upload(&[1u8; 10_000], &mut buffer, 0).unwrap();
    device.upload(&[2u8; 100], &mut buffer, 5_000).unwrap();
    let mut back = vec![0u8; 10_000];
    device.download(&buffer, 0, &mut back).unwrap();
    assert!(back[..5_000].iter().all(|&b| b == 1));
    assert!(back[5_000..5_100].iter().all(|&b| b == 2));
    assert!(back[5_100..].iter().all(|&b| b == 1));
    let mut other = device.alloc(300).unwrap();
    device
        .copy_device(&buffer, 4_950, &mut other, 0, 300)
        .unwrap();
    let mut middle = vec![0u8; 300];
    device.download(&other, 0, &mut middle).unwrap();
    assert_eq!(&middle[..50], &[1u8; 50]);
    assert_eq!(&middle[50..150], &[2u8; 100]);
    assert_eq!(&middle[150..], &[1u8; 150]);
}

/// The staging ring and a file load's slots come from the copy engine's own pool, so a host pool
/// far smaller than them (or full) never stops a pageable copy or a load.
#[test]
fn a_small_host_pool_never_stops_a_copy() {
    let device = device(256 << 20, 1 << 20);
    let _full_host_pool = device.alloc_host(1 << 20).unwrap();
    let len = (40 << 20) + 5;
    let bytes = random_bytes(len, 7);
    let mut on_device = device.alloc(len as u64).unwrap();
    device.upload(&bytes, &mut on_device, 0).unwrap();
    let mut back = vec![0u8; len];
    device.download(&on_device, 0, &mut back).unwrap();
    assert_same(&back, &bytes, "pageable, host pool full");
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&bytes).unwrap();
    file.flush().unwrap();
    // Two loads at once share the staging pool by taking turns.
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let loaded = device.load_file(file.path()).unwrap();
                let mut back = vec![0u8; len];
                device.download(&loaded, 0, &mut back).unwrap();
                assert_same(&back, &bytes, "file to device, host pool full");
            });
        }
    });
    let stats = device.stats();
    assert_eq!(
        stats.host.allocated_bytes,
        1 << 20,
        "only the test's buffer"
    );
    assert!(stats.staging.allocated_bytes <= 4 * vbus_gpu::STAGING_SLOT_BYTES);
}
