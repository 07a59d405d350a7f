//! The BUS agent: a node's side of the cluster.
//!
//! Every node can pull a dataset version from the master (whose versions a push records). With
//! a tracker configured it is also an agent: it registers with the tracker, heartbeats with its
//! upload load (re-registering and re-announcing what it holds when the tracker has forgotten
//! it), pulls pieces from the peers the tracker names, orders its writes at the coherence
//! directory (MESI, [`coherent`]) and writes its Modified lines back to the master, and serves
//! byte ranges of the complete files it holds to peers that present the cluster token
//! ([`crate::serve::peer`]). What it holds is recorded in `BUS/CONTROL_PLANE/agent_holdings.json`
//! so a restarted agent announces it again.

mod coherent;
mod transfer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use vbus_cache::CacheManager;

use crate::directory::{Directory, DirectoryError};
use crate::error::BusError;
use crate::repos::Repositories;
use crate::serve::peer::PeerFiles;
use crate::{Http, Manifest, Origin};

use transfer::PullProgress;
pub use transfer::{
    AgentStatus, HeldVersion, LastRound, PullInProgress, PullSummary, PushSummary,
    RepositoriesStatus,
};

/// How a [`BusAgent`] is set up (the node builds it from `bus_config`).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The node's home: the agent keeps its state in `BUS/`, and relative repository paths are
    /// under it.
    pub home: PathBuf,
    /// This agent's id at the tracker.
    pub id: String,
    /// The address peers reach this agent's peer routes at.
    pub addr: String,
    /// The cluster's directory (the tracker: [`crate::TrackerClient`] over HTTP, or an embedded
    /// [`crate::Tracker`]); `None`: no cluster (pulls from the master only).
    pub directory: Option<Arc<dyn Directory>>,
    /// The cluster token peers and the tracker present.
    pub cluster_token: Option<String>,
    /// Files pulled at once.
    pub pull_workers: usize,
    /// The upload limit over every range served (0: none).
    pub upload_bytes_per_second: u64,
    /// How often Modified lines are written back and repositories synced.
    pub sync_interval: Duration,
    /// The local-directory repositories kept coherent (relative to `home`; addresses are other
    /// agents and are skipped).
    pub repositories: Vec<String>,
}

/// Bytes per request when a file's newest version is fetched from its owner.
const COHERENT_FETCH_BYTES: u64 = 8 << 20;

/// The file recording what this agent holds, under `BUS/CONTROL_PLANE`.
const HOLDINGS_FILE: &str = "agent_holdings.json";

/// One dataset version this agent holds whole.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Holding {
    dataset: String,
    version: String,
    /// Path → BLAKE3 (hex) of each file.
    files: BTreeMap<String, String>,
}

/// The daemon's BUS side.
#[derive(Debug)]
pub struct BusAgent {
    id: String,
    addr: String,
    http: Http,
    tracker: Option<Arc<dyn Directory>>,
    origin: Origin,
    workers: usize,
    /// `bus_config.download_bytes_per_second`, over every piece pulled (shared with the
    /// cache's [`BusSource`]).
    download: Option<Arc<crate::RateLimiter>>,
    holdings_path: PathBuf,
    holdings: Mutex<BTreeMap<String, Holding>>,
    /// Pulls running now, for `/v1/sync/status` (and the CLI's progress line).
    pulls: Mutex<Vec<Arc<PullProgress>>>,
    /// What peers are served from.
    peer: Arc<PeerFiles>,
    /// `BUS/INTERCONNECT`: files in flight, resumed after a restart.
    staging: Arc<crate::Interconnect>,
    /// The local-directory repositories kept coherent with the master.
    repos: Option<Repositories>,
    /// `bus_config.sync_interval_seconds`: how often this agent's Modified lines are written
    /// back to the master.
    sync_interval: std::time::Duration,
    /// Files this agent pinned in L3 because it owns their only newest copy, until written
    /// back.
    coherence_pins: Mutex<std::collections::BTreeSet<String>>,
    stop: AtomicBool,
}

impl BusAgent {
    /// Opens the agent's state under `options.home` (`BUS/CONTROL_PLANE`, `BUS/INTERCONNECT`)
    /// and its repositories. It joins the cluster once [`BusAgent::run_agent`] runs; peers
    /// reach its files through [`BusAgent::peer_files`], which the caller serves (the daemon
    /// merges [`crate::serve::peer::peer_router`] into its API: a node in a cluster opens a port).
    pub fn new(
        options: AgentOptions,
        store: vbus_store::FileStore,
        origin: Origin,
        download: Option<Arc<crate::RateLimiter>>,
    ) -> Result<Self, BusError> {
        let http = Http::new(options.cluster_token.clone());
        let tracker = options.directory;
        let control = options.home.join("BUS/CONTROL_PLANE");
        std::fs::create_dir_all(&control).map_err(|err| BusError::State {
            what: "cannot create",
            path: control.clone(),
            detail: err.to_string(),
        })?;
        let holdings_path = control.join(HOLDINGS_FILE);
        let holdings = match std::fs::read_to_string(&holdings_path) {
            Ok(text) => serde_json::from_str(&text).map_err(|err| BusError::State {
                what: "damaged:",
                path: holdings_path.clone(),
                detail: err.to_string(),
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(err) => {
                return Err(BusError::State {
                    what: "cannot read",
                    path: holdings_path,
                    detail: err.to_string(),
                });
            }
        };
        let staging = Arc::new(crate::Interconnect::open(
            options.home.join("BUS/INTERCONNECT"),
        )?);
        let repos = Repositories::open(&options.home, &options.repositories)?;
        Ok(Self {
            id: options.id,
            addr: options.addr,
            http,
            tracker,
            origin,
            workers: options.pull_workers,
            download,
            holdings_path,
            holdings: Mutex::new(holdings),
            pulls: Mutex::new(Vec::new()),
            peer: Arc::new(PeerFiles::new(
                store,
                Some(Arc::clone(&staging)),
                Some(control.join("manifests")),
                options.cluster_token,
                options.upload_bytes_per_second,
            )),
            staging,
            repos,
            sync_interval: options.sync_interval,
            coherence_pins: Mutex::new(std::collections::BTreeSet::new()),
            stop: AtomicBool::new(false),
        })
    }

    /// Records a version as held (whole, synced, renamed), and keeps its manifest for peers
    /// that cannot reach the master.
    fn record(&self, manifest: &Manifest) -> Result<(), BusError> {
        if let Some(dir) = self.peer.manifests_dir() {
            vbus_store::atomic::write_whole(
                &dir.join(format!("{}@{}.json", manifest.dataset, manifest.version)),
                manifest.to_json().as_bytes(),
            )?;
        }
        let mut holdings = self.holdings.lock();
        holdings.insert(
            format!("{}@{}", manifest.dataset, manifest.version),
            Holding {
                dataset: manifest.dataset.clone(),
                version: manifest.version.clone(),
                files: manifest
                    .files
                    .iter()
                    .map(|file| (file.path.clone(), file.blake3.clone()))
                    .collect(),
            },
        );
        let json = serde_json::to_vec_pretty(&*holdings)
            .map_err(|err| BusError::Internal(format!("cannot encode the holdings: {err}")))?;
        vbus_store::atomic::write_whole(&self.holdings_path, &json)?;
        Ok(())
    }

    /// Announces every recorded version whose files the store still holds with their hashes.
    fn announce_all(&self, tracker: &dyn Directory, cache: &CacheManager) {
        let holdings: Vec<Holding> = self.holdings.lock().values().cloned().collect();
        for holding in holdings {
            let paths: Vec<String> = holding
                .files
                .iter()
                .filter(|(path, hash)| {
                    cache
                        .store()
                        .meta(&holding.dataset, path)
                        .ok()
                        .flatten()
                        .and_then(|meta| meta.hash_hex())
                        .as_deref()
                        == Some(hash.as_str())
                })
                .map(|(path, _)| path.clone())
                .collect();
            if paths.is_empty() {
                continue;
            }
            if let Err(err) = tracker.announce(&self.id, &holding.dataset, &holding.version, paths)
            {
                tracing::warn!(error = %err, "cannot announce {}@{}", holding.dataset, holding.version);
            }
        }
    }

    /// Registers, then heartbeats until [`BusAgent::stop`]; registers and announces again
    /// whenever the tracker does not know this agent (it restarted, or was unreachable long).
    pub fn run_agent(&self, cache: &CacheManager) {
        let Some(tracker) = self.tracker.clone() else {
            return;
        };
        let mut registered = false;
        let mut next_writeback = Instant::now() + self.sync_interval;
        while !self.stop.load(Ordering::Relaxed) {
            if registered && Instant::now() >= next_writeback {
                self.write_back_owned(&*tracker, cache);
                next_writeback = Instant::now() + self.sync_interval;
            }
            if !registered {
                match tracker.register(&self.id, &self.addr) {
                    Ok(()) => {
                        tracing::info!(tracker = %tracker.describe(), id = %self.id, "registered with the tracker");
                        self.announce_all(&*tracker, cache);
                        registered = true;
                    }
                    Err(err) => tracing::debug!(error = %err, "cannot register with the tracker"),
                }
            } else if let Err(err) = tracker.heartbeat(&self.id, self.peer.uploads_now()) {
                if err.is_unknown_agent() {
                    registered = false;
                    continue;
                }
                tracing::debug!(error = %err, "heartbeat failed");
            } else {
                self.withdraw_quarantined(&*tracker, cache);
            }
            let beat = crate::tracker::HEARTBEAT_INTERVAL;
            std::thread::sleep(beat.min(next_writeback.saturating_duration_since(Instant::now())));
        }
    }

    /// Stops offering the files L3 quarantined (their bytes failed their checksums, or they
    /// changed on disk while the daemon was down): each is withdrawn from every version this
    /// agent announced it in, so peers fetch it elsewhere.
    fn withdraw_quarantined(&self, tracker: &dyn Directory, cache: &CacheManager) {
        for file in cache.store().take_quarantined() {
            let versions: Vec<String> = self
                .holdings
                .lock()
                .values()
                .filter(|holding| {
                    holding.dataset == file.dataset && holding.files.contains_key(&file.path)
                })
                .map(|holding| holding.version.clone())
                .collect();
            for version in versions {
                match tracker.withdraw(&self.id, &file.dataset, &version, &file.path) {
                    Ok(()) => tracing::warn!(
                        dataset = %file.dataset, path = %file.path, %version,
                        "withdrew a quarantined copy at the tracker"
                    ),
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot withdraw the quarantined copy of {}/{}", file.dataset, file.path)
                    }
                }
            }
        }
    }

    /// Whether this daemon is in a cluster (reads and writes go through the directory).
    pub fn in_cluster(&self) -> bool {
        self.tracker.is_some()
    }

    /// The tracker, when this daemon is in a cluster.
    fn directory(&self) -> Option<&dyn Directory> {
        self.tracker.as_deref()
    }

    /// A directory call, registering first if the tracker does not know this agent yet (it
    /// started, or the tracker restarted, before the agent thread's next beat).
    fn with_registration<T>(
        &self,
        tracker: &dyn Directory,
        call: impl Fn() -> Result<T, DirectoryError>,
    ) -> Result<T, DirectoryError> {
        match call() {
            Err(err) if err.is_unknown_agent() => {
                tracker.register(&self.id, &self.addr)?;
                call()
            }
            other => other,
        }
    }

    /// The dirty lines of the coherence directory (none outside a cluster).
    pub fn dirty_lines(&self) -> Result<Vec<crate::Line>, BusError> {
        match self.directory() {
            Some(tracker) => tracker.dirty(None, None).map_err(|err| {
                BusError::Unavailable(format!("cannot list the directory's modified files: {err}"))
            }),
            None => Ok(Vec::new()),
        }
    }

    /// What peers are served from: the caller serves it with
    /// [`crate::serve::peer::peer_router`].
    pub fn peer_files(&self) -> &Arc<PeerFiles> {
        &self.peer
    }

    /// This agent's id at the tracker.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The master.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Keeps the local repositories coherent with the master, a round every
    /// `sync_interval_seconds` (the first at once), until [`BusAgent::stop`].
    pub fn run_repositories(&self, cache: &CacheManager) {
        let Some(repos) = &self.repos else {
            return;
        };
        while !self.stop.load(Ordering::Relaxed) {
            let round = repos.sync_once(self, cache).map_err(|err| err.to_string());
            match &round {
                Ok(round) if round.writes + round.copies > 0 => {
                    tracing::info!(
                        writes = round.writes,
                        copies = round.copies,
                        "repositories synced"
                    );
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "a repository round failed"),
            }
            *repos.last.lock() = Some(round);
            let next = Instant::now() + self.sync_interval;
            while !self.stop.load(Ordering::Relaxed) && Instant::now() < next {
                std::thread::sleep(std::time::Duration::from_millis(100).min(self.sync_interval));
            }
        }
    }

    /// Ends [`BusAgent::run_agent`] at its next beat.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
