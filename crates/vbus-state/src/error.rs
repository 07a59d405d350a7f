//! Errors of `vbus-state`.

use std::path::PathBuf;

/// What can go wrong in the state bus.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transaction log failed or is damaged.
    #[error(transparent)]
    Log(#[from] vbus_tlog::Error),
    /// A file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// No page has this id.
    #[error("no page {id}")]
    NoSuchPage {
        /// The id asked for.
        id: u64,
    },
    /// A delta does not fit its page, or its bytes do not decode.
    #[error("bad delta: {reason}")]
    BadDelta {
        /// What is wrong.
        reason: String,
    },
    /// Two deltas cannot be merged into one with the same effect.
    #[error("cannot merge these deltas: {reason}")]
    NotMergeable {
        /// Why.
        reason: String,
    },
    /// An update named an epoch the page has moved past.
    #[error("page {id} is at epoch {actual}, the update expected {expected}")]
    EpochMismatch {
        /// The page.
        id: u64,
        /// The epoch the caller expected.
        expected: u64,
        /// The page's epoch.
        actual: u64,
    },
    /// The edge would close a cycle.
    #[error("the edge would close a cycle: {pages}")]
    Cycle {
        /// The pages on the cycle, in order.
        pages: String,
    },
    /// The edge does not fit its pages or the target's rule.
    #[error("bad edge: {reason}")]
    BadEdge {
        /// What is wrong.
        reason: String,
    },
    /// A rule names a function not registered with the bus.
    #[error("no rule function {name:?} is registered (StateBusBuilder::function)")]
    UnknownFunction {
        /// The name.
        name: String,
    },
    /// A log record does not decode or does not apply.
    #[error("log record {seq} is invalid: {reason}")]
    BadRecord {
        /// Its sequence number.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint file is damaged.
    #[error("checkpoint {} is damaged: {reason}", path.display())]
    CorruptCheckpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A replay asked for a state no retained checkpoint and log reach.
    #[error(
        "sequence number {seq} cannot be rebuilt: the state is retained from {first} to {last}"
    )]
    NotRetained {
        /// The sequence number asked for.
        seq: u64,
        /// The oldest reachable.
        first: u64,
        /// The newest.
        last: u64,
    },
    /// A GPU page's bytes were asked for without a device.
    /// A create would take the pages, or their checkpoints, past a limit the bus was opened with
    /// (or the device has no room, or the disk none for a checkpoint); nothing changed.
    #[error(
        "{limit} would take {requested_bytes} more bytes: {used_bytes} of {limit_bytes} are in use"
    )]
    OverLimit {
        /// Which limit.
        limit: Limit,
        /// The limit in bytes.
        limit_bytes: u64,
        /// What is in use now.
        used_bytes: u64,
        /// What the change asked for.
        requested_bytes: u64,
    },
    /// A checkpoint was written in a format this build does not read (a newer release wrote it):
    /// the bus refuses to open rather than fall back to an older state.
    #[error(
        "checkpoint {} is in format {found:?}, which this build cannot read (it reads \
         {supported:?}); open this home with the release that wrote it",
        path.display()
    )]
    UnsupportedFormat {
        /// The checkpoint.
        path: PathBuf,
        /// Its magic, as found.
        found: String,
        /// The format this build reads.
        supported: String,
    },
    #[error("this page lives on the GPU, and the bus has no device")]
    NoDevice,
    /// Device memory or a copy failed.
    #[error(transparent)]
    Device(vbus_gpu::Error),
    /// An earlier failure left memory and log apart; the bus refuses changes until reopened.
    #[error("the state bus refuses changes after an earlier failure ({reason}); reopen it")]
    Failed {
        /// The failure.
        reason: String,
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

vbus_store::impl_from_whole_write_error!(Error);

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The limits of [`Error::OverLimit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The pages' bytes together, host and GPU ([`crate::StateBusBuilder::page_bytes_max`]).
    PageBytes,
    /// The checkpoints kept on disk together, counting the one being written
    /// ([`crate::StateBusBuilder::checkpoint_bytes_max`]).
    CheckpointBytes,
    /// The device's free memory, for a GPU page.
    DeviceMemory,
    /// The free space of the checkpoint folder's file system.
    DiskSpace,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::PageBytes => "the pages",
            Self::CheckpointBytes => "the checkpoints kept",
            Self::DeviceMemory => "the GPU page",
            Self::DiskSpace => "the checkpoint",
        })
    }
}
