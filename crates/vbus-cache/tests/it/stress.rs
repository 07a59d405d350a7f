//! 8 threads and 1 M mixed operations (puts, removes, pins, host and device gets) on shared keys,
//! write-through and write-back: every value read is a complete value of its key, versions never
//! go backwards for a reader, a thread's own keys always read back exactly as it last put them
//! (while other threads' puts evict them, and write them back), and the tiers stay within bounds.

use std::collections::HashMap;

use vbus_cache::{CacheKey, CacheManager, PolicyKind, WriteMode};

/// `key_idx`, a writer tag, and a body derived from both: a mixed or torn value fails `check`.
fn content(key_idx: u64, tag: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(600);
    bytes.extend_from_slice(&key_idx.to_le_bytes());
    bytes.extend_from_slice(&tag.to_le_bytes());
    let len = 16 + (tag % 500) as usize;
    while bytes.len() < len {
        bytes.push((key_idx ^ tag ^ bytes.len() as u64) as u8);
    }
    bytes
}

fn check(key_idx: u64, bytes: &[u8]) -> bool {
    bytes.len() >= 16
        && u64::from_le_bytes(bytes[..8].try_into().unwrap()) == key_idx
        && content(
            key_idx,
            u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
        ) == bytes
}

#[test]
fn threads_never_see_a_mixed_value_write_through() {
    storm(WriteMode::Through);
}

#[test]
fn threads_never_see_a_mixed_value_write_back() {
    storm(WriteMode::Back);
}

/// Keys each thread alone writes: their reads must match its own last put exactly.
const OWN_KEYS_PER_THREAD: u64 = 8;

fn storm(write_mode: WriteMode) {
    // Concurrency, not durability, is under test: L3 goes to memory where the OS offers it, so
    // a million operations do not wait on a disk's fsync.
    let dir = match tempfile::tempdir_in("/dev/shm") {
        Ok(dir) => dir,
        Err(_) => tempfile::tempdir().unwrap(),
    };
    let device = vbus_gpu::Device::open(&vbus_gpu::DeviceOptions {
        backend: crate::test_backend(),
        capacity_bytes: 16 << 20,
        host_capacity_bytes: 16 << 20,
        chunk_bytes: 4 << 20,
        ..vbus_gpu::DeviceOptions::default()
    })
    .unwrap();
    let cache = CacheManager::builder()
        .l3_dir(dir.path().join("L3"))
        .l1_device(device)
        .l1_capacity_bytes(8 * 1024)
        .l2_capacity_bytes(16 * 1024)
        .l2_shards(4)
        .l2_policy(PolicyKind::S3Fifo)
        .write_mode(write_mode)
        .build()
        .unwrap();
    const N_KEYS: u64 = 64;
    const N_THREADS: u64 = 8;
    const OPS_PER_THREAD: u64 = 125_000;
    std::thread::scope(|scope| {
        for thread_idx in 0..N_THREADS {
            let cache = &cache;
            scope.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(thread_idx);
                let mut seen: HashMap<u64, u64> = HashMap::new();
                let mut own: HashMap<u64, Vec<u8>> = HashMap::new();
                for op_idx in 0..OPS_PER_THREAD {
                    let key_idx = rng.u64(..N_KEYS);
                    let key = CacheKey::new("stress", &format!("k{key_idx}"));
                    if op_idx % 8 == 0 {
                        // One operation in eight on the thread's own keys.
                        let own_idx = N_KEYS
                            + thread_idx * OWN_KEYS_PER_THREAD
                            + rng.u64(..OWN_KEYS_PER_THREAD);
                        let own_key = CacheKey::new("stress", &format!("k{own_idx}"));
                        if rng.bool() {
                            let bytes = content(own_idx, thread_idx << 32 | op_idx);
                            cache.put(own_key, &bytes).unwrap();
                            own.insert(own_idx, bytes);
                        } else {
                            let got = cache.get(own_key).unwrap();
                            assert_eq!(
                                got.as_ref().map(|v| v.bytes()),
                                own.get(&own_idx).map(Vec::as_slice),
                                "k{own_idx} does not read back as its only writer put it"
                            );
                        }
                        continue;
                    }
                    match rng.u32(..100) {
                        0..=3 => {
                            cache
                                .put(key, &content(key_idx, thread_idx << 32 | op_idx))
                                .unwrap();
                        }
                        4 => {
                            cache.remove(key).unwrap();
                        }
                        5 => {
                            cache.pin(key.clone()).unwrap();
                            cache.unpin(key).unwrap();
                        }
                        6..=15 => {
                            if let Some(on_device) = cache.get_device(key).unwrap() {
                                let last = seen.entry(key_idx).or_insert(0);
                                assert!(
                                    on_device.version() >= *last,
                                    "k{key_idx} went back in time on the device"
                                );
                                *last = on_device.version();
                            }
                        }
                        _ => {
                            if let Some(value) = cache.get(key).unwrap() {
                                assert!(
                                    check(key_idx, value.bytes()),
                                    "a mixed or torn value of k{key_idx}"
                                );
                                let last = seen.entry(key_idx).or_insert(0);
                                assert!(value.version() >= *last, "k{key_idx} went back in time");
                                *last = value.version();
                            }
                        }
                    }
                    if op_idx % 10_000 == 0 {
                        let stats = cache.get_stats();
                        assert!(
                            stats.l1.used_bytes <= stats.l1.capacity_bytes,
                            "L1 over capacity"
                        );
                        assert!(
                            stats.l2.used_bytes <= stats.l2.capacity_bytes,
                            "L2 over capacity"
                        );
                    }
                }
            });
        }
    });
    let stats = cache.get_stats();
    // Every host get looks in L2 first: 84% of the shared-key operations (about 735,000).
    assert!(
        stats.l2.hits + stats.l2.misses >= 700_000,
        "L2 counted {} lookups",
        stats.l2.hits + stats.l2.misses
    );
    if write_mode == WriteMode::Back {
        assert!(stats.write_backs > 0, "L2 evictions wrote nothing back");
        assert_eq!(stats.write_back_failures, 0);
        assert!(stats.dirty_bytes <= stats.l2.capacity_bytes);
    }
    // After the storm and a flush, every key reads back as what L3 holds, from the host and the
    // device.
    cache.flush().unwrap();
    assert_eq!(cache.get_stats().dirty_entries, 0);
    for key_idx in 0..N_KEYS + N_THREADS * OWN_KEYS_PER_THREAD {
        let key = CacheKey::new("stress", &format!("k{key_idx}"));
        let from_cache = cache.get(key.clone()).unwrap().map(|v| v.bytes().to_vec());
        let from_disk = cache
            .store()
            .get_file_by_path("stress", &format!("k{key_idx}"))
            .unwrap();
        assert_eq!(from_cache, from_disk, "k{key_idx}");
        let from_device = cache.get_device(key).unwrap().map(|v| v.version());
        let disk_version = cache
            .store()
            .meta("stress", &format!("k{key_idx}"))
            .unwrap()
            .map(|m| m.version);
        assert_eq!(from_device, disk_version, "k{key_idx} on the device");
    }
}
