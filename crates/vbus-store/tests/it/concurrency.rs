//! Writers and readers of the same paths: no reader ever sees a torn or unindexed file.

use std::collections::HashMap;
use std::io::Read as _;
use std::sync::atomic::{AtomicBool, Ordering};

use vbus_store::FileStore;

use crate::support::{check_content, content};

const N_PATHS: usize = 6;
const N_WRITERS: u64 = 4;
const WRITES_PER_WRITER: u64 = 60;

#[test]
fn concurrent_writers_and_readers_never_see_a_torn_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    for path_idx in 0..N_PATHS {
        store
            .store_file("d", &format!("p{path_idx}"), &content(path_idx as u64, 100))
            .unwrap();
    }
    let writers_done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let mut writers = Vec::new();
        for writer_idx in 0..N_WRITERS {
            let store = store.clone();
            writers.push(scope.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(writer_idx);
                for write_idx in 0..WRITES_PER_WRITER {
                    let tag = (writer_idx + 1) << 32 | write_idx;
                    let path = format!("p{}", rng.usize(..N_PATHS));
                    let bytes = content(tag, rng.usize(..200_000));
                    store.store_file("d", &path, &bytes).unwrap();
                }
            }));
        }
        for reader_idx in 0..4u64 {
            let store = store.clone();
            let writers_done = &writers_done;
            scope.spawn(move || {
                let mut rng = fastrand::Rng::with_seed(100 + reader_idx);
                let mut last_version: HashMap<String, u64> = HashMap::new();
                let mut n_reads = 0u64;
                while !writers_done.load(Ordering::Acquire) || n_reads < 50 {
                    let path = format!("p{}", rng.usize(..N_PATHS));
                    let (bytes, version) = if rng.bool() {
                        let bytes = store
                            .get_file_by_path("d", &path)
                            .unwrap()
                            .expect("never unindexed");
                        (bytes, None)
                    } else {
                        let mut reader = store
                            .file_reader("d", &path)
                            .unwrap()
                            .expect("never unindexed");
                        let version = reader.meta().version;
                        let mut bytes = Vec::new();
                        reader.read_to_end(&mut bytes).unwrap();
                        (bytes, Some(version))
                    };
                    assert!(check_content(&bytes).is_some(), "torn read of {path}");
                    if let Some(version) = version {
                        let last = last_version.entry(path).or_insert(0);
                        assert!(version >= *last, "version went backwards");
                        *last = version;
                    }
                    n_reads += 1;
                }
            });
        }
        for writer in writers {
            writer.join().unwrap();
        }
        writers_done.store(true, Ordering::Release);
    });
    // Afterwards the index describes exactly the bytes on disk.
    for meta in store.list("d").unwrap() {
        let bytes = std::fs::read(dir.path().join("d").join(&meta.path)).unwrap();
        assert_eq!(
            meta.hash,
            Some(*blake3::hash(&bytes).as_bytes()),
            "{}",
            meta.path
        );
        assert!(check_content(&bytes).is_some());
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join(".vbus-staging"))
            .unwrap()
            .count(),
        0
    );
}
