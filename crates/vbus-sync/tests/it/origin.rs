use vbus_store::FileStore;
use vbus_sync::{ManifestError, Origin, PullError, pull};

fn origin_with_dataset(dir: &std::path::Path) -> Origin {
    let dataset = dir.join("MASTER_DB/llama");
    std::fs::create_dir_all(dataset.join("shards")).unwrap();
    std::fs::write(dataset.join("config.json"), b"{\"layers\": 2}").unwrap();
    let big: Vec<u8> = (0..(9u64 << 20) + 5).map(|i| (i % 241) as u8).collect();
    std::fs::write(dataset.join("shards/w.bin"), big).unwrap();
    Origin::dir(dir.join("MASTER_DB"))
}

#[test]
fn a_pull_publishes_verified_files_and_skips_what_is_held() {
    let dir = tempfile::tempdir().unwrap();
    let origin = origin_with_dataset(dir.path());
    let manifest = origin.manifest("llama", "v1").unwrap();
    let store = FileStore::open(dir.path().join("L3_DISK")).unwrap();
    let mut progressed = 0;
    let report = pull(&manifest, &origin, &store, |n| progressed += n).unwrap();
    assert_eq!((report.files_fetched, report.files_skipped), (2, 0));
    assert_eq!(report.bytes_fetched, manifest.total_bytes());
    assert_eq!(progressed, manifest.total_bytes());
    for file in &manifest.files {
        let held = store
            .get_file_by_path("llama", &file.path)
            .unwrap()
            .unwrap();
        let original = std::fs::read(dir.path().join("MASTER_DB/llama").join(&file.path)).unwrap();
        assert!(held == original, "{} differs", file.path);
    }
    // Complete files at their final paths.
    assert_eq!(
        std::fs::read(dir.path().join("L3_DISK/llama/config.json")).unwrap(),
        b"{\"layers\": 2}"
    );
    let again = pull(&manifest, &origin, &store, |_| {}).unwrap();
    assert_eq!(
        (
            again.files_fetched,
            again.files_skipped,
            again.bytes_fetched
        ),
        (0, 2, 0)
    );
}

#[test]
fn a_damaged_origin_piece_stops_the_file_and_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let origin = origin_with_dataset(dir.path());
    let manifest = origin.manifest("llama", "v1").unwrap();
    // The origin's copy changes in its second piece after the manifest was made.
    let path = dir.path().join("MASTER_DB/llama/shards/w.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[(5 << 20) + 3] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let store = FileStore::open(dir.path().join("L3_DISK")).unwrap();
    let err = pull(&manifest, &origin, &store, |_| {}).unwrap_err();
    assert!(
        matches!(&err, PullError::Manifest(ManifestError::Mismatch { path, what, .. })
            if path == "shards/w.bin" && what == "piece 1"),
        "{err}"
    );
    assert!(
        !store.has_file_by_path("llama", "shards/w.bin"),
        "a damaged file was published"
    );
    assert!(!dir.path().join("L3_DISK/llama/shards/w.bin").exists());
}

#[test]
fn versions_are_named_by_content_and_read_back_checked() {
    let dir = tempfile::tempdir().unwrap();
    let origin = origin_with_dataset(dir.path());
    let published = origin.publish_version("llama").unwrap();
    assert_eq!(published.version, vbus_sync::content_version(&published));
    assert_eq!(published.version.len(), 16);
    // The same content, the same name; `latest` and the name read back the same manifest.
    assert_eq!(
        origin.publish_version("llama").unwrap().version,
        published.version
    );
    assert_eq!(
        origin.stored_manifest("llama", "latest").unwrap(),
        published
    );
    assert_eq!(
        origin.stored_manifest("llama", &published.version).unwrap(),
        published
    );
    // Any change to a file, a piece hash or the piece size names another version.
    let mut changed = published.clone();
    changed.files[0].pieces[0] = "00".repeat(32);
    assert_ne!(vbus_sync::content_version(&changed), published.version);
    let mut changed = published.clone();
    changed.piece_bytes *= 2;
    assert_ne!(vbus_sync::content_version(&changed), published.version);
    // Names that could leave the manifests directory are refused.
    assert!(origin.stored_manifest("llama", "../x").is_err());
    assert!(origin.publish_version("../llama").is_err());
    assert!(origin.stored_manifest("llama", "ffffffffffffffff").is_err());
}
