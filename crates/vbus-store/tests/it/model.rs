//! Random stores, reads, removes, pins and reopens against a `HashMap` model.

use std::collections::HashMap;
use std::io::Write as _;

use vbus_store::FileStore;

use crate::support::content;

#[derive(Debug, Clone, PartialEq)]
struct Modelled {
    bytes: Vec<u8>,
    version: u64,
    pinned: bool,
}

fn run(seed: u64, n_ops: usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut store = Some(FileStore::open(dir.path()).unwrap());
    let mut model: HashMap<(String, String), Modelled> = HashMap::new();
    let keys: Vec<(String, String)> = (0..24)
        .map(|key_idx| {
            (
                format!("ds{}", key_idx % 3),
                format!("dir{}/file{key_idx}", key_idx % 4),
            )
        })
        .collect();
    let mut next_tag = seed << 32;
    for op_idx in 0..n_ops {
        let context = format!("seed {seed}, op {op_idx}");
        let (dataset, path) = keys[rng.usize(..keys.len())].clone();
        let key = (dataset.clone(), path.clone());
        let store_ref = store.as_ref().unwrap();
        match rng.u32(..100) {
            0..=29 => {
                next_tag += 1;
                let bytes = content(next_tag, rng.usize(..4096));
                let meta = if rng.bool() {
                    store_ref.store_file(&dataset, &path, &bytes).unwrap()
                } else {
                    let mut writer = store_ref.file_writer(&dataset, &path).unwrap();
                    for chunk in bytes.chunks(rng.usize(1..700)) {
                        writer.write_all(chunk).unwrap();
                    }
                    writer.commit().unwrap()
                };
                let previous = model.get(&key);
                assert!(
                    previous.is_none_or(|p| meta.version > p.version),
                    "{context}: version did not rise"
                );
                let pinned = previous.is_some_and(|p| p.pinned);
                model.insert(
                    key,
                    Modelled {
                        bytes,
                        version: meta.version,
                        pinned,
                    },
                );
            }
            30..=34 => {
                let mut writer = store_ref.file_writer(&dataset, &path).unwrap();
                writer.write_all(b"abandoned").unwrap();
                drop(writer);
            }
            35..=44 => {
                let removed = store_ref.remove(&dataset, &path).unwrap();
                assert_eq!(removed, model.remove(&key).is_some(), "{context}: remove");
            }
            45..=74 => {
                let got = store_ref.get_file_by_path(&dataset, &path).unwrap();
                assert_eq!(
                    got.as_ref(),
                    model.get(&key).map(|m| &m.bytes),
                    "{context}: get {dataset}/{path}"
                );
                assert_eq!(
                    store_ref.has_file_by_path(&dataset, &path),
                    model.contains_key(&key),
                    "{context}: has"
                );
            }
            75..=84 => {
                let meta = store_ref.meta(&dataset, &path).unwrap();
                let expected = model.get(&key);
                assert_eq!(meta.is_some(), expected.is_some(), "{context}: meta");
                if let (Some(meta), Some(expected)) = (meta, expected) {
                    assert_eq!(meta.version, expected.version, "{context}");
                    assert_eq!(meta.pinned, expected.pinned, "{context}");
                    assert_eq!(meta.size_bytes, expected.bytes.len() as u64, "{context}");
                    if let Some(hash) = meta.hash {
                        assert_eq!(hash, *blake3::hash(&expected.bytes).as_bytes(), "{context}");
                    }
                }
            }
            85..=89 => {
                let pinned = rng.bool();
                let done = if pinned {
                    store_ref.pin(&dataset, &path).unwrap()
                } else {
                    store_ref.unpin(&dataset, &path).unwrap()
                };
                assert_eq!(done, model.contains_key(&key), "{context}: pin");
                if let Some(modelled) = model.get_mut(&key) {
                    modelled.pinned = pinned;
                }
            }
            90..=95 => {
                let listed: Vec<String> = store_ref
                    .list(&dataset)
                    .unwrap()
                    .into_iter()
                    .map(|m| m.path)
                    .collect();
                let mut expected: Vec<String> = model
                    .keys()
                    .filter(|(d, _)| *d == dataset)
                    .map(|(_, p)| p.clone())
                    .collect();
                expected.sort();
                assert_eq!(listed, expected, "{context}: list {dataset}");
            }
            _ => {
                // Reopen, sometimes after a compaction, sometimes straight from the journal.
                if rng.bool() {
                    store_ref.compact().unwrap();
                }
                drop(store.take());
                store = Some(FileStore::open(dir.path()).unwrap());
                assert_eq!(
                    store.as_ref().unwrap().stats().n_adopted_on_open,
                    0,
                    "{context}: reopen adopted"
                );
            }
        }
        let stats = store.as_ref().unwrap().stats();
        assert_eq!(stats.n_files, model.len() as u64, "{context}: n_files");
        let used: u64 = model.values().map(|m| m.bytes.len() as u64).sum();
        assert_eq!(stats.used_bytes, used, "{context}: used_bytes");
    }
    // The directory holds exactly the modelled files.
    let mut expected: Vec<String> = model.keys().map(|(d, p)| format!("{d}/{p}")).collect();
    expected.sort();
    assert_eq!(crate::support::files_on_disk(dir.path()), expected);
}

#[test]
fn random_operations_agree_with_a_hashmap() {
    for seed in [1, 2, 3] {
        run(seed, 1500);
    }
}
