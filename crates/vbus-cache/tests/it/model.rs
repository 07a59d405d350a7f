//! Random puts, gets, removes, pins, flushes and reopens against a map, write-through and
//! write-back: every get returns the latest value or nothing, no tier exceeds its capacity, and
//! nothing put is lost.

use std::collections::HashMap;

use vbus_cache::{CacheKey, CacheManager, PolicyKind, WriteMode};

fn run(policy: PolicyKind, write_mode: WriteMode, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        CacheManager::builder()
            .l3_dir(dir.path().join("L3"))
            .l2_capacity_bytes(4 * 2048)
            .l2_shards(4)
            .l2_policy(policy)
            .write_mode(write_mode)
            .build()
            .unwrap()
    };
    let mut cache = Some(open());
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut model: HashMap<CacheKey, Vec<u8>> = HashMap::new();
    let keys: Vec<CacheKey> = (0..40)
        .map(|key_idx| CacheKey::new(&format!("ds{}", key_idx % 3), &format!("k{key_idx}")))
        .collect();
    for op_idx in 0..1500 {
        let context = format!(
            "{} {} seed {seed} op {op_idx}",
            policy.as_str(),
            write_mode.as_str()
        );
        let key = keys[rng.usize(..keys.len())].clone();
        let handle = cache.as_ref().unwrap();
        match rng.u32(..100) {
            0..=34 => {
                let bytes: Vec<u8> = (0..rng.usize(..1500)).map(|_| rng.u8(..)).collect();
                handle.put(key.clone(), &bytes).unwrap();
                model.insert(key, bytes);
            }
            35..=79 => {
                let got = handle.get(key.clone()).unwrap();
                assert_eq!(
                    got.as_ref().map(|v| v.bytes()),
                    model.get(&key).map(Vec::as_slice),
                    "{context}: get {key}"
                );
            }
            80..=89 => {
                assert_eq!(
                    handle.remove(key.clone()).unwrap(),
                    model.remove(&key).is_some(),
                    "{context}: remove"
                );
            }
            90..=92 => {
                let pinned = handle.pin(key.clone()).unwrap();
                assert_eq!(pinned, model.contains_key(&key), "{context}: pin");
                if rng.bool() {
                    handle.unpin(key.clone()).unwrap();
                }
            }
            93..=96 => {
                handle.flush().unwrap();
                assert_eq!(handle.get_stats().dirty_entries, 0, "{context}: flush");
            }
            _ => {
                // Dropping the cache writes its dirty values back.
                drop(cache.take());
                cache = Some(open());
            }
        }
        let handle = cache.as_ref().unwrap();
        let stats = handle.get_stats();
        assert!(
            stats.l2.used_bytes <= stats.l2.capacity_bytes,
            "{context}: L2 over capacity"
        );
        assert!(
            stats.dirty_bytes <= stats.l2.capacity_bytes,
            "{context}: dirty bytes over L2's capacity"
        );
        match write_mode {
            WriteMode::Through => assert_eq!(
                stats.l3.n_entries,
                model.len() as u64,
                "{context}: L3 holds every put value"
            ),
            WriteMode::Back => assert_eq!(stats.write_back_failures, 0, "{context}"),
        }
        for key in model.keys() {
            assert!(handle.contains(key.clone()), "{context}: {key} was lost");
        }
    }
    // Everything reaches L3 at the end, whatever the mode.
    drop(cache.take());
    let reopened = open();
    for (key, bytes) in &model {
        assert_eq!(
            reopened
                .store()
                .get_file_by_path(key.dataset(), key.path())
                .unwrap()
                .as_deref(),
            Some(bytes.as_slice()),
            "{key} after the last reopen"
        );
    }
    assert_eq!(reopened.get_stats().l3.n_entries, model.len() as u64);
}

#[test]
fn random_operations_agree_with_a_map() {
    for (policy, seed) in [
        (PolicyKind::Lru, 1),
        (PolicyKind::S3Fifo, 2),
        (PolicyKind::Sieve, 3),
    ] {
        run(policy, WriteMode::Through, seed);
        run(policy, WriteMode::Back, seed + 10);
    }
}
