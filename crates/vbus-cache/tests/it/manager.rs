use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use vbus_cache::{CacheKey, CacheManager, DirSource, Error, PolicyKind, Source, WriteMode};

fn cache(dir: &std::path::Path) -> CacheManager {
    CacheManager::builder()
        .l3_dir(dir.join("L3_DISK"))
        .build()
        .unwrap()
}

#[test]
fn put_get_remove_and_the_seed_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path());
    let first = cache.put("model_weights", b"v1").unwrap();
    // The value is durable at its final path in L3 and held in L2.
    assert_eq!(
        std::fs::read(dir.path().join("L3_DISK/default/model_weights")).unwrap(),
        b"v1"
    );
    assert_eq!(cache.get("model_weights").unwrap().unwrap().bytes(), b"v1");
    let second = cache.put("model_weights", b"v2").unwrap();
    assert!(second.version() > first.version());
    // A handle to the old value stays valid after the newer put.
    assert_eq!(first.bytes(), b"v1");
    assert_eq!(cache.get("model_weights").unwrap().unwrap().bytes(), b"v2");
    assert_eq!(cache.get(CacheKey::new("llama", "missing")).unwrap(), None);
    assert!(cache.contains("model_weights"));
    assert!(cache.remove("model_weights").unwrap());
    assert!(!cache.contains("model_weights"));
    assert_eq!(cache.get("model_weights").unwrap(), None);
    let stats = cache.get_stats();
    assert_eq!((stats.l2.hits, stats.l2.misses), (2, 2));
    assert!((stats.l2_hit_rate - 50.0).abs() < 1e-9, "{stats:?}");
    assert_eq!(stats.l1_hit_rate, 0.0);
}

#[test]
fn a_reopened_cache_serves_from_l3_and_promotes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let cache = cache(dir.path());
        cache
            .put(CacheKey::new("llama", "weights.bin"), &[7u8; 10_000])
            .unwrap();
    }
    let cache = cache(dir.path());
    assert_eq!(
        cache
            .get(CacheKey::new("llama", "weights.bin"))
            .unwrap()
            .unwrap()
            .len(),
        10_000
    );
    assert_eq!(
        cache
            .get(CacheKey::new("llama", "weights.bin"))
            .unwrap()
            .unwrap()
            .len(),
        10_000
    );
    let stats = cache.get_stats();
    assert_eq!(
        (stats.l3.hits, stats.promotions, stats.bytes_l3_to_l2),
        (1, 1, 10_000)
    );
    assert_eq!(stats.l2.hits, 1, "the second get is an L2 hit");
    assert!((stats.l3_hit_rate - 100.0).abs() < 1e-9);
}

#[test]
fn a_value_larger_than_l2_skips_it() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::builder()
        .l3_dir(dir.path().join("L3"))
        .l2_capacity_bytes(1000)
        .l2_shards(1)
        .build()
        .unwrap();
    cache.put("big", &[1u8; 5000]).unwrap();
    assert_eq!(cache.get_stats().l2.n_entries, 0);
    assert_eq!(cache.get("big").unwrap().unwrap().len(), 5000);
}

/// Counts fetches, slowly, so concurrent gets overlap.
struct SlowSource {
    inner: DirSource,
    n_fetches: AtomicU64,
}

impl Source for SlowSource {
    fn name(&self) -> &str {
        "slow"
    }
    fn fetch(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, vbus_cache::SourceError> {
        self.n_fetches.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(50));
        self.inner.fetch(key)
    }
}

#[test]
fn misses_go_to_the_source_once_for_concurrent_gets() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("MASTER_DB");
    std::fs::create_dir_all(origin.join("ds")).unwrap();
    std::fs::write(origin.join("ds/shared.bin"), b"from the origin").unwrap();
    let source = Arc::new(SlowSource {
        inner: DirSource::new(&origin),
        n_fetches: AtomicU64::new(0),
    });
    let cache = CacheManager::builder()
        .l3_dir(dir.path().join("L3"))
        .source(source.clone())
        .build()
        .unwrap();
    std::thread::scope(|scope| {
        for _ in 0..8 {
            let cache = &cache;
            scope.spawn(move || {
                let value = cache
                    .get(CacheKey::new("ds", "shared.bin"))
                    .unwrap()
                    .unwrap();
                assert_eq!(value.bytes(), b"from the origin");
            });
        }
    });
    assert_eq!(source.n_fetches.load(Ordering::SeqCst), 1, "single flight");
    // Now in L3 at its final path, and later gets never reach the source.
    assert_eq!(
        std::fs::read(dir.path().join("L3/ds/shared.bin")).unwrap(),
        b"from the origin"
    );
    cache
        .get(CacheKey::new("ds", "shared.bin"))
        .unwrap()
        .unwrap();
    assert_eq!(source.n_fetches.load(Ordering::SeqCst), 1);
    assert_eq!(cache.get(CacheKey::new("ds", "absent")).unwrap(), None);
    assert_eq!(cache.get_stats().source_fetches, 1);
}

/// L3 evicts values the source can give again, never a put's value (its only copy).
#[test]
fn l3_evicts_refetchable_values_only() {
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("origin");
    std::fs::create_dir_all(origin.join("ds")).unwrap();
    for file_idx in 0..4 {
        std::fs::write(
            origin.join(format!("ds/f{file_idx}")),
            vec![file_idx as u8; 300],
        )
        .unwrap();
    }
    let cache = CacheManager::builder()
        .l3_dir(dir.path().join("L3"))
        .l3_capacity_bytes(1000)
        .l2_capacity_bytes(0)
        .source(Arc::new(DirSource::new(&origin)))
        .build()
        .unwrap();
    cache.put("mine", &[9u8; 300]).unwrap();
    for file_idx in 0..4 {
        let value = cache
            .get(CacheKey::new("ds", &format!("f{file_idx}")))
            .unwrap()
            .unwrap();
        assert_eq!(value.bytes(), &[file_idx as u8; 300][..]);
    }
    assert!(
        cache.store().has_file_by_path("default", "mine"),
        "the put's only copy was evicted"
    );
    assert!(cache.get_stats().l3.n_evictions >= 2);
    // Evicted source values come back from the source.
    assert_eq!(
        cache
            .get(CacheKey::new("ds", "f0"))
            .unwrap()
            .unwrap()
            .bytes(),
        &[0u8; 300][..]
    );
    // Puts that would need the put's copy evicted are refused, cleanly.
    cache.put("mine-2", &[1u8; 300]).unwrap();
    cache.put("mine-3", &[1u8; 300]).unwrap();
    let err = cache.put("mine-4", &[1u8; 300]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Store(vbus_store::Error::CapacityExhausted { .. })
        ),
        "{err}"
    );
    for key in ["mine", "mine-2", "mine-3"] {
        assert!(cache.get(key).unwrap().is_some(), "{key}");
    }
}

#[test]
fn pins_hold_in_l2() {
    let dir = tempfile::tempdir().unwrap();
    let cache = CacheManager::builder()
        .l3_dir(dir.path().join("L3"))
        .l2_capacity_bytes(1000)
        .l2_shards(1)
        .l2_policy(PolicyKind::S3Fifo)
        .build()
        .unwrap();
    cache.put("keep", &[1u8; 400]).unwrap();
    assert!(cache.pin("keep").unwrap());
    for value_idx in 0..20 {
        cache
            .put(format!("other-{value_idx}").as_str(), &[2u8; 300])
            .unwrap();
    }
    let stats = cache.get_stats();
    assert_eq!(stats.l2.n_pinned, 1);
    assert!(stats.l2.n_evictions > 0);
    let hits_before = stats.l2.hits;
    cache.get("keep").unwrap().unwrap();
    assert_eq!(
        cache.get_stats().l2.hits,
        hits_before + 1,
        "the pinned value stayed in L2"
    );
    assert!(cache.unpin("keep").unwrap());
    assert!(!cache.pin("nothing").unwrap());
}

#[test]
fn prefetch_loads_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    {
        let cache = cache(dir.path());
        cache.put("a", b"aaa").unwrap();
        cache.put("b", b"bbb").unwrap();
    }
    let cache = cache(dir.path());
    assert_eq!(cache.prefetch(["a", "b", "absent"]), 3);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while cache.get_stats().l2.n_entries < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "prefetch did not load a and b"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let hits = cache.get_stats().l2.hits;
    cache.get("a").unwrap().unwrap();
    assert_eq!(cache.get_stats().l2.hits, hits + 1);
}

#[test]
fn a_cache_without_l3_is_refused() {
    let err = CacheManager::builder().build().unwrap_err();
    assert!(matches!(err, Error::NoL3Dir), "{err}");
    assert!(err.to_string().contains("CacheBuilder::l3_dir"), "{err}");
}

fn write_back_cache(
    dir: &std::path::Path,
    l2_capacity_bytes: u64,
    l3_capacity_bytes: u64,
) -> CacheManager {
    CacheManager::builder()
        .l3_dir(dir.join("L3_DISK"))
        .l2_capacity_bytes(l2_capacity_bytes)
        .l2_shards(1)
        .l3_capacity_bytes(l3_capacity_bytes)
        .write_mode(WriteMode::Back)
        .build()
        .unwrap()
}

#[test]
fn write_back_keeps_puts_in_memory_until_l2_evicts_them() {
    let dir = tempfile::tempdir().unwrap();
    let cache = write_back_cache(dir.path(), 4096, u64::MAX);
    let on_disk = |name: &str| dir.path().join("L3_DISK/default").join(name);
    let first = cache.put("a", &[1u8; 1024]).unwrap();
    assert!(!on_disk("a").exists(), "a write-back put touched L3");
    assert_eq!(cache.get("a").unwrap().unwrap().bytes(), &[1u8; 1024]);
    assert!(cache.contains("a"));
    let stats = cache.get_stats();
    assert_eq!((stats.dirty_entries, stats.dirty_bytes), (1, 1024));
    assert_eq!(stats.l3.n_entries, 0);

    // Four more values of 1 KiB: L2 (4 KiB) evicts `a`, which is written back at its version.
    for name in ["b", "c", "d", "e"] {
        cache.put(name, &[2u8; 1024]).unwrap();
    }
    assert_eq!(std::fs::read(on_disk("a")).unwrap(), vec![1u8; 1024]);
    assert_eq!(
        cache.store().meta("default", "a").unwrap().unwrap().version,
        first.version()
    );
    let stats = cache.get_stats();
    assert_eq!((stats.write_backs, stats.bytes_written_back), (1, 1024));
    assert_eq!(stats.dirty_entries, 4);
    // `a` now comes from L3, the same value.
    let again = cache.get("a").unwrap().unwrap();
    assert_eq!(
        (again.bytes(), again.version()),
        (&[1u8; 1024][..], first.version())
    );
    assert!(cache.get_stats().l3.hits >= 1);
}

#[test]
fn write_back_values_reach_l3_on_flush_and_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let cache = write_back_cache(dir.path(), 1 << 20, u64::MAX);
    cache.put("pinned", b"p").unwrap();
    assert!(cache.pin("pinned").unwrap(), "a dirty value can be pinned");
    cache.put("removed", b"r").unwrap();
    assert!(cache.remove("removed").unwrap());
    assert!(!cache.contains("removed"));
    cache.flush().unwrap();
    let meta = cache.store().meta("default", "pinned").unwrap().unwrap();
    assert!(meta.pinned, "the pin reached L3 with the value");
    assert!(!cache.store().has_file_by_path("default", "removed"));
    assert_eq!(cache.get_stats().dirty_entries, 0);
    // Still served from L2 after the flush.
    let l2_hits = cache.get_stats().l2.hits;
    assert_eq!(cache.get("pinned").unwrap().unwrap().bytes(), b"p");
    assert_eq!(cache.get_stats().l2.hits, l2_hits + 1);

    cache.put("at_drop", b"d").unwrap();
    drop(cache);
    let reopened = write_back_cache(dir.path(), 1 << 20, u64::MAX);
    assert_eq!(reopened.get("at_drop").unwrap().unwrap().bytes(), b"d");
    assert_eq!(reopened.get("pinned").unwrap().unwrap().bytes(), b"p");
}

#[test]
fn a_failed_write_back_keeps_the_value_dirty_and_readable() {
    let dir = tempfile::tempdir().unwrap();
    // L3 holds one 1000-byte value, L2 many.
    let cache = write_back_cache(dir.path(), 1 << 20, 1500);
    cache.put("first", &[1u8; 1000]).unwrap();
    cache.put("second", &[2u8; 1000]).unwrap();
    let err = cache.flush().unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Store(vbus_store::Error::CapacityExhausted { .. })
        ),
        "{err}"
    );
    let stats = cache.get_stats();
    assert_eq!(stats.dirty_entries, 1);
    assert_eq!(stats.write_back_failures, 1);
    assert_eq!(stats.l3.n_entries, 1);
    // Both values still read back: one from L3, one from memory.
    assert_eq!(cache.get("first").unwrap().unwrap().bytes(), &[1u8; 1000]);
    assert_eq!(cache.get("second").unwrap().unwrap().bytes(), &[2u8; 1000]);
    // Room made, the flush completes.
    let (written, dirty) = if cache.store().has_file_by_path("default", "first") {
        ("first", "second")
    } else {
        ("second", "first")
    };
    cache.remove(written).unwrap();
    cache.flush().unwrap();
    assert!(cache.store().has_file_by_path("default", dirty));
    assert_eq!(cache.get_stats().dirty_entries, 0);
}

#[test]
fn a_write_back_put_larger_than_l2_is_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let cache = write_back_cache(dir.path(), 1024, u64::MAX);
    cache.put("big", &[7u8; 2048]).unwrap();
    assert!(cache.store().has_file_by_path("default", "big"));
    assert_eq!(cache.get_stats().dirty_entries, 0);
    cache.put("small", &[8u8; 512]).unwrap();
    assert!(!cache.store().has_file_by_path("default", "small"));
    // A write-through put of a key with a dirty value supersedes it.
    cache.put("small", &[9u8; 4096]).unwrap();
    assert_eq!(cache.get_stats().dirty_entries, 0);
    assert_eq!(cache.get("small").unwrap().unwrap().bytes(), &[9u8; 4096]);
    assert_eq!(
        cache
            .store()
            .get_file_by_path("default", "small")
            .unwrap()
            .unwrap(),
        vec![9u8; 4096]
    );
}

#[test]
fn streamed_values_go_in_and_out_without_memory_tiers() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path());
    cache.put("big", b"old").unwrap();
    let mut writer = cache.writer("big").unwrap();
    for chunk in 0..64u8 {
        writer.write_all(&[chunk; 1024]).unwrap();
    }
    // Not visible before the commit.
    assert_eq!(cache.get("big").unwrap().unwrap().bytes(), b"old");
    let version = cache.commit("big", writer).unwrap();
    // Larger than the promotion limit: a file reader, no promotion.
    let l2_entries = cache.get_stats().l2.n_entries;
    match cache.open("big", 1024).unwrap().unwrap() {
        vbus_cache::Found::File(mut reader) => {
            assert_eq!(reader.meta().version, version);
            let mut bytes = Vec::new();
            reader.read_to_end(&mut bytes).unwrap();
            assert_eq!(bytes.len(), 65536);
            assert_eq!(&bytes[1024..1027], &[1, 1, 1]);
        }
        vbus_cache::Found::Memory(_) => panic!("a value beyond the limit came from memory"),
    }
    assert_eq!(cache.get_stats().l2.n_entries, l2_entries);
    // A get promotes it; then open answers from memory.
    assert_eq!(cache.get("big").unwrap().unwrap().len(), 65536);
    assert!(matches!(
        cache.open("big", 1024).unwrap(),
        Some(vbus_cache::Found::Memory(_))
    ));
    // Small enough: from memory, promoted.
    cache.put("small", b"tiny").unwrap();
    assert!(
        matches!(cache.open("small", 1024).unwrap(), Some(vbus_cache::Found::Memory(v)) if v.bytes() == b"tiny")
    );
    assert!(cache.open("missing", 1024).unwrap().is_none());
    let listed = cache.list("default").unwrap();
    let paths: Vec<&str> = listed.iter().map(|l| l.path.as_str()).collect();
    assert_eq!(paths, ["big", "small"]);
}

#[test]
fn listings_include_dirty_values() {
    let dir = tempfile::tempdir().unwrap();
    let cache = write_back_cache(dir.path(), 1 << 20, u64::MAX);
    cache.put(CacheKey::new("ds", "a"), b"1").unwrap();
    let listed = cache.list("ds").unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].dirty);
    cache.flush().unwrap();
    assert!(!cache.list("ds").unwrap()[0].dirty);
}

/// Issue 20: a value whose L3 file is damaged is never served from it; with a source, the get
/// (whole, or opened for streaming) fetches a good copy again and L3 holds it after.
#[test]
fn a_damaged_l3_copy_is_fetched_again_from_the_source() {
    use std::os::unix::fs::FileExt as _;
    let dir = tempfile::tempdir().unwrap();
    let origin = dir.path().join("MASTER_DB");
    std::fs::create_dir_all(origin.join("ds")).unwrap();
    let small = b"from the origin".to_vec();
    let large: Vec<u8> = (0..3u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(origin.join("ds/small"), &small).unwrap();
    std::fs::write(origin.join("ds/large"), &large).unwrap();
    let cache = CacheManager::builder()
        .l3_dir(dir.path().join("L3"))
        .l2_capacity_bytes(0)
        .source(Arc::new(DirSource::new(&origin)))
        .build()
        .unwrap();
    for (name, value) in [("small", &small), ("large", &large)] {
        let key = CacheKey::new("ds", name);
        assert_eq!(cache.get(key.clone()).unwrap().unwrap().bytes(), &value[..]);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("L3/ds").join(name))
            .unwrap();
        file.write_all_at(&[value[3] ^ 0x55], 3).unwrap();
        drop(file);
        let again = if name == "small" {
            cache.get(key.clone()).unwrap().unwrap().bytes().to_vec()
        } else {
            match cache.open(key.clone(), 1 << 20).unwrap().unwrap() {
                vbus_cache::Found::Memory(value) => value.bytes().to_vec(),
                vbus_cache::Found::File(mut reader) => {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut reader, &mut bytes).unwrap();
                    bytes
                }
            }
        };
        assert!(again == *value, "{name}: the damaged copy was served");
        assert_eq!(
            std::fs::read(dir.path().join("L3/ds").join(name)).unwrap(),
            *value,
            "{name}: L3 holds a good copy again"
        );
    }
    assert_eq!(cache.store().stats().n_checksum_failures, 2);
}

#[test]
fn a_values_kind_travels_with_it_through_every_tier() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [WriteMode::Through, WriteMode::Back] {
        let l3 = dir.path().join(mode.as_str());
        {
            let cache = CacheManager::builder()
                .l3_dir(&l3)
                .write_mode(mode)
                .build()
                .unwrap();
            assert_eq!(cache.put_kind("array", b"a", 1).unwrap().kind(), 1);
            assert_eq!(cache.put("plain", b"p").unwrap().kind(), 0);
            // From L2 (a dirty value in write-back mode).
            assert_eq!(cache.get("array").unwrap().unwrap().kind(), 1);
            cache.flush().unwrap();
            let meta = cache.store().meta("default", "array").unwrap().unwrap();
            assert_eq!(meta.kind, 1, "{mode:?}: L3's index");
        }
        // From L3, after a reopen.
        let cache = CacheManager::builder().l3_dir(&l3).build().unwrap();
        assert_eq!(cache.get("array").unwrap().unwrap().kind(), 1, "{mode:?}");
        assert_eq!(cache.get("plain").unwrap().unwrap().kind(), 0, "{mode:?}");
        // A put without a kind replaces it.
        cache.put("array", b"bytes now").unwrap();
        assert_eq!(cache.get("array").unwrap().unwrap().kind(), 0);
    }
}
