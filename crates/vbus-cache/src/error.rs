//! Errors of `vbus-cache`.

/// What can go wrong in the cache.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The L3 store refused or failed (bad name, no room, checksum mismatch, I/O).
    #[error(transparent)]
    Store(#[from] vbus_store::Error),
    /// The source a miss went to failed.
    #[error("source {source_name} failed for {dataset}/{path}: {source}")]
    Source {
        /// The source's name.
        source_name: String,
        /// The dataset.
        dataset: String,
        /// The path.
        path: String,
        /// What went wrong, as the source said it.
        #[source]
        source: crate::SourceError,
    },
    /// The builder was given no L3 directory.
    #[error("the cache needs an L3 directory (CacheBuilder::l3_dir)")]
    NoL3Dir,
    /// The prefetch thread could not be started.
    #[error("cannot start the prefetch thread: {0}")]
    Thread(#[source] std::io::Error),
    /// Device memory or a copy to or from it failed.
    #[error(transparent)]
    Device(vbus_gpu::Error),
    /// A device read was asked of a cache without L1.
    #[error("this cache has no L1 (build it with CacheBuilder::l1_device)")]
    NoL1,
    /// A concurrent load of the same key failed; this get shares its outcome.
    #[error("the load of {dataset}/{path} this get waited for failed: {message}")]
    SharedLoad {
        /// The dataset.
        dataset: String,
        /// The path.
        path: String,
        /// The other load's error.
        message: String,
    },
}

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
