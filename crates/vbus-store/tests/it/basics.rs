use std::io::{Read as _, Seek as _, SeekFrom, Write as _};

use vbus_store::{Error, FileStore};

#[test]
fn store_get_list_remove() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let meta = store
        .store_file("llama-7b", "model.safetensors", b"weights")
        .unwrap();
    assert_eq!(meta.size_bytes, 7);
    assert_eq!(meta.hash, Some(*blake3::hash(b"weights").as_bytes()));
    assert_eq!(
        meta.hash_hex().unwrap(),
        blake3::hash(b"weights").to_hex().to_string()
    );
    // The file lies complete at its final path, for any program to open.
    let final_path = dir.path().join("llama-7b/model.safetensors");
    assert_eq!(std::fs::read(&final_path).unwrap(), b"weights");
    assert_eq!(
        store.file_path("llama-7b", "model.safetensors").unwrap(),
        final_path
    );

    store
        .store_file("llama-7b", "tokenizer/vocab.json", b"{}")
        .unwrap();
    store.store_file("other", "x", b"").unwrap();
    assert!(store.has_file_by_path("llama-7b", "model.safetensors"));
    assert_eq!(
        store
            .get_file_by_path("llama-7b", "model.safetensors")
            .unwrap()
            .unwrap(),
        b"weights"
    );
    assert_eq!(store.get_file_by_path("other", "x").unwrap().unwrap(), b"");
    assert_eq!(store.get_file_by_path("llama-7b", "missing").unwrap(), None);
    let paths: Vec<String> = store
        .list("llama-7b")
        .unwrap()
        .into_iter()
        .map(|m| m.path)
        .collect();
    assert_eq!(paths, ["model.safetensors", "tokenizer/vocab.json"]);
    assert_eq!(store.datasets(), ["llama-7b", "other"]);

    let replaced = store
        .store_file("llama-7b", "model.safetensors", b"weights v2")
        .unwrap();
    assert!(replaced.version > meta.version);
    assert_eq!(
        store
            .get_file_by_path("llama-7b", "model.safetensors")
            .unwrap()
            .unwrap(),
        b"weights v2"
    );

    assert!(store.remove("llama-7b", "model.safetensors").unwrap());
    assert!(!store.remove("llama-7b", "model.safetensors").unwrap());
    assert!(!final_path.exists());
    assert!(!store.has_file_by_path("llama-7b", "model.safetensors"));
    let stats = store.stats();
    assert_eq!((stats.n_files, stats.used_bytes), (2, 2));
}

#[test]
fn writer_publishes_on_commit_and_discards_on_drop() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let mut writer = store.file_writer("d", "big.bin").unwrap();
    for chunk in 0..100u8 {
        writer.write_all(&[chunk; 1000]).unwrap();
    }
    assert_eq!(writer.size_bytes(), 100_000);
    assert!(
        !dir.path().join("d/big.bin").exists(),
        "visible before commit"
    );
    let meta = writer.commit().unwrap();
    assert_eq!(meta.size_bytes, 100_000);
    assert_eq!(
        store.get_file_by_path("d", "big.bin").unwrap().unwrap()[99_999],
        99
    );

    let mut abandoned = store.file_writer("d", "big.bin").unwrap();
    abandoned.write_all(b"not published").unwrap();
    drop(abandoned);
    assert_eq!(
        store
            .get_file_by_path("d", "big.bin")
            .unwrap()
            .unwrap()
            .len(),
        100_000
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join(".vbus-staging"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn store_from_reader_streams() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    // 24 MiB from a reader that yields odd-sized pieces; the writer never holds it whole.
    struct Counting(u64);
    impl std::io::Read for Counting {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(777_777).min(self.0 as usize);
            buf[..n]
                .iter_mut()
                .enumerate()
                .for_each(|(i, b)| *b = (i % 251) as u8);
            self.0 -= n as u64;
            Ok(n)
        }
    }
    let meta = store
        .store_from_reader("d", "stream.bin", &mut Counting(24 << 20))
        .unwrap();
    assert_eq!(meta.size_bytes, 24 << 20);
    let bytes = std::fs::read(dir.path().join("d/stream.bin")).unwrap();
    assert_eq!(meta.hash, Some(*blake3::hash(&bytes).as_bytes()));
}

#[test]
fn reader_seeks_and_keeps_its_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    store.store_file("d", "f", b"0123456789").unwrap();
    let mut reader = store.file_reader("d", "f").unwrap().unwrap();
    assert_eq!(reader.meta().size_bytes, 10);
    reader.seek(SeekFrom::Start(4)).unwrap();
    let mut four = [0u8; 4];
    reader.read_exact(&mut four).unwrap();
    assert_eq!(&four, b"4567");
    // A new version published while the reader is open does not change what it reads.
    store.store_file("d", "f", b"abcdefghijklmnop").unwrap();
    reader.rewind().unwrap();
    let mut all = Vec::new();
    reader.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"0123456789");
    assert!(store.file_reader("d", "missing").unwrap().is_none());
}

#[test]
fn bad_names_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    for (dataset, path) in [
        ("d", "../escape"),
        ("..", "x"),
        ("d", "/abs"),
        ("d", "a//b"),
        ("d", "nul\0"),
        (".vbus-index", "journal"),
        ("d", ".vbus-staging/x"),
    ] {
        let err = store.store_file(dataset, path, b"x").unwrap_err();
        assert!(
            matches!(err, Error::InvalidName { .. }),
            "{dataset:?}/{path:?}: {err}"
        );
        assert!(store.get_file_by_path(dataset, path).is_err());
        assert!(!store.has_file_by_path(dataset, path));
    }
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|entry| {
        entry
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with(".vbus")
    }));
}

#[test]
fn pins_and_metadata_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let meta = {
        let store = FileStore::open(dir.path()).unwrap();
        store.store_file("d", "a", b"aaa").unwrap();
        let meta = store.store_file("d", "b", b"bbbb").unwrap();
        assert!(store.pin("d", "b").unwrap());
        assert!(!store.pin("d", "missing").unwrap());
        meta
    };
    let store = FileStore::open(dir.path()).unwrap();
    let reopened = store.meta("d", "b").unwrap().unwrap();
    assert!(reopened.pinned);
    assert_eq!((reopened.version, reopened.hash), (meta.version, meta.hash));
    assert_eq!(store.stats().n_adopted_on_open, 0);
    // Versions keep rising across the reopen.
    assert!(store.store_file("d", "a", b"new").unwrap().version > meta.version);
    assert!(store.unpin("d", "b").unwrap());
}

/// Files of a MiB and more are hashed on other threads while they are written; the hash must
/// equal the plain BLAKE3 of the bytes, and the first read after a reopen verifies it.
#[test]
fn large_files_are_hashed_correctly() {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..(3u32 << 20) + 17)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    {
        let store = FileStore::open(dir.path()).unwrap();
        let meta = store.store_file("d", "large.bin", &bytes).unwrap();
        assert_eq!(meta.hash, Some(*blake3::hash(&bytes).as_bytes()));
        assert_eq!(meta.size_bytes, bytes.len() as u64);
    }
    let store = FileStore::open(dir.path()).unwrap();
    assert_eq!(
        store.get_file_by_path("d", "large.bin").unwrap().unwrap(),
        bytes
    );
    let mut reader = store.file_reader("d", "large.bin").unwrap().unwrap();
    let mut read_back = Vec::new();
    reader.read_to_end(&mut read_back).unwrap();
    assert_eq!(read_back, bytes);
}

#[test]
fn reserved_versions_publish_in_order_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let reserved_first = store.reserve_version();
    let reserved_second = store.reserve_version();
    assert!(reserved_second > reserved_first);
    // A plain publish after the reservations gets a higher version than both.
    let plain = store.store_file("ds", "plain", b"p").unwrap();
    assert!(plain.version > reserved_second);

    let meta = store
        .store_file_as("ds", "wb", b"second", reserved_second)
        .unwrap();
    assert_eq!(meta.version, reserved_second);
    // An older reservation arriving late is refused and changes nothing.
    let err = store
        .store_file_as("ds", "wb", b"first", reserved_first)
        .unwrap_err();
    assert!(
        matches!(err, Error::StaleVersion { version, held_version, .. }
            if version == reserved_first && held_version == reserved_second),
        "{err}"
    );
    assert_eq!(
        store.get_file_by_path("ds", "wb").unwrap().unwrap(),
        b"second"
    );
    drop(store);

    let store = FileStore::open(dir.path()).unwrap();
    assert_eq!(
        store.meta("ds", "wb").unwrap().unwrap().version,
        reserved_second
    );
    let after = store.store_file("ds", "after", b"a").unwrap();
    assert!(after.version > plain.version);
}

#[test]
fn adopt_renames_a_staged_file_into_place_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path().join("L3")).unwrap();
    let stage = dir.path().join("INTERCONNECT");
    std::fs::create_dir_all(&stage).unwrap();
    let src = stage.join("f.part");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&src, &bytes).unwrap();
    let hash = *blake3::hash(&bytes).as_bytes();
    let meta = store.adopt("ds", "dir/f.bin", &src, hash).unwrap();
    assert_eq!(meta.size_bytes, bytes.len() as u64);
    assert_eq!(
        meta.hash_hex().unwrap(),
        blake3::hash(&bytes).to_hex().as_str()
    );
    assert!(!src.exists(), "renamed, not copied");
    assert_eq!(
        store.get_file_by_path("ds", "dir/f.bin").unwrap().unwrap(),
        bytes
    );
    // A bad name is refused before anything moves.
    std::fs::write(&src, b"x").unwrap();
    assert!(store.adopt("ds", "../x", &src, hash).is_err());
    assert!(src.exists());
    drop(store);
    let store = FileStore::open(dir.path().join("L3")).unwrap();
    assert_eq!(
        store.get_file_by_path("ds", "dir/f.bin").unwrap().unwrap(),
        bytes
    );
}

#[test]
fn a_files_kind_is_kept_across_reopens_and_compactions_until_it_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    assert_eq!(store.store_file("ds", "plain", b"p").unwrap().kind, 0);
    let meta = store.store_file_with("ds", "array", b"a", None, 1).unwrap();
    assert_eq!(meta.kind, 1);
    let mut writer = store.file_writer("ds", "streamed").unwrap();
    std::io::Write::write_all(&mut writer, b"s").unwrap();
    writer.set_kind(2);
    assert_eq!(writer.commit().unwrap().kind, 2);
    // Pinning (a record of its own) keeps the kind.
    assert!(store.pin("ds", "array").unwrap());
    drop(store);

    // From the journal.
    let store = FileStore::open(dir.path()).unwrap();
    let kind = |store: &FileStore, path: &str| store.meta("ds", path).unwrap().unwrap().kind;
    assert_eq!(
        [
            kind(&store, "plain"),
            kind(&store, "array"),
            kind(&store, "streamed")
        ],
        [0, 1, 2]
    );
    // From a snapshot.
    store.compact().unwrap();
    drop(store);
    let store = FileStore::open(dir.path()).unwrap();
    assert_eq!(
        [
            kind(&store, "plain"),
            kind(&store, "array"),
            kind(&store, "streamed")
        ],
        [0, 1, 2]
    );
    let (_, meta) = store.get_file_with_meta("ds", "array").unwrap().unwrap();
    assert_eq!(meta.kind, 1);
    // A new version takes its writer's kind.
    store.store_file("ds", "array", b"bytes now").unwrap();
    assert_eq!(kind(&store, "array"), 0);
}
