//! L1 on the device `VBUS_GPU_TEST_BACKEND` names (the simulated device by default).

use vbus_cache::{CacheManager, Error};
use vbus_gpu::{Device, DeviceOptions};

fn device() -> Device {
    Device::open(&DeviceOptions {
        backend: crate::test_backend(),
        capacity_bytes: 64 << 20,
        host_capacity_bytes: 64 << 20,
        chunk_bytes: 8 << 20,
        ..DeviceOptions::default()
    })
    .unwrap()
}

fn download(device: &Device, value: &vbus_cache::DeviceValue) -> Vec<u8> {
    let mut bytes = vec![0u8; value.buffer().len() as usize];
    device.download(value.buffer(), 0, &mut bytes).unwrap();
    bytes
}

#[test]
fn a_device_get_hands_out_the_l1_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let device = device();
    let cache = CacheManager::builder()
        .l3_dir(dir.path().join("L3"))
        .l1_device(device.clone())
        .l1_capacity_bytes(1 << 20)
        .build()
        .unwrap();
    let placed = cache.put_device("weights", &[3u8; 5000]).unwrap();
    let first = cache.get_device("weights").unwrap().unwrap();
    let second = cache.get_device("weights").unwrap().unwrap();
    // The same buffer, no copy.
    assert!(std::sync::Arc::ptr_eq(&first, &second) && std::sync::Arc::ptr_eq(&placed, &first));
    assert_eq!(download(&device, &first), vec![3u8; 5000]);
    let stats = cache.get_stats();
    assert_eq!((stats.l1.hits, stats.promotions_to_l1), (2, 1));
    assert!((stats.l1_hit_rate - 100.0).abs() < 1e-9);

    // A newer put replaces the device copy on the next device get; the old handle stays valid.
    let newer = cache.put("weights", &[4u8; 5000]).unwrap();
    let refreshed = cache.get_device("weights").unwrap().unwrap();
    assert_eq!(refreshed.version(), newer.version());
    assert_eq!(download(&device, &refreshed), vec![4u8; 5000]);
    assert_eq!(download(&device, &first), vec![3u8; 5000]);

    assert!(cache.remove("weights").unwrap());
    assert!(cache.get_device("weights").unwrap().is_none());
    assert_eq!(cache.get_stats().l1.n_entries, 0);
}

#[test]
fn l1_victims_go_back_to_l2_and_host_reads_copy_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let cache = CacheManager::builder()
            .l3_dir(dir.path().join("L3"))
            .build()
            .unwrap();
        for name in ["a", "b", "c"] {
            cache.put(name, &[name.as_bytes()[0]; 1000]).unwrap();
        }
    }
    let device = device();
    let cache = CacheManager::builder()
        .l3_dir(dir.path().join("L3"))
        .l1_device(device.clone())
        .l1_capacity_bytes(2000)
        .l2_capacity_bytes(1000)
        .l2_shards(1)
        .build()
        .unwrap();
    for name in ["a", "b", "c"] {
        let on_device = cache.get_device(name).unwrap().unwrap();
        assert_eq!(
            download(&device, &on_device),
            vec![name.as_bytes()[0]; 1000]
        );
    }
    let stats = cache.get_stats();
    assert_eq!(stats.l1.n_evictions, 1, "L1 holds two of the three");
    assert_eq!(
        stats.demotions_from_l1, 1,
        "the victim went back to L2, which had lost it"
    );
    assert!(stats.l1.used_bytes <= 2000 && stats.l2.used_bytes <= 1000);
    // "a" was demoted into L2: a host get hits there.
    let l2_hits = stats.l2.hits;
    assert_eq!(cache.get("a").unwrap().unwrap().bytes(), &[b'a'; 1000][..]);
    assert_eq!(cache.get_stats().l2.hits, l2_hits + 1);
    // "c" is in L1 and not in L2: a host get copies it back from the device.
    let from_l1 = cache.get_stats().bytes_from_l1;
    assert_eq!(cache.get("c").unwrap().unwrap().bytes(), &[b'c'; 1000][..]);
    assert!(cache.get_stats().bytes_from_l1 >= from_l1 + 1000);
}

#[test]
fn device_gets_need_l1() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::builder()
        .l3_dir(dir.path().join("L3"))
        .build()
        .unwrap();
    assert!(matches!(cache.get_device("x"), Err(Error::NoL1)));
}

#[test]
fn a_write_back_value_on_the_device_stays_current_once_written_back() {
    let dir = tempfile::tempdir().unwrap();
    let device = device();
    let cache = CacheManager::builder()
        .l3_dir(dir.path().join("L3"))
        .l1_device(device.clone())
        .l1_capacity_bytes(1 << 20)
        .write_mode(vbus_cache::WriteMode::Back)
        .build()
        .unwrap();
    let placed = cache.put_device("weights", &[5u8; 3000]).unwrap();
    assert!(!cache.store().has_file_by_path("default", "weights"));
    cache.flush().unwrap();
    // L3 now holds the value at the version L1 holds: the L1 buffer is still the answer.
    assert_eq!(
        cache
            .store()
            .meta("default", "weights")
            .unwrap()
            .unwrap()
            .version,
        placed.version()
    );
    let again = cache.get_device("weights").unwrap().unwrap();
    assert!(std::sync::Arc::ptr_eq(&placed, &again));
    assert_eq!(download(&device, &again), vec![5u8; 3000]);
    assert_eq!(cache.get_stats().promotions_to_l1, 1);
}

/// With a CUDA L1, large values live in the device's page-locked pool wherever they come from (a
/// put, L3, the device), small ones on the heap; on the simulated device all stay on the heap.
/// A full pool only sends values to the heap. Every path keeps the bytes exact, and every
/// page-locked byte goes back to the pool with the last handle.
#[test]
fn large_values_live_in_page_locked_memory_with_a_cuda_l1() {
    let dir = tempfile::tempdir().unwrap();
    let device = device();
    let cuda = device.kind() == vbus_gpu::BackendKind::Cuda;
    // Values take page-locked memory only from chunks the pool already holds.
    device.grow_host_pool(8 << 20).unwrap();
    let big: Vec<u8> = (0..(1u32 << 20) + 3).map(|i| (i % 251) as u8).collect();
    let open = |l2_capacity_bytes: u64| {
        CacheManager::builder()
            .l3_dir(dir.path().join("L3"))
            .l1_device(device.clone())
            .l1_capacity_bytes(4 << 20)
            .l2_capacity_bytes(l2_capacity_bytes)
            .build()
            .unwrap()
    };
    {
        let cache = open(8 << 20);
        let put = cache.put("big", &big).unwrap();
        assert_eq!((put.bytes(), put.is_page_locked()), (&big[..], cuda));
        let small = cache.put("small", &[7u8; 1000]).unwrap();
        assert!(!small.is_page_locked());
        assert_eq!(device.stats().host.allocated_bytes > 0, cuda);
    }
    assert_eq!(
        device.stats().host.allocated_bytes,
        0,
        "the pool got it all back"
    );
    {
        // From L3, then to the device and back: L2 off, so the host read is answered by L1.
        let cache = open(8 << 20);
        let loaded = cache.get("big").unwrap().unwrap();
        assert_eq!((loaded.bytes(), loaded.is_page_locked()), (&big[..], cuda));
        drop(cache);
        let cache = open(0);
        let on_device = cache.get_device("big").unwrap().unwrap();
        assert_eq!(download(&device, &on_device), big);
        let from_l1 = cache.get("big").unwrap().unwrap();
        assert_eq!(
            (from_l1.bytes(), from_l1.is_page_locked()),
            (&big[..], cuda)
        );
        assert!(cache.get_stats().l1.hits >= 1);
        drop(loaded);
    }
    assert_eq!(device.stats().host.allocated_bytes, 0);
    // The pool full: the heap takes the value, and nothing else changes.
    let hog = device.alloc_host(64 << 20).unwrap();
    let cache = open(8 << 20);
    let put = cache.put("big", &big[1..]).unwrap();
    assert_eq!((put.bytes(), put.is_page_locked()), (&big[1..], false));
    let on_device = cache.get_device("big").unwrap().unwrap();
    assert_eq!(download(&device, &on_device), &big[1..]);
    drop(hog);
}

#[test]
fn a_values_kind_survives_l1() {
    let dir = tempfile::tempdir().unwrap();
    let device = device();
    let cache = CacheManager::builder()
        .l3_dir(dir.path().join("L3"))
        .l1_device(device.clone())
        .l1_capacity_bytes(1 << 20)
        .l2_capacity_bytes(0)
        .build()
        .unwrap();
    assert_eq!(
        cache.put_device_kind("t", &[1u8; 100], 2).unwrap().kind(),
        2
    );
    assert_eq!(cache.get_device("t").unwrap().unwrap().kind(), 2);
    // A host read of the L1 copy (no L2) keeps it too.
    assert_eq!(cache.get("t").unwrap().unwrap().kind(), 2);
}
