//! Threads putting, getting and removing shared keys: every value read is a complete value of
//! its key, versions never go backwards for a reader, and the tiers stay within bounds.

use std::collections::HashMap;

use vbus_cache::{CacheKey, CacheManager, PolicyKind};

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
fn threads_never_see_a_mixed_value() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::builder()
        .l3_dir(dir.path().join("L3"))
        .l2_capacity_bytes(16 * 1024)
        .l2_shards(4)
        .l2_policy(PolicyKind::S3Fifo)
        .build()
        .unwrap();
    const N_KEYS: u64 = 24;
    std::thread::scope(|scope| {
        for thread_idx in 0..4u64 {
            let cache = &cache;
            scope.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(thread_idx);
                let mut seen: HashMap<u64, u64> = HashMap::new();
                for op_idx in 0..2500u64 {
                    let key_idx = rng.u64(..N_KEYS);
                    let key = CacheKey::new("stress", &format!("k{key_idx}"));
                    match rng.u32(..10) {
                        0..=2 => {
                            cache
                                .put(key, &content(key_idx, thread_idx << 32 | op_idx))
                                .unwrap();
                        }
                        3 => {
                            cache.remove(key).unwrap();
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
                }
            });
        }
    });
    let stats = cache.get_stats();
    assert!(stats.l2.used_bytes <= stats.l2.capacity_bytes);
    // After the storm, every key reads back as what L3 holds.
    for key_idx in 0..N_KEYS {
        let key = CacheKey::new("stress", &format!("k{key_idx}"));
        let from_cache = cache.get(key.clone()).unwrap().map(|v| v.bytes().to_vec());
        let from_disk = cache
            .store()
            .get_file_by_path("stress", &format!("k{key_idx}"))
            .unwrap();
        assert_eq!(from_cache, from_disk, "k{key_idx}");
    }
}
