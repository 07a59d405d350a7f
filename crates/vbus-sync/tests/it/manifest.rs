use vbus_sync::manifest::{piece_len, read_piece};
use vbus_sync::{Manifest, ManifestError, Origin};

const PIECE: u64 = 64 << 10;

/// The dataset `llama` under `root`.
fn dataset(root: &std::path::Path) -> std::path::PathBuf {
    let dir = root.join("llama");
    std::fs::create_dir_all(dir.join("shards")).unwrap();
    std::fs::write(dir.join("config.json"), b"{}").unwrap();
    let big: Vec<u8> = (0..(3 * PIECE + 100)).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join("shards/part-0.bin"), &big).unwrap();
    std::fs::write(dir.join("shards/exact.bin"), vec![7u8; 2 * PIECE as usize]).unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::fs::write(dir.join(".hidden"), b"skipped").unwrap();
    std::fs::create_dir_all(dir.join(".git")).unwrap();
    std::fs::write(dir.join(".git/HEAD"), b"skipped too").unwrap();
    dir
}

#[test]
fn a_manifest_lists_every_file_with_its_pieces_and_round_trips() {
    let root = tempfile::tempdir().unwrap();
    let dir = dataset(root.path());
    let origin = Origin::dir(root.path());
    let manifest = origin.manifest_with("llama", "v1", PIECE).unwrap();
    let paths: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "config.json",
            "empty",
            "shards/exact.bin",
            "shards/part-0.bin"
        ]
    );
    let part = manifest.file("shards/part-0.bin").unwrap();
    assert_eq!((part.size_bytes, part.pieces.len()), (3 * PIECE + 100, 4));
    assert_eq!(manifest.file("shards/exact.bin").unwrap().pieces.len(), 2);
    assert!(manifest.file("empty").unwrap().pieces.is_empty());
    let bytes = std::fs::read(dir.join("shards/part-0.bin")).unwrap();
    assert_eq!(part.blake3, blake3::hash(&bytes).to_hex().to_string());
    assert_eq!(manifest.total_bytes(), 2 + 3 * PIECE + 100 + 2 * PIECE);

    let parsed = Manifest::from_json(&manifest.to_json()).unwrap();
    assert_eq!(parsed, manifest);
    // Every piece checks out; the short last piece too.
    for index in 0..part.pieces.len() {
        let piece = read_piece(&dir.join(&part.path), PIECE, index, part.size_bytes).unwrap();
        assert_eq!(piece.len() as u64, piece_len(part.size_bytes, PIECE, index));
        manifest.verify_piece(part, index, &piece).unwrap();
    }
    manifest.verify_file(part, &dir.join(&part.path)).unwrap();
}

#[test]
fn damaged_pieces_files_and_manifests_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = dataset(root.path());
    let origin = Origin::dir(root.path());
    let manifest = origin.manifest_with("llama", "v1", PIECE).unwrap();
    let part = manifest.file("shards/part-0.bin").unwrap();
    let path = dir.join(&part.path);
    let mut piece = read_piece(&path, PIECE, 1, part.size_bytes).unwrap();
    piece[100] ^= 1;
    let err = manifest.verify_piece(part, 1, &piece).unwrap_err();
    assert!(
        matches!(&err, ManifestError::Mismatch { what, .. } if what == "piece 1"),
        "{err}"
    );
    // A piece of the wrong length, or one that does not exist.
    assert!(manifest.verify_piece(part, 3, &[0u8; 10]).is_err());
    assert!(manifest.verify_piece(part, 9, &[]).is_err());
    // A file changed on disk.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[5] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let err = manifest.verify_file(part, &path).unwrap_err();
    assert!(
        err.to_string()
            .contains("shards/part-0.bin: the file does not match"),
        "{err}"
    );
    // Manifests that lie about themselves.
    let mut wrong = manifest.clone();
    wrong.files[3].pieces.pop();
    assert!(Manifest::from_json(&wrong.to_json()).is_err());
    let mut traversal = manifest.clone();
    traversal.files[0].path = "../etc/passwd".to_owned();
    assert!(Manifest::from_json(&traversal.to_json()).is_err());
    assert!(Manifest::from_json("{\"format\": 1}").is_err());
    assert!(
        origin.manifest_with("llama", "v", 1000).is_err(),
        "a piece size below the minimum"
    );
}
