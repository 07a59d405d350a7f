//! Errors of `vbus-store`.

use std::path::PathBuf;

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A dataset or path name was refused.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// `dataset` or `path`.
        what: &'static str,
        /// The name as given (lossy for display).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The bytes on disk no longer match their checksums; the file was quarantined and none of
    /// the bad bytes was handed out.
    #[error(
        "checksum mismatch in {dataset}/{path} at byte {offset}: the file changed or was damaged \
         on disk; it was moved to {quarantined_to}"
    )]
    ChecksumMismatch {
        /// The dataset.
        dataset: String,
        /// The path inside the dataset.
        path: String,
        /// Where the first bad piece starts.
        offset: u64,
        /// Where the file now lies, outside the store.
        quarantined_to: PathBuf,
    },
    /// A version being read failed its checksum after a newer version replaced it (so nothing was
    /// quarantined); the read stopped before the bad bytes.
    #[error(
        "{dataset}/{path}: the bytes at {offset} of the version being read failed their checksum"
    )]
    Damaged {
        /// The dataset.
        dataset: String,
        /// The path inside the dataset.
        path: String,
        /// Where the bad piece starts.
        offset: u64,
    },
    /// The file alone is larger than the store.
    #[error(
        "{dataset}/{path} is {size_bytes} bytes, larger than the store's capacity of {capacity_bytes} bytes"
    )]
    TooLarge {
        /// The dataset.
        dataset: String,
        /// The path inside the dataset.
        path: String,
        /// The file's size.
        size_bytes: u64,
        /// The store's capacity.
        capacity_bytes: u64,
    },
    /// Not enough could be evicted to make room (pinned files and vetoed files stay).
    #[error(
        "no room for {dataset}/{path} ({size_bytes} bytes): {used_bytes} of {capacity_bytes} bytes are in use \
         and what remains cannot be evicted (pinned or held by the cache)"
    )]
    CapacityExhausted {
        /// The dataset.
        dataset: String,
        /// The path inside the dataset.
        path: String,
        /// The file's size.
        size_bytes: u64,
        /// Bytes in use after evicting what could be evicted.
        used_bytes: u64,
        /// The store's capacity.
        capacity_bytes: u64,
    },
    /// A publish at a reserved version found that version or a newer one already published.
    #[error(
        "{dataset}/{path}: cannot publish version {version}, the store holds version {held_version}"
    )]
    StaleVersion {
        /// The dataset.
        dataset: String,
        /// The path inside the dataset.
        path: String,
        /// The version asked for.
        version: u64,
        /// The version the store holds.
        held_version: u64,
    },
    /// The file is not in the store.
    #[error("{dataset}/{path} is not in the store")]
    NotFound {
        /// The dataset.
        dataset: String,
        /// The path inside the dataset.
        path: String,
    },
    /// Another process has the store open.
    #[error("the store at {root} is open in another process")]
    Locked {
        /// The store's root directory.
        root: PathBuf,
    },
    /// A file kept changing while it was being read (more than a few concurrent replacements).
    #[error("{dataset}/{path} was replaced too many times while it was being opened")]
    Contended {
        /// The dataset.
        dataset: String,
        /// The path inside the dataset.
        path: String,
    },
    /// An index file was written in a format this build does not read (a newer release wrote
    /// it); the store refuses to open rather than lose what it describes.
    #[error(
        "{path} is in format {found:?}, which this build cannot read (it reads {supported}); \
         open this home with the release that wrote it, or move CACHE/L3_DISK/.vbus-index aside \
         to rebuild the index from the files (their hashes are then computed again)"
    )]
    UnsupportedFormat {
        /// The file.
        path: PathBuf,
        /// Its magic, as found.
        found: String,
        /// The formats this build reads.
        supported: String,
    },
    /// An I/O error, with the path it concerns.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`create`, `rename`, `fsync`...).
        op: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}

crate::impl_from_whole_write_error!(Error);

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
