//! The cache's [`Source`](vbus_cache::Source) when every tier misses: the master's newest
//! version of the dataset names the file, and its pieces come from peers (with a tracker) and the
//! master, each verified, then the whole file.

use std::sync::Arc;

use vbus_cache::{CacheKey, SourceError};

use crate::{Directory, Http, Origin, Swarm};

/// The most bytes a cache miss fetches whole through the BUS (larger files are pulled).
pub const SOURCE_FETCH_MAX_BYTES: u64 = 1 << 30;

/// The BUS as the cache's source of last resort.
#[derive(Debug)]
pub struct BusSource {
    name: String,
    origin: Origin,
    tracker: Option<Arc<dyn Directory>>,
    http: Http,
    id: String,
    workers: usize,
    download: Option<Arc<crate::RateLimiter>>,
}

impl BusSource {
    /// Fetches from `origin` and, with a `directory`, from the peers it names, through `http`
    /// (which presents the cluster token); `id` is skipped as a peer;
    /// `download_bytes_per_second` (0: none) paces every piece, and is shared with the agent's
    /// pulls through [`BusSource::download`].
    pub fn new(
        origin: Origin,
        directory: Option<Arc<dyn Directory>>,
        http: Http,
        id: String,
        workers: usize,
        download_bytes_per_second: u64,
    ) -> Self {
        Self {
            name: format!("bus (master {})", origin.describe()),
            tracker: directory,
            origin,
            http,
            id,
            workers,
            download: crate::RateLimiter::new(download_bytes_per_second).map(Arc::new),
        }
    }

    /// The download limit, to share with the agent's pulls.
    pub fn download(&self) -> Option<Arc<crate::RateLimiter>> {
        self.download.clone()
    }
}

impl vbus_cache::Source for BusSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn fetch(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, SourceError> {
        let manifest = match self.origin.stored_manifest(key.dataset(), crate::LATEST) {
            Ok(manifest) => manifest,
            // No version of that dataset at the master: not there.
            Err(crate::ManifestError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None);
            }
            Err(err) => return Err(err.into()),
        };
        let Some(file) = manifest.file(key.path()) else {
            return Ok(None);
        };
        let swarm = Swarm {
            tracker: self.tracker.as_deref(),
            http: &self.http,
            self_id: &self.id,
            workers: self.workers,
            download: self.download.as_deref(),
        };
        let bytes =
            crate::fetch_file_bytes(&manifest, file, &self.origin, swarm, SOURCE_FETCH_MAX_BYTES)?;
        Ok(Some(bytes))
    }
}
