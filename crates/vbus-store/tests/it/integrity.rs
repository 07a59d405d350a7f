//! Damage to the store's files while it runs and while it is closed: no byte that fails its
//! checksum is ever handed out, and every change behind the store's back is noticed.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt as _;
use std::path::Path;

use vbus_store::{Error, FileStore, OnChange, QuarantinedFile, Verify};

const MIB: usize = 1 << 20;

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Flips one bit at `offset` in place, as `dd conv=notrunc` would (same inode, same size).
fn flip(path: &Path, offset: u64) {
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x20;
    file.write_all_at(&byte, offset).unwrap();
}

/// Issue 20, finding 1: a put marked its file verified, so a byte flipped afterwards was served
/// while the store stayed open. Every read now checks every piece, whatever its size and path.
#[test]
fn corrupt_l3_bytes_are_never_served_while_the_store_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    for (name, len, offset) in [
        ("small", 10_000, 9_999u64),
        ("one-piece", MIB, 5),
        ("three-pieces", 3 * MIB - 17, 2 * MIB as u64 + 3),
        ("pipelined", 9 * MIB + 5, 8 * MIB as u64 + 1),
    ] {
        let bytes = pattern(len, len as u32);
        let meta = store.store_file("models", name, &bytes).unwrap();
        assert_eq!(
            store.get_file_by_path("models", name).unwrap().unwrap(),
            bytes
        );
        flip(&dir.path().join("models").join(name), offset);
        let err = store.get_file_by_path("models", name).unwrap_err();
        match &err {
            Error::ChecksumMismatch {
                path,
                offset: at,
                quarantined_to,
                ..
            } => {
                assert_eq!(path, name);
                assert_eq!(*at, offset / MIB as u64 * MIB as u64, "{name}");
                assert!(quarantined_to.exists());
            }
            other => panic!("{name}: expected a checksum mismatch, got {other}"),
        }
        assert_eq!(store.get_file_by_path("models", name).unwrap(), None);
        assert_eq!(
            store.take_quarantined(),
            [QuarantinedFile {
                dataset: "models".to_owned(),
                path: name.to_owned(),
                version: meta.version,
            }]
        );
    }
    assert_eq!(store.stats().n_checksum_failures, 4);
}

/// A stream (to a client or a peer) hands out the good pieces before the damage and stops at the
/// bad one without any of its bytes; a damaged first piece fails before the reader is returned.
#[test]
fn a_stream_stops_at_the_first_bad_piece() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let bytes = pattern(5 * MIB + 100, 7);
    store.store_file("d", "big", &bytes).unwrap();
    let mut reader = store.file_reader("d", "big").unwrap().unwrap();
    let mut head = vec![0u8; 2 * MIB];
    reader.read_exact(&mut head).unwrap();
    assert!(head == bytes[..2 * MIB]);
    flip(&dir.path().join("d/big"), 3 * MIB as u64 + 10);
    let mut rest = Vec::new();
    let err = reader.read_to_end(&mut rest).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert_eq!(rest.len(), MIB, "only the good piece before the damage");
    assert!(rest == bytes[2 * MIB..3 * MIB]);
    assert!(err.to_string().contains("d/big"), "{err}");
    assert!(!store.has_file_by_path("d", "big"));

    store.store_file("d", "small", b"0123456789").unwrap();
    flip(&dir.path().join("d/small"), 0);
    assert!(matches!(
        store.file_reader("d", "small"),
        Err(Error::ChecksumMismatch { .. })
    ));
    assert_eq!(store.stats().n_checksum_failures, 2);
}

/// Seeks land inside checked pieces; a file truncated in place fails at the missing piece.
#[test]
fn seeks_are_checked_and_truncation_is_damage() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let bytes = pattern(4 * MIB + 3, 9);
    store.store_file("d", "f", &bytes).unwrap();
    let mut reader = store.file_reader("d", "f").unwrap().unwrap();
    reader.seek(SeekFrom::Start(3 * MIB as u64 - 2)).unwrap();
    let mut window = [0u8; 8];
    reader.read_exact(&mut window).unwrap();
    assert_eq!(window, bytes[3 * MIB - 2..3 * MIB + 6]);
    reader.seek(SeekFrom::End(-3)).unwrap();
    let mut tail = Vec::new();
    reader.read_to_end(&mut tail).unwrap();
    assert_eq!(tail, bytes[bytes.len() - 3..]);

    fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("d/f"))
        .unwrap()
        .set_len(2 * MIB as u64)
        .unwrap();
    let err = store.get_file_by_path("d", "f").unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
}

/// A damaged or missing piece-checksum file costs a full BLAKE3 check, never a wrong answer: the
/// good file is served and its checksums written again; a bad file is still caught.
#[test]
fn a_damaged_checksum_file_falls_back_to_the_full_hash() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = pattern(3 * MIB, 1);
    {
        let store = FileStore::open(dir.path()).unwrap();
        store.store_file("d", "good", &bytes).unwrap();
        store.store_file("d", "bad", &bytes).unwrap();
    }
    let sums_dir = dir.path().join(".vbus-index/sums");
    let side_files: Vec<_> = fs::read_dir(&sums_dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert_eq!(side_files.len(), 2);
    for path in &side_files {
        flip(path, 20);
    }
    let store = FileStore::open(dir.path()).unwrap();
    assert_eq!(store.get_file_by_path("d", "good").unwrap().unwrap(), bytes);
    flip(&dir.path().join("d/bad"), 5);
    assert!(matches!(
        store.get_file_by_path("d", "bad"),
        Err(Error::ChecksumMismatch { .. })
    ));
    // The good file's checksums were written again: a later flip is caught piece by piece.
    flip(&dir.path().join("d/good"), 2 * MIB as u64);
    assert!(matches!(
        store.get_file_by_path("d", "good"),
        Err(Error::ChecksumMismatch { offset, .. }) if offset == 2 * MIB as u64
    ));
}

/// Issue 20, finding 2: a file changed on disk while the store was closed was adopted silently
/// as a new version. Now its new hash is computed at open and the change counted (and logged with
/// both hashes); in a cluster it is quarantined, not a second truth.
#[test]
fn a_file_changed_on_disk_is_never_adopted_silently() {
    let dir = tempfile::tempdir().unwrap();
    let old = {
        let store = FileStore::open(dir.path()).unwrap();
        store
            .store_file("models", "big100", &pattern(100_000, 3))
            .unwrap();
        store.store_file("models", "kept", b"kept").unwrap()
    };
    flip(&dir.path().join("models/big100"), 50_000);
    {
        let store = FileStore::builder(dir.path())
            .on_change(OnChange::Quarantine)
            .open()
            .unwrap();
        let stats = store.stats();
        assert_eq!((stats.n_changed_on_open, stats.n_adopted_on_open), (1, 0));
        assert!(!store.has_file_by_path("models", "big100"));
        assert_eq!(store.take_quarantined().len(), 1);
        assert_eq!(
            store.meta("models", "kept").unwrap().unwrap().version,
            old.version
        );
    }
    let quarantine = dir.path().join(".vbus-quarantine/models");
    let quarantined = fs::read_dir(&quarantine).unwrap().next().unwrap().unwrap();
    assert!(
        quarantined
            .file_name()
            .to_string_lossy()
            .starts_with("big100.v")
    );
}

/// A file whose stat changed but whose bytes did not (`touch`, a copy of the same bytes) keeps
/// its version: nothing changed.
#[test]
fn a_touched_file_keeps_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let meta = {
        let store = FileStore::open(dir.path()).unwrap();
        store.store_file("d", "f", b"same bytes").unwrap()
    };
    let path = dir.path().join("d/f");
    fs::write(&path, b"same bytes").unwrap();
    let later =
        fs::metadata(&path).unwrap().modified().unwrap() + std::time::Duration::from_secs(5);
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let stats = store.stats();
    assert_eq!((stats.n_changed_on_open, stats.n_adopted_on_open), (0, 0));
    assert_eq!(store.meta("d", "f").unwrap().unwrap().version, meta.version);
    assert_eq!(
        store.get_file_by_path("d", "f").unwrap().unwrap(),
        b"same bytes"
    );
}

/// Issue 20, finding 7: a file deleted by hand under a running store answered "replaced too many
/// times" and stayed listed. It is now a miss, and leaves the index.
#[test]
fn a_file_deleted_by_hand_leaves_the_index_at_its_next_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    store.store_file("d", "gone", b"bytes").unwrap();
    fs::remove_file(dir.path().join("d/gone")).unwrap();
    assert_eq!(store.get_file_by_path("d", "gone").unwrap(), None);
    assert!(store.file_reader("d", "gone").unwrap().is_none());
    assert!(store.list("d").unwrap().is_empty());
    assert_eq!(store.stats().n_missing, 1);
}

/// The opt-out reads a verified file without checks (so a flip after the first read is served):
/// that is what turning verification off means, and it is never the default.
#[test]
fn first_read_verification_is_an_explicit_opt_out() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::builder(dir.path())
        .verify(Verify::FirstRead)
        .open()
        .unwrap();
    store.store_file("d", "f", b"0123456789").unwrap();
    flip(&dir.path().join("d/f"), 0);
    assert_ne!(
        store.get_file_by_path("d", "f").unwrap().unwrap(),
        b"0123456789"
    );
    assert_eq!(Verify::default(), Verify::EveryRead);
}

/// Disk faults under a running store: 200 rounds, each flipping a byte of, truncating, or
/// deleting a random file (or leaving all alone), then reading every file back, whole or as a
/// stream. No wrong byte is ever returned; every damaged file is refused by name and counted,
/// every deleted one reported missing and counted; every other acknowledged write reads back
/// exactly. A lost file is written again, as a user would.
#[test]
fn disk_faults_never_serve_a_wrong_byte_and_every_damage_is_counted() {
    const N_FILES: usize = 12;
    const N_ROUNDS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let mut rng = fastrand::Rng::with_seed(20);
    let mut values: Vec<Vec<u8>> = (0..N_FILES)
        .map(|idx| pattern(rng.usize(..3 * MIB), idx as u32))
        .collect();
    for (idx, value) in values.iter().enumerate() {
        store
            .store_file("faults", &format!("f{idx}"), value)
            .unwrap();
    }
    let (mut n_damaged, mut n_deleted) = (0u64, 0u64);
    let started = std::time::Instant::now();
    for round in 0..N_ROUNDS {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "round {round} is past the time bound"
        );
        let victim = rng.usize(..N_FILES);
        let path = dir.path().join(format!("faults/f{victim}"));
        let len = values[victim].len() as u64;
        let mut expect_damage = false;
        let mut expect_missing = false;
        match rng.u8(..4) {
            0 if len > 0 => {
                flip(&path, rng.u64(..len));
                expect_damage = true;
            }
            1 if len > 0 => {
                fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(rng.u64(..len))
                    .unwrap();
                expect_damage = true;
            }
            2 => {
                fs::remove_file(&path).unwrap();
                expect_missing = true;
            }
            _ => {}
        }
        for (idx, value) in values.iter_mut().enumerate() {
            let name = format!("f{idx}");
            let streamed = rng.bool();
            let read = if streamed {
                match store.file_reader("faults", &name) {
                    Ok(Some(mut reader)) => {
                        let mut bytes = Vec::new();
                        match reader.read_to_end(&mut bytes) {
                            Ok(_) => Ok(Some(bytes)),
                            Err(err) => {
                                assert_eq!(err.kind(), std::io::ErrorKind::InvalidData, "{err}");
                                assert!(
                                    bytes.len() % MIB == 0 && bytes[..] == value[..bytes.len()],
                                    "round {round}: a stream of {name} handed out bad bytes"
                                );
                                Err(err.to_string())
                            }
                        }
                    }
                    Ok(None) => Ok(None),
                    Err(err) => Err(err.to_string()),
                }
            } else {
                store
                    .get_file_by_path("faults", &name)
                    .map_err(|err| err.to_string())
            };
            match read {
                Ok(Some(bytes)) => {
                    assert!(
                        bytes == *value,
                        "round {round}: {name} read back wrong bytes"
                    );
                    assert!(
                        idx != victim || !(expect_damage || expect_missing),
                        "round {round}: the damaged {name} was served"
                    );
                }
                Ok(None) => {
                    assert!(
                        idx == victim && expect_missing,
                        "round {round}: {name} vanished"
                    );
                    n_deleted += 1;
                }
                Err(message) => {
                    assert!(
                        idx == victim && expect_damage,
                        "round {round}: {name}: {message}"
                    );
                    assert!(message.contains(&format!("faults/{name}")), "{message}");
                    n_damaged += 1;
                }
            }
            if idx == victim && (expect_damage || expect_missing) {
                *value = pattern(rng.usize(..3 * MIB), round as u32);
                store.store_file("faults", &name, value).unwrap();
            }
        }
    }
    let stats = store.stats();
    assert_eq!(stats.n_checksum_failures, n_damaged);
    assert_eq!(stats.n_missing, n_deleted);
    assert!(
        n_damaged > 50 && n_deleted > 25,
        "{n_damaged} damaged, {n_deleted} deleted"
    );
    eprintln!(
        "{N_ROUNDS} rounds: {n_damaged} damaged files refused, {n_deleted} deletions noticed"
    );
}
