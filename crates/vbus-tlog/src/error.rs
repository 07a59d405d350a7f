//! Errors of `vbus-tlog`.

use std::path::PathBuf;

/// What can go wrong in the log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
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
    /// A record or segment header is damaged somewhere other than a torn tail.
    #[error("the log is corrupt in {} at byte {offset}: {reason}", segment.display())]
    Corrupt {
        /// The segment file.
        segment: PathBuf,
        /// Byte offset of the damaged record or header in that file.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A write or sync failed earlier; the log refuses writes until it is reopened, since what
    /// reached the disk is unknown.
    #[error("the log refuses writes after an earlier failure ({reason}); reopen it to recover")]
    Failed {
        /// The failure.
        reason: String,
    },
    /// A record body beyond [`crate::MAX_BODY_BYTES`].
    #[error("a record of {body_bytes} bytes is larger than the limit of {max_bytes} bytes")]
    TooLarge {
        /// The body's size (kind byte and payload).
        body_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// A segment was written in a format this build does not read (a newer release wrote it).
    #[error(
        "{} is in format {found:?}, which this build cannot read (it reads {supported:?}); open \
         this home with the release that wrote it",
        path.display()
    )]
    UnsupportedFormat {
        /// The segment.
        path: PathBuf,
        /// Its magic, as found.
        found: String,
        /// The format this build reads.
        supported: String,
    },
    /// Another process holds the log.
    #[error("the log at {} is open in another process", path.display())]
    Locked {
        /// The log directory.
        path: PathBuf,
    },
    /// A read asked for records the log no longer (or not yet) holds.
    #[error("sequence number {seq} is not in the log, which holds {first} to {last}")]
    NotRetained {
        /// The sequence number asked for.
        seq: u64,
        /// The first retained.
        first: u64,
        /// The last written.
        last: u64,
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
