use std::fs;
use std::time::{Duration, SystemTime};

use vbus_store::{Error, FileStore, Verify};

#[test]
fn files_copied_in_by_hand_are_adopted_and_hashed_on_first_read() {
    let dir = tempfile::tempdir().unwrap();
    let version_before = {
        let store = FileStore::open(dir.path()).unwrap();
        store.store_file("d", "ours", b"ours").unwrap().version
    };
    fs::create_dir_all(dir.path().join("hand/sub")).unwrap();
    fs::write(dir.path().join("hand/sub/copied.bin"), b"copied by hand").unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    assert_eq!(store.stats().n_adopted_on_open, 1);
    let meta = store.meta("hand", "sub/copied.bin").unwrap().unwrap();
    assert_eq!(meta.hash, None, "hashed lazily");
    assert!(meta.version > version_before);
    assert_eq!(
        store
            .get_file_by_path("hand", "sub/copied.bin")
            .unwrap()
            .unwrap(),
        b"copied by hand"
    );
    let meta = store.meta("hand", "sub/copied.bin").unwrap().unwrap();
    assert_eq!(meta.hash, Some(*blake3::hash(b"copied by hand").as_bytes()));
    drop(store);
    // The adoption and its hash were recorded: the next open adopts nothing.
    let store = FileStore::open(dir.path()).unwrap();
    assert_eq!(store.stats().n_adopted_on_open, 0);
    assert_eq!(
        store.meta("hand", "sub/copied.bin").unwrap().unwrap().hash,
        meta.hash
    );
}

/// A file deleted by hand is dropped; one rewritten by hand is hashed at once, logged with its
/// old and new hashes, and becomes the next version (a store of its own adopts changes).
#[test]
fn files_deleted_or_replaced_by_hand_are_noticed() {
    let dir = tempfile::tempdir().unwrap();
    let replaced_version = {
        let store = FileStore::open(dir.path()).unwrap();
        store.store_file("d", "deleted", b"x").unwrap();
        store.store_file("d", "replaced", b"old").unwrap().version
    };
    fs::remove_file(dir.path().join("d/deleted")).unwrap();
    fs::write(dir.path().join("d/replaced"), b"new and longer").unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let stats = store.stats();
    assert_eq!(
        (
            stats.n_dropped_on_open,
            stats.n_adopted_on_open,
            stats.n_changed_on_open
        ),
        (1, 0, 1)
    );
    assert!(!store.has_file_by_path("d", "deleted"));
    let meta = store.meta("d", "replaced").unwrap().unwrap();
    assert!(meta.version > replaced_version);
    assert_eq!(meta.hash, Some(*blake3::hash(b"new and longer").as_bytes()));
    assert_eq!(
        store.get_file_by_path("d", "replaced").unwrap().unwrap(),
        b"new and longer"
    );
}

/// Same size and modification time, different bytes: only the hash can tell. The read fails
/// naming the file, and the file is quarantined, never served.
#[test]
fn bytes_that_no_longer_match_are_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FileStore::open(dir.path()).unwrap();
        store.store_file("d", "weights.bin", b"good bytes").unwrap();
    }
    corrupt_in_place(&dir.path().join("d/weights.bin"), b"evil bytes");
    let store = FileStore::open(dir.path()).unwrap();
    assert_eq!(store.stats().n_adopted_on_open, 0, "the stat still matches");
    let err = store.get_file_by_path("d", "weights.bin").unwrap_err();
    match &err {
        Error::ChecksumMismatch {
            dataset,
            path,
            quarantined_to,
            ..
        } => {
            assert_eq!((dataset.as_str(), path.as_str()), ("d", "weights.bin"));
            assert_eq!(fs::read(quarantined_to).unwrap(), b"evil bytes");
        }
        other => panic!("expected a checksum mismatch, got {other}"),
    }
    assert!(err.to_string().contains("d/weights.bin"), "{err}");
    assert!(!store.has_file_by_path("d", "weights.bin"));
    assert!(!dir.path().join("d/weights.bin").exists());
    assert_eq!(store.get_file_by_path("d", "weights.bin").unwrap(), None);
    assert_eq!(store.stats().n_checksum_failures, 1);
}

/// A read into the caller's buffer checks the hash as a plain read does.
#[test]
fn reads_into_a_callers_buffer_are_verified_too() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = FileStore::open(dir.path()).unwrap();
        store.store_file("d", "good.bin", b"kept bytes").unwrap();
        store.store_file("d", "bad.bin", b"good bytes").unwrap();
    }
    corrupt_in_place(&dir.path().join("d/bad.bin"), b"evil bytes");
    let store = FileStore::open(dir.path()).unwrap();
    let mut sizes = Vec::new();
    let (bytes, meta) = store
        .get_file_into("d", "good.bin", |len| {
            sizes.push(len);
            vec![0xAAu8; len]
        })
        .unwrap()
        .unwrap();
    assert_eq!(
        (bytes.as_slice(), sizes.as_slice()),
        (&b"kept bytes"[..], &[10][..])
    );
    assert_eq!(meta.size_bytes, 10);
    let err = store
        .get_file_into("d", "bad.bin", |len| vec![0u8; len])
        .unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    assert_eq!(
        store
            .get_file_into("d", "bad.bin", |len| vec![0u8; len])
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .get_file_into("d", "absent", |len| vec![0u8; len])
            .unwrap(),
        None
    );
}

#[test]
fn every_read_verification_catches_damage_after_the_first_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::builder(dir.path())
        .verify(Verify::EveryRead)
        .open()
        .unwrap();
    store.store_file("d", "f", b"0123456789").unwrap();
    assert!(store.get_file_by_path("d", "f").unwrap().is_some());
    corrupt_in_place(&dir.path().join("d/f"), b"0123456780");
    assert!(matches!(
        store.file_reader("d", "f"),
        Err(Error::ChecksumMismatch { .. })
    ));
}

#[test]
fn staging_leftovers_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    drop(FileStore::open(dir.path()).unwrap());
    let staging = dir.path().join(".vbus-staging");
    fs::write(staging.join("123-0.tmp"), b"half a file").unwrap();
    fs::create_dir(staging.join("odd-dir")).unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
    assert_eq!(store.stats().n_files, 0, "staging files are never adopted");
}

#[test]
fn a_second_open_is_refused_while_the_first_lives() {
    let dir = tempfile::tempdir().unwrap();
    let first = FileStore::open(dir.path()).unwrap();
    assert!(matches!(
        FileStore::open(dir.path()),
        Err(Error::Locked { .. })
    ));
    drop(first);
    FileStore::open(dir.path()).unwrap();
}

#[test]
fn a_lost_or_damaged_index_is_rebuilt_from_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let version = {
        let store = FileStore::open(dir.path()).unwrap();
        store.store_file("d", "a", b"aaa").unwrap();
        store.store_file("d", "b", b"bbb").unwrap().version
    };
    let index = dir.path().join(".vbus-index");
    let mut snapshot = fs::read(index.join("snapshot")).unwrap();
    let middle = snapshot.len() / 2;
    snapshot[middle] ^= 0xff;
    fs::write(index.join("snapshot"), snapshot).unwrap();
    fs::remove_file(index.join("journal")).unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    assert_eq!(store.stats().n_adopted_on_open, 2);
    assert_eq!(store.get_file_by_path("d", "b").unwrap().unwrap(), b"bbb");
    let _ = version;
}

/// A large file is hashed on another thread as it is read, block by block: a good one reads back
/// whole, and one byte changed in a late block is still caught.
#[test]
fn large_files_are_verified_while_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let good: Vec<u8> = (0..(9 << 20) + 12_345u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    {
        let store = FileStore::open(dir.path()).unwrap();
        store.store_file("d", "good.bin", &good).unwrap();
        store.store_file("d", "bad.bin", &good).unwrap();
    }
    let mut evil = good.clone();
    evil[(8 << 20) + 7] ^= 0x40;
    corrupt_in_place(&dir.path().join("d/bad.bin"), &evil);
    let store = FileStore::open(dir.path()).unwrap();
    let (bytes, meta) = store
        .get_file_into("d", "good.bin", |len| vec![0u8; len])
        .unwrap()
        .unwrap();
    assert!(bytes == good, "the bytes read back differ");
    assert_eq!(meta.size_bytes, good.len() as u64);
    let err = store.get_file_by_path("d", "bad.bin").unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    assert_eq!(store.get_file_by_path("d", "bad.bin").unwrap(), None);
    assert_eq!(store.stats().n_checksum_failures, 1);
}

/// Overwrites a file's bytes in place and puts its modification time back, as silent corruption
/// would leave it.
fn corrupt_in_place(path: &std::path::Path, bytes: &[u8]) {
    let modified = fs::metadata(path).unwrap().modified().unwrap();
    assert_eq!(fs::metadata(path).unwrap().len(), bytes.len() as u64);
    use std::io::Write as _;
    let mut file = fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all(bytes).unwrap();
    file.set_modified(modified).unwrap();
    let _ = SystemTime::now() + Duration::ZERO;
}
