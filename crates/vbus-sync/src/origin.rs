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
use crate::rate::RateLimiter;

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
    /// A limit on the bytes of pieces read from it (its egress), shared by its clones.
    egress: Option<std::sync::Arc<RateLimiter>>,
}

impl DirOrigin {
    /// The origin at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            egress: None,
        }
    }

    /// The same origin with its piece reads limited by `limiter` (as a remote master's
    /// bandwidth would be).
    pub fn with_egress_limit(mut self, limiter: std::sync::Arc<RateLimiter>) -> Self {
        self.egress = Some(limiter);
        self
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

    /// Records the directory's current content of `dataset` as a version: its manifest, named
    /// by a hash of the file list (the same content gives the same version), is written under
    /// `{root}/.vbus/manifests/{dataset}/` (whole, synced, renamed), and `latest` points at it.
    pub fn publish_version(&self, dataset: &str) -> Result<Manifest, ManifestError> {
        if dataset.is_empty() || dataset.starts_with('.') || dataset.contains(['/', '\\', '\0']) {
            return Err(ManifestError::Invalid(format!(
                "bad dataset name {dataset:?}"
            )));
        }
        let mut manifest = self.manifest(dataset, "")?;
        manifest.version = content_version(&manifest);
        let dir = self.manifests_dir(dataset);
        std::fs::create_dir_all(&dir).map_err(|source| ManifestError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        write_atomically(
            &dir.join(format!("{}.json", manifest.version)),
            manifest.to_json().as_bytes(),
        )?;
        write_atomically(&dir.join(LATEST), manifest.version.as_bytes())?;
        Ok(manifest)
    }

    /// The manifest of a version recorded by [`DirOrigin::publish_version`]; `latest` names the
    /// newest.
    pub fn stored_manifest(&self, dataset: &str, version: &str) -> Result<Manifest, ManifestError> {
        let bad = |why: String| ManifestError::Invalid(why);
        if dataset.is_empty() || dataset.starts_with('.') || dataset.contains(['/', '\\', '\0']) {
            return Err(bad(format!("bad dataset name {dataset:?}")));
        }
        let dir = self.manifests_dir(dataset);
        let read = |path: PathBuf| {
            std::fs::read_to_string(&path).map_err(|source| ManifestError::Io {
                op: "read",
                path,
                source,
            })
        };
        let version = if version == LATEST || version.is_empty() {
            read(dir.join(LATEST))?.trim().to_owned()
        } else {
            version.to_owned()
        };
        if version.is_empty()
            || !version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(format!("bad version {version:?}")));
        }
        let manifest = Manifest::from_json(&read(dir.join(format!("{version}.json")))?)?;
        if manifest.dataset != dataset || manifest.version != version {
            return Err(bad(format!(
                "the manifest of {dataset}@{version} names {}@{}",
                manifest.dataset, manifest.version
            )));
        }
        Ok(manifest)
    }

    fn manifests_dir(&self, dataset: &str) -> PathBuf {
        self.root.join(".vbus").join("manifests").join(dataset)
    }

    /// Piece `index` of `path` in `dataset`.
    pub fn read_piece(
        &self,
        manifest: &Manifest,
        file: &manifest::FileEntry,
        index: usize,
    ) -> Result<Vec<u8>, ManifestError> {
        crate::rate::acquire(
            self.egress.as_deref(),
            manifest::piece_len(file.size_bytes, manifest.piece_bytes, index),
        );
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

/// The name a version gets from its content: a hash of its piece size and of every file's path,
/// size and BLAKE3, 16 hex digits. A manifest from anywhere (a peer, when the master is down) is
/// checked by recomputing it.
pub fn content_version(manifest: &Manifest) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&manifest.piece_bytes.to_le_bytes());
    for file in &manifest.files {
        hasher.update(file.path.as_bytes());
        hasher.update(&[0]);
        hasher.update(&file.size_bytes.to_le_bytes());
        hasher.update(file.blake3.as_bytes());
        for piece in &file.pieces {
            hasher.update(piece.as_bytes());
        }
    }
    hasher.finalize().to_hex()[..16].to_owned()
}

/// The name of the newest version.
pub const LATEST: &str = "latest";

/// Writes `bytes` to `path` whole: a temporary file beside it, synced, renamed, directory synced.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ManifestError> {
    write_file_whole(path, bytes).map_err(|(op, source)| ManifestError::Io {
        op,
        path: path.to_owned(),
        source,
    })
}

/// Writes `bytes` to `path` whole, so that a crash leaves the old file or the new one: a
/// temporary file beside it, synced, renamed over it, the directory synced. An error says which
/// step failed.
pub fn write_file_whole(path: &Path, bytes: &[u8]) -> Result<(), (&'static str, std::io::Error)> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp).map_err(|e| ("create", e))?;
    file.write_all(bytes).map_err(|e| ("write", e))?;
    file.sync_all().map_err(|e| ("sync", e))?;
    std::fs::rename(&tmp, path).map_err(|e| ("rename into", e))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(|e| ("sync the directory of", e))?;
    }
    Ok(())
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
