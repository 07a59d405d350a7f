use std::sync::Arc;

use vbus_store::{Error, EvictionHook, FileStore};

const KIB: usize = 1024;

#[test]
fn least_recently_used_files_are_evicted_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::builder(dir.path())
        .capacity_bytes(100 * KIB as u64)
        .open()
        .unwrap();
    for file_idx in 0..5 {
        store
            .store_file("d", &format!("f{file_idx}"), &vec![1u8; 20 * KIB])
            .unwrap();
    }
    // Reading f0 makes f1 the least recently used.
    store.get_file_by_path("d", "f0").unwrap().unwrap();
    store.store_file("d", "f5", &vec![1u8; 20 * KIB]).unwrap();
    assert!(store.has_file_by_path("d", "f0"));
    assert!(!store.has_file_by_path("d", "f1"));
    assert!(!dir.path().join("d/f1").exists());
    let stats = store.stats();
    assert_eq!(
        (stats.n_evictions, stats.evicted_bytes),
        (1, 20 * KIB as u64)
    );
    assert!(stats.used_bytes <= stats.capacity_bytes);
}

#[test]
fn pinned_files_are_never_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::builder(dir.path())
        .capacity_bytes(60 * KIB as u64)
        .open()
        .unwrap();
    store
        .store_file("d", "pinned", &vec![1u8; 20 * KIB])
        .unwrap();
    store.pin("d", "pinned").unwrap();
    for round in 0..10 {
        store
            .store_file("d", &format!("f{round}"), &vec![1u8; 20 * KIB])
            .unwrap();
        assert!(
            store.has_file_by_path("d", "pinned"),
            "evicted in round {round}"
        );
    }
    store.pin("d", "f9").unwrap();
    // Everything left is pinned: a new file does not fit and nothing pinned goes.
    store.pin("d", "f8").unwrap();
    let err = store
        .store_file("d", "no-room", &vec![1u8; 20 * KIB])
        .unwrap_err();
    assert!(matches!(err, Error::CapacityExhausted { .. }), "{err}");
    assert!(err.to_string().contains("d/no-room"), "{err}");
    assert!(!dir.path().join("d/no-room").exists());
    assert_eq!(
        std::fs::read_dir(dir.path().join(".vbus-staging"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn a_file_larger_than_the_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::builder(dir.path())
        .capacity_bytes(10)
        .open()
        .unwrap();
    let err = store.store_file("d", "big", &[0u8; 11]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                size_bytes: 11,
                capacity_bytes: 10,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn the_hook_keeps_the_only_copy() {
    struct KeepOdd;
    impl EvictionHook for KeepOdd {
        fn may_evict(&self, _dataset: &str, path: &str, _version: u64) -> bool {
            !path.ends_with(['1', '3', '5', '7', '9'])
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::builder(dir.path())
        .capacity_bytes(50 * KIB as u64)
        .open()
        .unwrap();
    store.set_eviction_hook(Arc::new(KeepOdd));
    for file_idx in 0..4 {
        store
            .store_file("d", &format!("f{file_idx}"), &vec![1u8; 10 * KIB])
            .unwrap();
    }
    for file_idx in 4..8 {
        store
            .store_file("d", &format!("f{file_idx}"), &vec![1u8; 10 * KIB])
            .unwrap();
    }
    for odd in ["f1", "f3", "f5", "f7"] {
        assert!(
            store.has_file_by_path("d", odd),
            "{odd} was evicted against the hook"
        );
    }
    assert!(!store.has_file_by_path("d", "f0") && !store.has_file_by_path("d", "f2"));
}

#[test]
fn a_lowered_capacity_is_enforced_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FileStore::open(dir.path()).unwrap();
        for file_idx in 0..10 {
            store
                .store_file("d", &format!("f{file_idx}"), &vec![1u8; 10 * KIB])
                .unwrap();
        }
    }
    let store = FileStore::builder(dir.path())
        .capacity_bytes(35 * KIB as u64)
        .open()
        .unwrap();
    let stats = store.stats();
    assert_eq!(stats.n_files, 3);
    let kept: Vec<String> = store
        .list("d")
        .unwrap()
        .into_iter()
        .map(|m| m.path)
        .collect();
    assert_eq!(kept, ["f7", "f8", "f9"], "the most recently written stay");
}
