//! Dataset versions through the agent: pull (from peers and the master, into the cache), push
//! (write back, then record the master's current files as a version), and the agent's status.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;
use vbus_cache::{CacheKey, CacheManager};

use super::BusAgent;
use crate::error::BusError;
use crate::repos::Round;
use crate::{PullError, Sink, Swarm};

/// What a pull did.
#[derive(Debug, Clone, Serialize)]
pub struct PullSummary {
    /// The dataset.
    pub dataset: String,
    /// The version pulled.
    pub version: String,
    /// Files in the version.
    pub files: usize,
    /// Bytes in the version.
    pub bytes: u64,
    /// Files fetched and published.
    pub files_fetched: usize,
    /// Files already held with their hash.
    pub files_skipped: usize,
    /// Bytes fetched from peers.
    pub bytes_from_peers: u64,
    /// Bytes fetched from the master.
    pub bytes_from_origin: u64,
    /// Pieces that failed their hash (fetched again elsewhere).
    pub pieces_rejected: u64,
    /// Peer requests that failed.
    pub peer_errors: u64,
    /// Tracker requests that failed.
    pub tracker_errors: u64,
    /// Wall time.
    pub seconds: f64,
}

/// What a push did.
#[derive(Debug, Clone, Serialize)]
pub struct PushSummary {
    /// The dataset.
    pub dataset: String,
    /// The version recorded.
    pub version: String,
    /// Files in it.
    pub files: usize,
    /// Bytes in it.
    pub bytes: u64,
    /// Modified lines written back to the master first.
    pub written_back: usize,
}

/// A dataset version this agent holds whole.
#[derive(Debug, Clone, Serialize)]
pub struct HeldVersion {
    /// The dataset.
    pub dataset: String,
    /// The version.
    pub version: String,
    /// Its number of files.
    pub files: usize,
}

/// A pull running now.
#[derive(Debug, Clone, Serialize)]
pub struct PullInProgress {
    /// The dataset.
    pub dataset: String,
    /// The version.
    pub version: String,
    /// Bytes of the version.
    pub bytes: u64,
    /// Bytes verified so far.
    pub bytes_done: u64,
    /// Since it started.
    pub seconds: f64,
}

/// The outcome of the last repository round.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum LastRound {
    /// It ran.
    Done(Round),
    /// It failed.
    Failed {
        /// Why.
        error: String,
    },
}

/// The local-directory repositories.
#[derive(Debug, Clone, Serialize)]
pub struct RepositoriesStatus {
    /// Their directories.
    pub dirs: Vec<String>,
    /// The last round (`None`: none yet).
    pub last_round: Option<LastRound>,
}

/// The agent as `/v1/sync/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AgentStatus {
    /// Its id at the tracker.
    pub agent_id: String,
    /// The address peers reach it at.
    pub advertise: String,
    /// The tracker (`None`: no cluster).
    pub tracker: Option<String>,
    /// The master.
    pub master: String,
    /// Ranges being served to peers now.
    pub uploads_now: u32,
    /// The repositories (`None`: none configured).
    pub repositories: Option<RepositoriesStatus>,
    /// The versions held whole.
    pub held: Vec<HeldVersion>,
    /// The pulls running now.
    pub pulls_in_progress: Vec<PullInProgress>,
}

/// A pull in progress.
#[derive(Debug)]
pub(super) struct PullProgress {
    dataset: String,
    version: String,
    bytes: u64,
    bytes_done: AtomicU64,
    started: Instant,
}

/// Lists a pull in the status for as long as it lives.
struct Listed<'a> {
    pulls: &'a Mutex<Vec<Arc<PullProgress>>>,
    progress: Arc<PullProgress>,
}

impl<'a> Listed<'a> {
    fn new(pulls: &'a Mutex<Vec<Arc<PullProgress>>>, progress: PullProgress) -> Self {
        let progress = Arc::new(progress);
        pulls.lock().push(Arc::clone(&progress));
        Self { pulls, progress }
    }
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        self.pulls
            .lock()
            .retain(|other| !Arc::ptr_eq(other, &self.progress));
    }
}

/// Pulled files go through the cache: a publish drops the memory tiers' copies of the path.
pub(crate) struct CacheSink<'a>(pub(crate) &'a CacheManager);

impl Sink for CacheSink<'_> {
    fn held(&self, dataset: &str, path: &str) -> Result<Option<(u64, String)>, PullError> {
        Sink::held(self.0.store(), dataset, path)
    }

    fn adopt(
        &self,
        dataset: &str,
        path: &str,
        src: &std::path::Path,
        hash: [u8; 32],
    ) -> Result<(), PullError> {
        self.0
            .adopt(CacheKey::new(dataset, path), src, hash)
            .map(drop)
            .map_err(|err| PullError::Stage {
                dataset: dataset.to_owned(),
                path: path.to_owned(),
                source: std::io::Error::other(err),
            })
    }
}

impl BusAgent {
    /// Pulls `dataset` at `version` (`None`: the newest) into `cache`: the manifest from the
    /// master (or, for a named version the master cannot give, from peers, checked against its
    /// name), then every file's pieces from peers and the master, each verified.
    pub fn pull(
        &self,
        cache: &CacheManager,
        dataset: &str,
        version: Option<&str>,
    ) -> Result<PullSummary, BusError> {
        let version = version.unwrap_or(crate::LATEST);
        let manifest = match self.origin.stored_manifest(dataset, version) {
            Ok(manifest) => manifest,
            Err(master_err) => match (&self.tracker, version != crate::LATEST) {
                (Some(tracker), true) => {
                    crate::manifest_from_peers(&**tracker, &self.http, &self.id, dataset, version)
                        .map_err(|peer_err| {
                        BusError::NotFound(format!(
                            "no version {version} of {dataset}: the master: {master_err}; \
                                 peers: {peer_err}"
                        ))
                    })?
                }
                _ => {
                    return Err(BusError::NotFound(format!(
                        "no version {version} of {dataset} at the master: {master_err}"
                    )));
                }
            },
        };
        let started = Instant::now();
        let listed = Listed::new(
            &self.pulls,
            PullProgress {
                dataset: manifest.dataset.clone(),
                version: manifest.version.clone(),
                bytes: manifest.total_bytes(),
                bytes_done: AtomicU64::new(0),
                started,
            },
        );
        let swarm = Swarm {
            tracker: self.tracker.as_deref(),
            http: &self.http,
            self_id: &self.id,
            workers: self.workers,
            download: self.download.as_deref(),
        };
        let report = crate::pull_swarm(
            &manifest,
            &self.origin,
            &CacheSink(cache),
            swarm,
            &self.staging,
            &|n| {
                listed.progress.bytes_done.fetch_add(n, Ordering::Relaxed);
            },
        )?;
        self.record(&manifest)?;
        tracing::info!(
            dataset = %manifest.dataset,
            version = %manifest.version,
            from_peers = report.bytes_from_peers,
            from_origin = report.bytes_from_origin,
            "pulled"
        );
        Ok(PullSummary {
            dataset: manifest.dataset.clone(),
            version: manifest.version.clone(),
            files: manifest.files.len(),
            bytes: manifest.total_bytes(),
            files_fetched: report.files_fetched,
            files_skipped: report.files_skipped,
            bytes_from_peers: report.bytes_from_peers,
            bytes_from_origin: report.bytes_from_origin,
            pieces_rejected: report.pieces_rejected as u64,
            peer_errors: report.peer_errors as u64,
            tracker_errors: report.tracker_errors as u64,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Writes back every Modified line of `dataset` (fetched from its owner when needed), then
    /// records the master's current files of `dataset` as a version.
    pub fn push(&self, cache: &CacheManager, dataset: &str) -> Result<PushSummary, BusError> {
        let written_back = self.write_back_dataset(cache, dataset)?;
        let manifest = self.origin.publish_version(dataset)?;
        Ok(PushSummary {
            dataset: manifest.dataset.clone(),
            version: manifest.version.clone(),
            files: manifest.files.len(),
            bytes: manifest.total_bytes(),
            written_back,
        })
    }

    /// What this agent holds, serves and pulls now.
    pub fn status(&self) -> AgentStatus {
        let held = self
            .holdings
            .lock()
            .values()
            .map(|holding| HeldVersion {
                dataset: holding.dataset.clone(),
                version: holding.version.clone(),
                files: holding.files.len(),
            })
            .collect();
        let pulls_in_progress = self
            .pulls
            .lock()
            .iter()
            .map(|pull| PullInProgress {
                dataset: pull.dataset.clone(),
                version: pull.version.clone(),
                bytes: pull.bytes,
                bytes_done: pull.bytes_done.load(Ordering::Relaxed),
                seconds: pull.started.elapsed().as_secs_f64(),
            })
            .collect();
        AgentStatus {
            agent_id: self.id.clone(),
            advertise: self.addr.clone(),
            tracker: self.tracker.as_ref().map(|t| t.describe()),
            master: self.origin.describe(),
            uploads_now: self.peer.uploads_now(),
            repositories: self.repos.as_ref().map(|repos| RepositoriesStatus {
                dirs: repos.dirs(),
                last_round: repos.last.lock().clone().map(|round| match round {
                    Ok(round) => LastRound::Done(round),
                    Err(error) => LastRound::Failed { error },
                }),
            }),
            held,
            pulls_in_progress,
        }
    }
}
