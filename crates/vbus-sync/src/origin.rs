//! Origins (the master store) and pulls from them into the L3 store. An origin is a
//! local directory (`DATA/MASTER_DB` by default) or an S3-compatible bucket (`s3://bucket/prefix`,
//! through `object_store`); either holds `{dataset}/{path}` and the recorded versions under
//! `.vbus/manifests/{dataset}/`.
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

/// Where an origin keeps its objects: keys are `/`-separated paths from its root, datasets at
/// `{dataset}/{path}` and the recorded versions under `.vbus/manifests/{dataset}/`.
pub(crate) trait Backend: Send + Sync + std::fmt::Debug {
    /// Where it is, for messages (`/srv/master` or `s3://bucket/prefix`).
    fn describe(&self) -> String;
    /// Every object under `{dir}/` (everything for `""`): paths relative to it, sorted, hidden
    /// entries (any component starting with `.`) left out.
    fn list(&self, dir: &str) -> Result<Vec<Object>, ManifestError>;
    /// `len` bytes of `key` from `offset`; fewer is an error.
    fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, ManifestError>;
    /// [`Backend::read_range`] into `buf` (replacing what it held), so a caller reading piece
    /// after piece reuses one buffer.
    fn read_range_into(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), ManifestError> {
        *buf = self.read_range(key, offset, len)?;
        Ok(())
    }
    /// All of `key`; `None` when there is no such object.
    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, ManifestError>;
    /// Replaces `key` whole with the `size_bytes` bytes `from` gives: a reader sees the old
    /// object or the new one, never a mix.
    fn write_from(
        &self,
        key: &str,
        from: &mut dyn std::io::Read,
        size_bytes: u64,
    ) -> Result<(), ManifestError>;
    /// Replaces `key` whole with `bytes`.
    fn write(&self, key: &str, bytes: &[u8]) -> Result<(), ManifestError>;
}

/// An object of an origin, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Its path below the listed folder.
    pub path: String,
    /// Its size in bytes.
    pub size_bytes: u64,
    /// What changes when it is rewritten (a directory's modification time, an S3 ETag).
    pub stamp: String,
}

/// The master store: a local directory or an S3-compatible bucket
/// holding datasets, one folder (prefix) each, and the versions recorded of them.
#[derive(Debug, Clone)]
pub struct Origin {
    backend: std::sync::Arc<dyn Backend>,
    /// A limit on the bytes of pieces read from it (its egress), shared by its clones.
    egress: Option<std::sync::Arc<RateLimiter>>,
}

/// Checks a dataset name: one path component, not hidden.
fn check_dataset(dataset: &str) -> Result<(), ManifestError> {
    if dataset.is_empty() || dataset.starts_with('.') || dataset.contains(['/', '\\', '\0']) {
        return Err(ManifestError::Invalid(format!(
            "bad dataset name {dataset:?}"
        )));
    }
    Ok(())
}

impl Origin {
    /// The local directory at `root`.
    pub fn dir(root: impl Into<PathBuf>) -> Self {
        Self::with_backend(DirBackend { root: root.into() })
    }

    /// The S3-compatible bucket `url` names (`s3://bucket` or `s3://bucket/prefix`), reached
    /// as `options` say.
    pub fn s3(url: &str, options: &crate::s3::S3Options) -> Result<Self, ManifestError> {
        Ok(Self::with_backend(crate::s3::S3Backend::new(url, options)?))
    }

    /// The origin `location` names: an `s3://` URL, else a directory.
    pub fn open(location: &str, options: &crate::s3::S3Options) -> Result<Self, ManifestError> {
        if location.starts_with("s3://") {
            Self::s3(location, options)
        } else {
            Ok(Self::dir(location))
        }
    }

    fn with_backend(backend: impl Backend + 'static) -> Self {
        Self {
            backend: std::sync::Arc::new(backend),
            egress: None,
        }
    }

    /// The same origin with its piece reads limited by `limiter` (as a remote master's
    /// bandwidth would be).
    pub fn with_egress_limit(mut self, limiter: std::sync::Arc<RateLimiter>) -> Self {
        self.egress = Some(limiter);
        self
    }

    /// Where it is: a directory, or an `s3://` URL.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// The manifest of `dataset` as the origin holds it now, named `version`, in pieces of
    /// [`manifest::PIECE_BYTES_DEFAULT`]: every object is read and hashed, piece by piece.
    pub fn manifest(&self, dataset: &str, version: &str) -> Result<Manifest, ManifestError> {
        self.manifest_with(dataset, version, manifest::PIECE_BYTES_DEFAULT)
    }

    /// [`Origin::manifest`] in pieces of `piece_bytes`.
    pub fn manifest_with(
        &self,
        dataset: &str,
        version: &str,
        piece_bytes: u64,
    ) -> Result<Manifest, ManifestError> {
        check_dataset(dataset)?;
        manifest::check_piece_bytes(piece_bytes)?;
        let mut files = Vec::new();
        for object in self.backend.list(dataset)? {
            let key = format!("{dataset}/{}", object.path);
            files.push(manifest::hash_pieces(
                &object.path,
                object.size_bytes,
                piece_bytes,
                |offset, len, buf| self.backend.read_range_into(&key, offset, len, buf),
            )?);
        }
        Ok(Manifest {
            format: manifest::FORMAT_VERSION,
            dataset: dataset.to_owned(),
            version: version.to_owned(),
            piece_bytes,
            files,
        })
    }

    /// Records the origin's current content of `dataset` as a version: its manifest, named by
    /// a hash of the file list (the same content gives the same version), is written whole
    /// under `.vbus/manifests/{dataset}/`, and `latest` points at it.
    pub fn publish_version(&self, dataset: &str) -> Result<Manifest, ManifestError> {
        let mut manifest = self.manifest(dataset, "")?;
        manifest.version = content_version(&manifest);
        let dir = manifests_key(dataset);
        self.backend.write(
            &format!("{dir}/{}.json", manifest.version),
            manifest.to_json().as_bytes(),
        )?;
        self.backend
            .write(&format!("{dir}/{LATEST}"), manifest.version.as_bytes())?;
        Ok(manifest)
    }

    /// The manifest of a version recorded by [`Origin::publish_version`]; `latest` names the
    /// newest. An unknown dataset or version is an [`ManifestError::Io`] of kind `NotFound`.
    pub fn stored_manifest(&self, dataset: &str, version: &str) -> Result<Manifest, ManifestError> {
        let bad = |why: String| ManifestError::Invalid(why);
        check_dataset(dataset)?;
        let dir = manifests_key(dataset);
        let read = |key: String| -> Result<String, ManifestError> {
            let bytes = self.backend.read(&key)?.ok_or_else(|| ManifestError::Io {
                op: "read",
                path: PathBuf::from(format!("{}/{key}", self.describe())),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })?;
            String::from_utf8(bytes).map_err(|_| bad(format!("{key} is not UTF-8")))
        };
        let version = if version == LATEST || version.is_empty() {
            read(format!("{dir}/{LATEST}"))?.trim().to_owned()
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
        let manifest = Manifest::from_json(&read(format!("{dir}/{version}.json"))?)?;
        if manifest.dataset != dataset || manifest.version != version {
            return Err(bad(format!(
                "the manifest of {dataset}@{version} names {}@{}",
                manifest.dataset, manifest.version
            )));
        }
        Ok(manifest)
    }

    /// Piece `index` of `file` in `manifest`'s dataset.
    pub fn read_piece(
        &self,
        manifest: &Manifest,
        file: &manifest::FileEntry,
        index: usize,
    ) -> Result<Vec<u8>, ManifestError> {
        self.read_range(
            &manifest.dataset,
            &file.path,
            index as u64 * manifest.piece_bytes,
            manifest::piece_len(file.size_bytes, manifest.piece_bytes, index),
        )
    }

    /// Replaces `dataset/path` at the origin whole with the `size_bytes` bytes `from` gives (a
    /// write-back): readers of the origin see the old file or the new one.
    pub fn write_file(
        &self,
        dataset: &str,
        path: &str,
        from: &mut dyn std::io::Read,
        size_bytes: u64,
    ) -> Result<(), ManifestError> {
        check_dataset(dataset)?;
        check_path(path)?;
        self.backend
            .write_from(&format!("{dataset}/{path}"), from, size_bytes)
    }

    /// Every file of every dataset (`dataset/path`), with its size and stamp; an empty origin
    /// (a directory not made yet) has none.
    pub fn objects(&self) -> Result<Vec<Object>, ManifestError> {
        match self.backend.list("") {
            Ok(objects) => Ok(objects
                .into_iter()
                .filter(|object| object.path.contains('/'))
                .collect()),
            Err(ManifestError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(Vec::new())
            }
            Err(err) => Err(err),
        }
    }

    /// `len` bytes at `offset` of `dataset/path` as the origin holds it now.
    pub fn read_range(
        &self,
        dataset: &str,
        path: &str,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, ManifestError> {
        check_dataset(dataset)?;
        check_path(path)?;
        crate::rate::acquire(self.egress.as_deref(), len);
        self.backend
            .read_range(&format!("{dataset}/{path}"), offset, len)
    }
}

fn manifests_key(dataset: &str) -> String {
    format!(".vbus/manifests/{dataset}")
}

/// Checks a path inside a dataset: `/`-separated, relative, no empty, `.`, `..` or hidden
/// component.
pub(crate) fn check_path(path: &str) -> Result<(), ManifestError> {
    if path.is_empty()
        || path.contains(['\\', '\0'])
        || path
            .split('/')
            .any(|part| part.is_empty() || part.starts_with('.'))
    {
        return Err(ManifestError::Invalid(format!("bad path {path:?}")));
    }
    Ok(())
}

/// A local directory.
#[derive(Debug)]
struct DirBackend {
    root: PathBuf,
}

fn io_error(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ManifestError + use<> {
    let path = path.to_owned();
    move |source| ManifestError::Io { op, path, source }
}

impl Backend for DirBackend {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn list(&self, dir: &str) -> Result<Vec<Object>, ManifestError> {
        let base = if dir.is_empty() {
            self.root.clone()
        } else {
            self.root.join(dir)
        };
        let mut out = Vec::new();
        let mut stack = vec![base.clone()];
        while let Some(at) = stack.pop() {
            for entry in std::fs::read_dir(&at).map_err(io_error("list", &at))? {
                let entry = entry.map_err(io_error("list", &at))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.starts_with('.') {
                    continue;
                }
                let path = entry.path();
                let meta = std::fs::metadata(&path).map_err(io_error("stat", &path))?;
                if meta.is_dir() {
                    stack.push(path);
                } else if meta.is_file() {
                    let relative = path
                        .strip_prefix(&base)
                        .expect("walked from the base")
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join("/");
                    let stamp = meta
                        .modified()
                        .ok()
                        .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or_else(String::new, |at| at.as_nanos().to_string());
                    out.push(Object {
                        path: relative,
                        size_bytes: meta.len(),
                        stamp,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    fn read_range(&self, key: &str, offset: u64, len: u64) -> Result<Vec<u8>, ManifestError> {
        let mut bytes = Vec::new();
        self.read_range_into(key, offset, len, &mut bytes)?;
        Ok(bytes)
    }

    fn read_range_into(
        &self,
        key: &str,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
    ) -> Result<(), ManifestError> {
        let path = self.root.join(key);
        let file = std::fs::File::open(&path).map_err(io_error("open", &path))?;
        // Only growth is zeroed: a reused buffer is not written twice.
        buf.truncate(len as usize);
        buf.resize(len as usize, 0);
        std::os::unix::fs::FileExt::read_exact_at(&file, buf, offset)
            .map_err(io_error("read", &path))
    }

    fn read(&self, key: &str) -> Result<Option<Vec<u8>>, ManifestError> {
        let path = self.root.join(key);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(io_error("read", &path)(err)),
        }
    }

    fn write_from(
        &self,
        key: &str,
        from: &mut dyn std::io::Read,
        size_bytes: u64,
    ) -> Result<(), ManifestError> {
        let path = self.root.join(key);
        // The temporary file is hidden, so a manifest built meanwhile does not list it.
        vbus_store::atomic::write_whole_from(
            &path,
            &mut std::io::Read::take(from, size_bytes),
            Some(size_bytes),
        )?;
        Ok(())
    }

    fn write(&self, key: &str, bytes: &[u8]) -> Result<(), ManifestError> {
        vbus_store::atomic::write_whole(&self.root.join(key), bytes)?;
        Ok(())
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
    origin: &Origin,
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
