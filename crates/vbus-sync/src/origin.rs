//! Origins (the seed's master database) and pulls from them into the L3 store. A local directory
//! (`DATA/MASTER_DB` by default) is the origin built so far: `{root}/{dataset}/{path}`.
//!
//! A pull fetches each file piece by piece, checks every piece against the manifest before it is
//! written, stages the file in the store and publishes it atomically at the end; a file the store
//! already holds with the manifest's hash is skipped. A damaged piece stops that file with an
//! error naming it, and nothing of it is published.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::manifest::{self, Manifest, ManifestError};

/// What can go wrong in a pull.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// The manifest refused a piece or file, or the origin could not be read.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] vbus_store::Error),
    /// Writing a staged file failed.
    #[error("cannot stage {dataset}/{path}: {source}")]
    Stage {
        /// The dataset.
        dataset: String,
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// A local directory holding datasets, one subdirectory each.
#[derive(Debug, Clone)]
pub struct DirOrigin {
    root: PathBuf,
}

impl DirOrigin {
    /// The origin at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn dataset_dir(&self, dataset: &str) -> PathBuf {
        self.root.join(dataset)
    }

    /// The manifest of `dataset` as the directory holds it now, named `version`.
    pub fn manifest(&self, dataset: &str, version: &str) -> Result<Manifest, ManifestError> {
        Manifest::build(
            &self.dataset_dir(dataset),
            dataset,
            version,
            manifest::PIECE_BYTES_DEFAULT,
        )
    }

    /// Piece `index` of `path` in `dataset`.
    pub fn read_piece(
        &self,
        manifest: &Manifest,
        file: &manifest::FileEntry,
        index: usize,
    ) -> Result<Vec<u8>, ManifestError> {
        manifest::read_piece(
            &self.dataset_dir(&manifest.dataset).join(&file.path),
            manifest.piece_bytes,
            index,
            file.size_bytes,
        )
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

/// What a pull did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PullReport {
    /// Files fetched and published.
    pub files_fetched: usize,
    /// Files the store already held with the manifest's hash.
    pub files_skipped: usize,
    /// Bytes fetched from the origin.
    pub bytes_fetched: u64,
}

/// Pulls every file of `manifest` from `origin` into `store`, calling `progress` with the bytes
/// of each verified piece.
pub fn pull(
    manifest: &Manifest,
    origin: &DirOrigin,
    store: &vbus_store::FileStore,
    mut progress: impl FnMut(u64),
) -> Result<PullReport, PullError> {
    let mut report = PullReport::default();
    for file in &manifest.files {
        let held = store.meta(&manifest.dataset, &file.path)?;
        if held.is_some_and(|meta| {
            meta.size_bytes == file.size_bytes && meta.hash_hex().as_deref() == Some(&file.blake3)
        }) {
            report.files_skipped += 1;
            continue;
        }
        let stage_error = |source| PullError::Stage {
            dataset: manifest.dataset.clone(),
            path: file.path.clone(),
            source,
        };
        let mut writer = store.file_writer(&manifest.dataset, &file.path)?;
        for index in 0..file.pieces.len() {
            let piece = origin.read_piece(manifest, file, index)?;
            manifest.verify_piece(file, index, &piece)?;
            writer.write_all(&piece).map_err(stage_error)?;
            report.bytes_fetched += piece.len() as u64;
            progress(piece.len() as u64);
        }
        // Every piece matched, so the whole does; the store hashed it again while writing.
        let meta = writer.commit()?;
        if meta.hash_hex().as_deref() != Some(&file.blake3) {
            store.remove(&manifest.dataset, &file.path)?;
            return Err(ManifestError::Mismatch {
                path: file.path.clone(),
                what: "the file".to_owned(),
                expected: file.blake3.clone(),
                actual: meta.hash_hex().unwrap_or_default(),
            }
            .into());
        }
        report.files_fetched += 1;
    }
    Ok(report)
}
