//! Manifests: one per dataset version, listing every file with its size, the BLAKE3 hash of the
//! whole file, the piece size and the BLAKE3 hash of each piece. A peer's piece is used only if
//! its hash matches; a file is published only if its root matches.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Pieces of 4 MiB unless a manifest says otherwise.
pub const PIECE_BYTES_DEFAULT: u64 = 4 << 20;
/// The smallest and largest piece sizes a manifest may name.
pub const PIECE_BYTES_MIN: u64 = 64 << 10;
/// The largest piece size a manifest may name.
pub const PIECE_BYTES_MAX: u64 = 64 << 20;
/// The manifest format's version.
pub const FORMAT_VERSION: u32 = 1;

/// What can go wrong building, reading or checking against a manifest.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// A file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest's text is not a valid manifest.
    #[error("not a valid manifest: {0}")]
    Invalid(String),
    /// A piece or file does not match its hash.
    #[error("{path}: {what} does not match the manifest (expected {expected}, got {actual})")]
    Mismatch {
        /// The file inside the dataset.
        path: String,
        /// `piece N` or `the file`.
        what: String,
        /// The manifest's hash.
        expected: String,
        /// The hash of what was given.
        actual: String,
    },
}

/// One file of a dataset version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// The path inside the dataset (`/`-separated).
    pub path: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// BLAKE3 of the whole file, hex.
    pub blake3: String,
    /// BLAKE3 of each piece, hex, in order (the last piece may be short; an empty file has none).
    pub pieces: Vec<String>,
}

/// A dataset version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT_VERSION`].
    pub format: u32,
    /// The dataset's name.
    pub dataset: String,
    /// The version, as the origin names it.
    pub version: String,
    /// Bytes per piece.
    pub piece_bytes: u64,
    /// Every file, sorted by path.
    pub files: Vec<FileEntry>,
}

vbus_store::impl_from_whole_write_error!(ManifestError);

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ManifestError + use<> {
    let path = path.to_owned();
    move |source| ManifestError::Io { op, path, source }
}

impl Manifest {
    /// Parses and checks a manifest's JSON.
    pub fn from_json(text: &str) -> Result<Self, ManifestError> {
        let manifest: Self =
            serde_json::from_str(text).map_err(|err| ManifestError::Invalid(err.to_string()))?;
        if manifest.format != FORMAT_VERSION {
            return Err(ManifestError::Invalid(format!(
                "format {} is not {FORMAT_VERSION}",
                manifest.format
            )));
        }
        check_piece_bytes(manifest.piece_bytes)?;
        for file in &manifest.files {
            let expected = file.size_bytes.div_ceil(manifest.piece_bytes);
            if file.pieces.len() as u64 != expected {
                return Err(ManifestError::Invalid(format!(
                    "{}: {} bytes need {expected} pieces, the manifest lists {}",
                    file.path,
                    file.size_bytes,
                    file.pieces.len()
                )));
            }
            if file.path.is_empty()
                || file.path.starts_with('/')
                || file
                    .path
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == "..")
            {
                return Err(ManifestError::Invalid(format!("bad path {:?}", file.path)));
            }
        }
        Ok(manifest)
    }

    /// The manifest as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a manifest serialises")
    }

    /// The total bytes of the version.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|file| file.size_bytes).sum()
    }

    /// The file entry for `path`.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files
            .binary_search_by(|file| file.path.as_str().cmp(path))
            .ok()
            .map(|idx| &self.files[idx])
    }

    /// Checks piece `index` of `file` (its bytes as received) against the manifest.
    pub fn verify_piece(
        &self,
        file: &FileEntry,
        index: usize,
        bytes: &[u8],
    ) -> Result<(), ManifestError> {
        let expected_len = piece_len(file.size_bytes, self.piece_bytes, index);
        let expected = file
            .pieces
            .get(index)
            .ok_or_else(|| ManifestError::Mismatch {
                path: file.path.clone(),
                what: format!("piece {index}"),
                expected: format!("one of {} pieces", file.pieces.len()),
                actual: format!("piece {index}"),
            })?;
        let actual = blake3::hash(bytes).to_hex().to_string();
        if bytes.len() as u64 != expected_len || &actual != expected {
            return Err(ManifestError::Mismatch {
                path: file.path.clone(),
                what: format!("piece {index}"),
                expected: format!("{expected} ({expected_len} bytes)"),
                actual: format!("{actual} ({} bytes)", bytes.len()),
            });
        }
        Ok(())
    }

    /// Checks a whole file on disk against its entry.
    pub fn verify_file(&self, file: &FileEntry, on_disk: &Path) -> Result<(), ManifestError> {
        let found = hash_file(on_disk, &file.path, self.piece_bytes)?;
        if found.blake3 != file.blake3 || found.size_bytes != file.size_bytes {
            return Err(ManifestError::Mismatch {
                path: file.path.clone(),
                what: "the file".to_owned(),
                expected: format!("{} ({} bytes)", file.blake3, file.size_bytes),
                actual: format!("{} ({} bytes)", found.blake3, found.size_bytes),
            });
        }
        Ok(())
    }
}

pub(crate) fn check_piece_bytes(piece_bytes: u64) -> Result<(), ManifestError> {
    if !(PIECE_BYTES_MIN..=PIECE_BYTES_MAX).contains(&piece_bytes) {
        return Err(ManifestError::Invalid(format!(
            "piece size {piece_bytes} is outside {PIECE_BYTES_MIN}..={PIECE_BYTES_MAX}"
        )));
    }
    Ok(())
}

/// The length of piece `index` of a file of `size_bytes`.
pub fn piece_len(size_bytes: u64, piece_bytes: u64, index: usize) -> u64 {
    let start = index as u64 * piece_bytes;
    size_bytes.saturating_sub(start).min(piece_bytes)
}

/// Reads piece `index` of a file.
pub fn read_piece(
    path: &Path,
    piece_bytes: u64,
    index: usize,
    size_bytes: u64,
) -> Result<Vec<u8>, ManifestError> {
    let mut file = File::open(path).map_err(io("open", path))?;
    file.seek(SeekFrom::Start(index as u64 * piece_bytes))
        .map_err(io("seek in", path))?;
    let mut bytes = vec![0u8; piece_len(size_bytes, piece_bytes, index) as usize];
    file.read_exact(&mut bytes).map_err(io("read", path))?;
    Ok(bytes)
}

/// Hashes a file of `size_bytes` read piece by piece through `read(offset, len, buf)` (which
/// fills `buf`, one buffer for every piece): its root and each piece.
pub(crate) fn hash_pieces(
    path: &str,
    size_bytes: u64,
    piece_bytes: u64,
    mut read: impl FnMut(u64, u64, &mut Vec<u8>) -> Result<(), ManifestError>,
) -> Result<FileEntry, ManifestError> {
    let mut whole = blake3::Hasher::new();
    let mut pieces = Vec::new();
    let mut offset = 0;
    let mut piece = Vec::new();
    while offset < size_bytes {
        let len = piece_bytes.min(size_bytes - offset);
        read(offset, len, &mut piece)?;
        whole.update(&piece);
        pieces.push(blake3::hash(&piece).to_hex().to_string());
        offset += len;
    }
    Ok(FileEntry {
        path: path.to_owned(),
        size_bytes,
        blake3: whole.finalize().to_hex().to_string(),
        pieces,
    })
}

/// Hashes a file on disk: its root and each piece.
fn hash_file(path: &Path, relative: &str, piece_bytes: u64) -> Result<FileEntry, ManifestError> {
    let file = File::open(path).map_err(io("open", path))?;
    let size_bytes = file.metadata().map_err(io("stat", path))?.len();
    hash_pieces(relative, size_bytes, piece_bytes, |offset, len, buf| {
        // Only growth is zeroed: the reused buffer is not written twice.
        buf.truncate(len as usize);
        buf.resize(len as usize, 0);
        std::os::unix::fs::FileExt::read_exact_at(&file, buf, offset).map_err(io("read", path))
    })
}
