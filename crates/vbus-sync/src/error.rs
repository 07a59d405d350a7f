//! The BUS agent's errors: what failed, typed, so that each adapter (the daemon's HTTP API, the
//! peer server, the Python module) says it in its own terms. [`BusError::kind`] sorts them; the
//! HTTP status of each kind is chosen by the HTTP layer ([`crate::serve`]).

use std::path::PathBuf;

/// How an adapter should answer a [`BusError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong (a bad name, an oversized range): 400.
    Invalid,
    /// No peer token is configured on this agent: 403.
    NoCluster,
    /// The request did not present the cluster token: 401.
    Unauthorised,
    /// What was asked for is not here: 404.
    NotFound,
    /// The file changed under the operation (removed before the directory ordered it): 409.
    Conflict,
    /// A byte range past the end of the file: 416.
    PastTheEnd,
    /// The pieces asked for are in flight here and not verified yet: 425.
    NotYet,
    /// A transfer from the master or from peers failed: 502.
    Upstream,
    /// The coherence directory, or every holder of the newest version, could not be reached; the
    /// operation was refused rather than done on stale data: 503.
    Unavailable,
    /// A local failure (disk, index): 500.
    Internal,
}

/// An error of the BUS agent, the peer server or the cache's BUS source.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// This agent is in no cluster, so it serves no peer.
    #[error("this daemon is in no cluster (config key bus_config.cluster_token)")]
    NoCluster,
    /// A peer request without the cluster token.
    #[error("peer requests need `Authorization: Bearer CLUSTER_TOKEN`")]
    Unauthorised,
    /// Not held here, or no such version.
    #[error("{0}")]
    NotFound(String),
    /// The file was removed or replaced while the operation ran.
    #[error("{0}")]
    Conflict(String),
    /// A range past the end of the file.
    #[error("{len} bytes at {offset} is past the end ({size_bytes} bytes)")]
    PastTheEnd {
        /// The range's start.
        offset: u64,
        /// The range's length.
        len: u64,
        /// The file's length.
        size_bytes: u64,
    },
    /// The range is in flight here and not verified yet.
    #[error("{dataset}/{path} is in flight here; that range is not yet")]
    NotYet {
        /// The dataset.
        dataset: String,
        /// The path.
        path: String,
    },
    /// A pull failed.
    #[error(transparent)]
    Pull(#[from] crate::PullError),
    /// The coherence directory or the holders of the newest version could not be reached.
    #[error("{0}")]
    Unavailable(String),
    /// The L3 store failed.
    #[error(transparent)]
    Store(#[from] vbus_store::Error),
    /// The cache failed.
    #[error(transparent)]
    Cache(#[from] vbus_cache::Error),
    /// The master failed (a version could not be published or read).
    #[error(transparent)]
    Manifest(#[from] crate::ManifestError),
    /// A file of the agent's own state could not be read, parsed or written.
    #[error("{what} {}: {detail}", path.display())]
    State {
        /// What went wrong (`cannot read`, `is damaged`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        detail: String,
    },
    /// Any other local failure.
    #[error("{0}")]
    Internal(String),
}

impl BusError {
    /// How an adapter answers this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Invalid(_) => ErrorKind::Invalid,
            Self::NoCluster => ErrorKind::NoCluster,
            Self::Unauthorised => ErrorKind::Unauthorised,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::Conflict(_) => ErrorKind::Conflict,
            Self::PastTheEnd { .. } => ErrorKind::PastTheEnd,
            Self::NotYet { .. } => ErrorKind::NotYet,
            Self::Pull(_) => ErrorKind::Upstream,
            Self::Unavailable(_) => ErrorKind::Unavailable,
            // A copy that failed its checksum was quarantined: it is not held here any more.
            Self::Store(vbus_store::Error::ChecksumMismatch { .. }) => ErrorKind::NotFound,
            Self::Store(vbus_store::Error::InvalidName { .. }) => ErrorKind::Invalid,
            Self::Manifest(_) => ErrorKind::Invalid,
            Self::Store(_) | Self::Cache(_) | Self::State { .. } | Self::Internal(_) => {
                ErrorKind::Internal
            }
        }
    }
}

impl From<vbus_store::atomic::WholeWriteError> for BusError {
    fn from(err: vbus_store::atomic::WholeWriteError) -> Self {
        Self::State {
            what: "cannot write",
            path: err.path.clone(),
            detail: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarantined_copy_is_not_found_and_a_bad_name_is_invalid() {
        let quarantined = BusError::Store(vbus_store::Error::ChecksumMismatch {
            dataset: "d".into(),
            path: "p".into(),
            offset: 0,
            quarantined_to: "/q".into(),
        });
        assert_eq!(quarantined.kind(), ErrorKind::NotFound);
        let bad = BusError::Store(vbus_store::validate_dataset("..").unwrap_err());
        assert_eq!(bad.kind(), ErrorKind::Invalid);
        assert_eq!(
            BusError::Unavailable("x".into()).kind(),
            ErrorKind::Unavailable
        );
    }
}
