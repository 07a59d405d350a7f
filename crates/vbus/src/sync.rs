//! The daemon as a BUS agent, and `vbus tracker`.
//!
//! Every daemon can pull a dataset version from the master (`bus_config.master_db`, whose
//! versions `vbus sync push` records). With `bus_config.tracker` set it is also an agent: it
//! registers with the tracker, heartbeats with its upload load (re-registering and re-announcing
//! what it holds when the tracker has forgotten it), pulls pieces from the peers the tracker
//! names, and serves byte ranges of the complete files it holds to peers that present the
//! cluster token. What it holds is recorded in `BUS/CONTROL_PLANE/agent_holdings.json` so a
//! restarted agent announces it again.
//!
//! `vbus tracker` serves [`vbus_sync::Tracker`] over HTTP, its state in `BUS/CONTROL_PLANE`.

use std::collections::BTreeMap;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;
use vbus_cache::{CacheKey, CacheManager};
use vbus_sync::{Http, Manifest, Origin, PullError, Sink, Swarm, TrackerClient};

use crate::api::ApiError;
use crate::daemon::AppState;
use vbus_node::Home;

/// Bytes per request when a file's newest version is fetched from its owner.
const COHERENT_FETCH_BYTES: u64 = 8 << 20;

/// The largest byte range a peer serves in one request.
pub const RANGE_BYTES_MAX: u64 = vbus_sync::manifest::PIECE_BYTES_MAX;
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
pub(crate) struct BusAgent {
    pub(crate) id: String,
    pub(crate) addr: String,
    pub(crate) http: Http,
    pub(crate) tracker: Option<TrackerClient>,
    pub(crate) origin: Origin,
    pub(crate) workers: usize,
    /// `bus_config.download_bytes_per_second`, over every piece pulled (shared with the
    /// cache's [`BusSource`]).
    download: Option<Arc<vbus_sync::RateLimiter>>,
    holdings_path: PathBuf,
    holdings: Mutex<BTreeMap<String, Holding>>,
    /// Pulls running now, for `/v1/sync/status` (and the CLI's progress line).
    pulls: Mutex<Vec<Arc<PullProgress>>>,
    /// What peers are served from.
    pub(crate) peer: Arc<PeerFiles>,
    /// `BUS/INTERCONNECT`: files in flight, resumed after a restart.
    staging: Arc<vbus_sync::Interconnect>,
    /// The local-directory repositories kept coherent with the master.
    repos: Option<crate::repos::Repositories>,
    /// `bus_config.sync_interval_seconds`: how often this agent's Modified lines are written
    /// back to the master.
    sync_interval: std::time::Duration,
    /// Files this agent pinned in L3 because it owns their only newest copy, until written
    /// back.
    coherence_pins: Mutex<std::collections::BTreeSet<String>>,
    stop: AtomicBool,
}

impl BusAgent {
    /// The agent of a daemon listening on `listen`.
    pub(crate) fn new(
        home: &Home,
        config: &vbus_node::Config,
        listen: std::net::SocketAddr,
        store: vbus_store::FileStore,
        origin: Origin,
        download: Option<Arc<vbus_sync::RateLimiter>>,
    ) -> anyhow::Result<Self> {
        let bus = &config.bus_config;
        let addr = if bus.advertise.is_empty() {
            listen.to_string()
        } else {
            bus.advertise.clone()
        };
        let id = if bus.agent_id.is_empty() {
            addr.clone()
        } else {
            bus.agent_id.clone()
        };
        let http = Http::new(bus.cluster_token.clone());
        let tracker =
            (!bus.tracker.is_empty()).then(|| TrackerClient::new(&bus.tracker, http.clone()));
        let control = home.root().join("BUS/CONTROL_PLANE");
        std::fs::create_dir_all(&control)
            .with_context(|| format!("cannot create {}", control.display()))?;
        let holdings_path = control.join(HOLDINGS_FILE);
        let holdings = match std::fs::read_to_string(&holdings_path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is damaged", holdings_path.display()))?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("cannot read {}", holdings_path.display()));
            }
        };
        let staging = Arc::new(vbus_sync::Interconnect::open(
            home.root().join("BUS/INTERCONNECT"),
        )?);
        let repos = crate::repos::Repositories::open(home.root(), &bus.repositories)?;
        Ok(Self {
            id,
            addr,
            http,
            tracker,
            origin,
            workers: bus.pull_workers as usize,
            download,
            holdings_path,
            holdings: Mutex::new(holdings),
            pulls: Mutex::new(Vec::new()),
            peer: Arc::new(PeerFiles::new(
                store,
                Some(Arc::clone(&staging)),
                Some(control.join("manifests")),
                bus.cluster_token.clone(),
                bus.upload_bytes_per_second,
            )),
            staging,
            repos,
            sync_interval: std::time::Duration::from_secs(bus.sync_interval_seconds),
            coherence_pins: Mutex::new(std::collections::BTreeSet::new()),
            stop: AtomicBool::new(false),
        })
    }

    fn holdings(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Holding>> {
        self.holdings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a version as held (whole, synced, renamed), and keeps its manifest for peers
    /// that cannot reach the master.
    fn record(&self, manifest: &Manifest) -> anyhow::Result<()> {
        if let Some(dir) = &self.peer.manifests_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            vbus_store::atomic::write_whole(
                &dir.join(format!("{}@{}.json", manifest.dataset, manifest.version)),
                manifest.to_json().as_bytes(),
            )?;
        }
        let mut holdings = self.holdings();
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
        vbus_store::atomic::write_whole(
            &self.holdings_path,
            &serde_json::to_vec_pretty(&*holdings)?,
        )?;
        Ok(())
    }

    /// Announces every recorded version whose files the store still holds with their hashes.
    fn announce_all(&self, tracker: &TrackerClient, cache: &CacheManager) {
        let holdings: Vec<Holding> = self.holdings().values().cloned().collect();
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
    pub(crate) fn run_agent(&self, cache: &CacheManager) {
        let Some(tracker) = self.tracker.clone() else {
            return;
        };
        let mut registered = false;
        let mut next_writeback = Instant::now() + self.sync_interval;
        while !self.stop.load(Ordering::Relaxed) {
            if registered && Instant::now() >= next_writeback {
                self.write_back_owned(&tracker, cache);
                next_writeback = Instant::now() + self.sync_interval;
            }
            if !registered {
                match tracker.register(&self.id, &self.addr) {
                    Ok(()) => {
                        tracing::info!(tracker = %tracker.base(), id = %self.id, "registered with the tracker");
                        self.announce_all(&tracker, cache);
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
                self.withdraw_quarantined(&tracker, cache);
            }
            let beat = vbus_sync::tracker::HEARTBEAT_INTERVAL;
            std::thread::sleep(beat.min(next_writeback.saturating_duration_since(Instant::now())));
        }
    }

    /// Stops offering the files L3 quarantined (their bytes failed their checksums, or they
    /// changed on disk while the daemon was down): each is withdrawn from every version this
    /// agent announced it in, so peers fetch it elsewhere.
    fn withdraw_quarantined(&self, tracker: &TrackerClient, cache: &CacheManager) {
        for file in cache.store().take_quarantined() {
            let versions: Vec<String> = self
                .holdings()
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
    pub(crate) fn in_cluster(&self) -> bool {
        self.tracker.is_some()
    }

    /// The tracker, when this daemon is in a cluster.
    fn directory(&self) -> Option<&TrackerClient> {
        self.tracker.as_ref()
    }

    /// A directory call, registering first if the tracker does not know this agent yet (it
    /// started, or the tracker restarted, before the agent thread's next beat).
    fn with_registration<T>(
        &self,
        tracker: &TrackerClient,
        call: impl Fn() -> Result<T, vbus_sync::PeerError>,
    ) -> Result<T, vbus_sync::PeerError> {
        match call() {
            Err(err) if err.is_unknown_agent() => {
                tracker.register(&self.id, &self.addr)?;
                call()
            }
            other => other,
        }
    }

    /// After a local write of `key` (published in L3): orders it at the coherence directory,
    /// which makes this agent the `Modified` owner of the new version and invalidates every
    /// other holder. `None` outside a cluster.
    pub(crate) fn coherent_write(
        &self,
        cache: &CacheManager,
        key: &CacheKey,
    ) -> Result<Option<vbus_sync::Line>, ApiError> {
        let Some(tracker) = self.directory() else {
            return Ok(None);
        };
        let meta = cache
            .store()
            .meta(key.dataset(), key.path())
            .map_err(|err| error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?
            .ok_or_else(|| {
                error(
                    StatusCode::CONFLICT,
                    format!("{key} was removed before the directory ordered the write"),
                )
            })?;
        let blake3 = meta.hash_hex().unwrap_or_default();
        let line = self
            .with_registration(tracker, || {
                tracker.write(
                    &self.id,
                    key.dataset(),
                    key.path(),
                    &blake3,
                    meta.size_bytes,
                )
            })
            .map_err(|err| {
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{key} is stored here, but the coherence directory did not order the \
                         write, so it is not acknowledged (a later read takes the directory's \
                         newest version): {err}"
                    ),
                )
            })?;
        // This copy is the only one of the new version until it is written back: L3 must not
        // evict it.
        if !meta.pinned {
            match cache.pin(key.clone()) {
                Ok(_) => {
                    lock(&self.coherence_pins).insert(key.to_string());
                }
                Err(err) => tracing::warn!(error = %err, "cannot pin {key} until written back"),
            }
        }
        // Copies pulled as part of dataset versions no longer match: stop offering them (the
        // versions are listed first: no lock is held across the tracker calls).
        let stale: Vec<String> = self
            .holdings()
            .values()
            .filter(|holding| {
                holding.dataset == key.dataset()
                    && holding
                        .files
                        .get(key.path())
                        .is_some_and(|hash| *hash != blake3)
            })
            .map(|holding| holding.version.clone())
            .collect();
        for version in stale {
            if let Err(err) = tracker.withdraw(&self.id, key.dataset(), &version, key.path()) {
                tracing::warn!(error = %err, "cannot withdraw the pulled copy of {key}");
            }
        }
        Ok(Some(line))
    }

    /// Before a read of `key`: asks the coherence directory for its newest version and, when
    /// this agent's copy is older (Invalid), fetches the newest from an agent holding it (the
    /// owner first) or, once written back, from the master, verifies it and publishes it in
    /// L3. A read is refused (503) rather than served stale when the directory or every
    /// holder of the newest version cannot be reached. Outside a cluster, or for a file no
    /// clustered write touched, nothing is done.
    pub(crate) fn coherent_read(
        &self,
        cache: &CacheManager,
        key: &CacheKey,
    ) -> Result<(), ApiError> {
        let Some(tracker) = self.directory() else {
            return Ok(());
        };
        let unavailable = |message: String| error(StatusCode::SERVICE_UNAVAILABLE, message);
        let view = tracker.line(key.dataset(), key.path()).map_err(|err| {
            unavailable(format!(
                "cannot ask the coherence directory about {key}, so a read could be stale: {err}"
            ))
        })?;
        let Some(view) = view else {
            return Ok(());
        };
        let line = &view.line;
        let held = cache
            .store()
            .meta(key.dataset(), key.path())
            .ok()
            .flatten()
            .and_then(|meta| meta.hash_hex());
        if held.as_deref() != Some(line.blake3.as_str()) {
            self.fetch_newest(cache, key, &view)?;
        }
        let listed = line.holders.get(&self.id).copied();
        if line.owner != self.id
            && !matches!(listed, Some(vbus_sync::LineState::Shared))
            && let Err(err) = self.with_registration(tracker, || tracker.shared(&self.id, line))
        {
            tracing::debug!(error = %err, "cannot report holding {key} at version {}", line.version);
        }
        Ok(())
    }

    /// Fetches the newest version of a line into L3, whole and verified.
    fn fetch_newest(
        &self,
        cache: &CacheManager,
        key: &CacheKey,
        view: &vbus_sync::LineView,
    ) -> Result<(), ApiError> {
        use std::io::Write as _;
        let line = &view.line;
        let mut failures = Vec::new();
        let sources = view
            .holders
            .iter()
            .filter(|agent| agent.id != self.id)
            .map(Some)
            // Once written back, the master has the newest version too.
            .chain((!line.dirty).then_some(None));
        for source in sources {
            let name = source.map_or("the master".to_owned(), |agent| agent.id.clone());
            let fetched = (|| -> Result<vbus_store::FileWriter, String> {
                let mut writer = cache.writer(key.clone()).map_err(|e| e.to_string())?;
                let mut hasher = blake3::Hasher::new();
                let mut offset = 0;
                while offset < line.size_bytes {
                    let len = (line.size_bytes - offset).min(COHERENT_FETCH_BYTES);
                    let bytes = match source {
                        Some(agent) => vbus_sync::peer::fetch_range(
                            &self.http,
                            &agent.addr,
                            key.dataset(),
                            key.path(),
                            &line.blake3,
                            offset,
                            len,
                        )
                        .map_err(|e| e.to_string())?,
                        None => self
                            .origin
                            .read_range(key.dataset(), key.path(), offset, len)
                            .map_err(|e| e.to_string())?,
                    };
                    hasher.update(&bytes);
                    writer.write_all(&bytes).map_err(|e| e.to_string())?;
                    offset += len;
                }
                let got = hasher.finalize().to_hex();
                if got.as_str() != line.blake3 {
                    return Err(format!("its copy has BLAKE3 {got}, not {}", line.blake3));
                }
                Ok(writer)
            })();
            match fetched {
                Ok(writer) => {
                    cache
                        .commit(key.clone(), writer)
                        .map_err(|err| error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()))?;
                    return Ok(());
                }
                Err(why) => failures.push(format!("{name}: {why}")),
            }
        }
        Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the newest version ({}) of {key} is owned by {} and could not be fetched: {}",
                line.version,
                line.owner,
                if failures.is_empty() {
                    "no holder is known".to_owned()
                } else {
                    failures.join("; ")
                }
            ),
        ))
    }

    /// Writes back one dirty line to the master: leased at the directory (so versions land in
    /// order), fetched first if this agent's copy is not the newest, then the directory is told.
    /// Returns whether the master has the line's newest version now.
    fn write_back(
        &self,
        tracker: &TrackerClient,
        cache: &CacheManager,
        dataset: &str,
        path: &str,
    ) -> Result<bool, String> {
        let leased = match tracker.begin_writeback(&self.id, dataset, path) {
            Ok(Ok(line)) => line,
            Ok(Err(vbus_sync::coherence::WritebackRefused::Clean { .. })) => return Ok(true),
            Ok(Err(refused)) => {
                tracing::debug!(%refused, "write-back not started");
                return Ok(false);
            }
            Err(err) => return Err(err.to_string()),
        };
        let key = CacheKey::new(dataset, path);
        let written = (|| -> Result<(), String> {
            let current = |cache: &CacheManager| {
                cache
                    .store()
                    .file_reader(dataset, path)
                    .map_err(|e| e.to_string())
                    .map(|reader| {
                        reader.filter(|r| {
                            r.meta().hash_hex().as_deref() == Some(leased.blake3.as_str())
                        })
                    })
            };
            let reader = match current(cache)? {
                Some(reader) => reader,
                None => {
                    let view = vbus_sync::LineView {
                        line: leased.clone(),
                        holders: tracker
                            .line(dataset, path)
                            .map_err(|e| e.to_string())?
                            .map(|view| view.holders)
                            .unwrap_or_default(),
                    };
                    self.fetch_newest(cache, &key, &view)
                        .map_err(|refused| refused.message().to_owned())?;
                    current(cache)?.ok_or("the fetched copy was replaced at once")?
                }
            };
            let size = reader.meta().size_bytes;
            let mut reader = reader;
            self.origin
                .write_file(dataset, path, &mut reader, size)
                .map_err(|e| e.to_string())
        })();
        let ok = written.is_ok();
        let clean = tracker
            .end_writeback(&self.id, &leased, ok)
            .map_err(|e| e.to_string())?;
        written.map(|()| {
            tracing::info!(%dataset, %path, version = leased.version, "written back to the master");
            clean
        })
    }

    /// The write-back timer: every dirty line this agent owns goes to the master.
    fn write_back_owned(&self, tracker: &TrackerClient, cache: &CacheManager) {
        let lines = match tracker.dirty(Some(&self.id), None) {
            Ok(lines) => lines,
            Err(err) => {
                tracing::debug!(error = %err, "cannot list dirty lines");
                return;
            }
        };
        for line in lines {
            if let Err(err) = self.write_back(tracker, cache, &line.dataset, &line.path) {
                tracing::warn!(error = %err, "cannot write back {}/{}", line.dataset, line.path);
            }
        }
        // Unpin what no longer needs this agent's copy: written back (by anyone), or owned
        // by another writer now.
        let pinned: Vec<String> = lock(&self.coherence_pins).iter().cloned().collect();
        for name in pinned {
            let Some((dataset, path)) = name.split_once('/') else {
                continue;
            };
            let needed = match tracker.line(dataset, path) {
                Ok(view) => view.is_some_and(|v| v.line.dirty && v.line.owner == self.id),
                Err(_) => continue,
            };
            if !needed {
                if let Err(err) = cache.unpin(CacheKey::new(dataset, path)) {
                    tracing::warn!(error = %err, "cannot unpin {name} after its write-back");
                }
                lock(&self.coherence_pins).remove(&name);
            }
        }
    }

    /// Before a push: every dirty line of `dataset`, whoever owns it, is written back (fetched
    /// from its owner when needed). Errors name the files that could not be.
    fn write_back_dataset(&self, cache: &CacheManager, dataset: &str) -> Result<usize, String> {
        let Some(tracker) = self.directory() else {
            return Ok(0);
        };
        let lines = tracker
            .dirty(None, Some(dataset))
            .map_err(|err| format!("cannot list the dirty files of {dataset}: {err}"))?;
        let mut failed = Vec::new();
        for line in &lines {
            match self.write_back(tracker, cache, &line.dataset, &line.path) {
                Ok(true) => {}
                Ok(false) => failed.push(format!("{}: another write-back is running", line.path)),
                Err(err) => failed.push(format!("{}: {err}", line.path)),
            }
        }
        if failed.is_empty() {
            Ok(lines.len())
        } else {
            Err(format!(
                "cannot write back every modified file of {dataset}: {}",
                failed.join("; ")
            ))
        }
    }

    /// The dirty lines of the coherence directory (none outside a cluster).
    pub(crate) fn dirty_lines(&self) -> anyhow::Result<Vec<vbus_sync::Line>> {
        match self.directory() {
            Some(tracker) => tracker
                .dirty(None, None)
                .context("cannot list the directory's modified files"),
            None => Ok(Vec::new()),
        }
    }

    /// Keeps the local repositories coherent with the master, a round every
    /// `sync_interval_seconds` (the first at once), until [`BusAgent::stop`].
    pub(crate) fn run_repositories(&self, cache: &CacheManager) {
        let Some(repos) = &self.repos else {
            return;
        };
        while !self.stop.load(Ordering::Relaxed) {
            let round = repos
                .sync_once(self, cache)
                .map_err(|err| format!("{err:#}"));
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
            *lock(&repos.last) = Some(round);
            let next = Instant::now() + self.sync_interval;
            while !self.stop.load(Ordering::Relaxed) && Instant::now() < next {
                std::thread::sleep(std::time::Duration::from_millis(100).min(self.sync_interval));
            }
        }
    }

    /// Ends [`BusAgent::run_agent`] at its next beat.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A pull in progress.
#[derive(Debug)]
struct PullProgress {
    dataset: String,
    version: String,
    bytes: u64,
    bytes_done: std::sync::atomic::AtomicU64,
    started: Instant,
}

/// Lists a pull in `/v1/sync/status` for as long as it lives.
struct Listed<'a> {
    pulls: &'a Mutex<Vec<Arc<PullProgress>>>,
    progress: Arc<PullProgress>,
}

impl<'a> Listed<'a> {
    fn new(pulls: &'a Mutex<Vec<Arc<PullProgress>>>, progress: PullProgress) -> Self {
        let progress = Arc::new(progress);
        lock(pulls).push(Arc::clone(&progress));
        Self { pulls, progress }
    }
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        lock(self.pulls).retain(|other| !Arc::ptr_eq(other, &self.progress));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The master (`bus_config.master_db`: a directory, relative paths from the home, or an
/// `s3://` bucket).
pub(crate) fn master(home: &Home, config: &vbus_node::Config) -> anyhow::Result<Origin> {
    let bus = &config.bus_config;
    let location = config.master_db_location(home.root());
    let options = vbus_sync::S3Options {
        endpoint: bus.s3_endpoint.clone(),
        region: bus.s3_region.clone(),
    };
    Origin::open(&location, &options).with_context(|| {
        format!("cannot open the master {location} (config key bus_config.master_db)")
    })
}

/// The most bytes a cache miss fetches whole through the BUS (larger files are pulled).
pub const SOURCE_FETCH_MAX_BYTES: u64 = 1 << 30;

/// The cache's source when every tier misses: the master's newest version of the dataset names
/// the file, and its pieces come from peers (with a tracker) and the master, each verified, then
/// the whole file.
pub(crate) struct BusSource {
    name: String,
    origin: Origin,
    tracker: Option<TrackerClient>,
    http: Http,
    id: String,
    workers: usize,
    download: Option<Arc<vbus_sync::RateLimiter>>,
}

impl BusSource {
    pub(crate) fn new(config: &vbus_node::Config, origin: Origin) -> Self {
        let bus = &config.bus_config;
        let http = Http::new(bus.cluster_token.clone());
        Self {
            name: format!("bus (master {})", origin.describe()),
            tracker: (!bus.tracker.is_empty())
                .then(|| TrackerClient::new(&bus.tracker, http.clone())),
            origin,
            http,
            id: bus.agent_id.clone(),
            workers: bus.pull_workers as usize,
            download: vbus_sync::RateLimiter::new(bus.download_bytes_per_second).map(Arc::new),
        }
    }

    /// The download limit, to share with the agent's pulls.
    pub(crate) fn download(&self) -> Option<Arc<vbus_sync::RateLimiter>> {
        self.download.clone()
    }
}

impl vbus_cache::Source for BusSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn fetch(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, String> {
        let manifest = match self
            .origin
            .stored_manifest(key.dataset(), vbus_sync::LATEST)
        {
            Ok(manifest) => manifest,
            // No version of that dataset at the master: not there.
            Err(vbus_sync::ManifestError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None);
            }
            Err(err) => return Err(err.to_string()),
        };
        let Some(file) = manifest.file(key.path()) else {
            return Ok(None);
        };
        let swarm = Swarm {
            tracker: self.tracker.as_ref(),
            http: &self.http,
            self_id: &self.id,
            workers: self.workers,
            download: self.download.as_deref(),
        };
        vbus_sync::fetch_file_bytes(&manifest, file, &self.origin, swarm, SOURCE_FETCH_MAX_BYTES)
            .map(Some)
            .map_err(|err| err.to_string())
    }
}

/// Pulled files go through the cache: a publish drops the memory tiers' copies of the path.
struct CacheSink<'a>(&'a CacheManager);

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
                source: std::io::Error::other(err.to_string()),
            })
    }
}

/// `dataset` or `dataset@version`.
pub fn split_version(spec: &str) -> (&str, &str) {
    match spec.split_once('@') {
        Some((dataset, version)) => (dataset, version),
        None => (spec, vbus_sync::LATEST),
    }
}

/// A refusal: answered as `{"error": MESSAGE}` with its status, like every API error.
fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError::new(status, message)
}

/// [`error`], as a response.
fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    error(status, message).into_response()
}

/// The routes of the BUS on a daemon.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/sync/pull", post(pull))
        .route("/v1/sync/push", post(push))
        .route("/v1/sync/status", get(status))
}

/// Byte ranges of the complete files of one store, served to peers that present the cluster
/// token, counted (the load reported to the tracker) and paced by the upload limit.
#[derive(Debug)]
pub struct PeerFiles {
    store: vbus_store::FileStore,
    /// Files in flight, whose verified pieces are served too.
    staging: Option<Arc<vbus_sync::Interconnect>>,
    /// Where the manifests of held versions are kept (`None`: none served).
    manifests_dir: Option<PathBuf>,
    token: Option<String>,
    /// Ranges being served now.
    uploads: AtomicU32,
    upload: Option<vbus_sync::RateLimiter>,
}

impl PeerFiles {
    pub fn new(
        store: vbus_store::FileStore,
        staging: Option<Arc<vbus_sync::Interconnect>>,
        manifests_dir: Option<PathBuf>,
        token: Option<String>,
        upload_bytes_per_second: u64,
    ) -> Self {
        Self {
            store,
            staging,
            manifests_dir,
            token,
            uploads: AtomicU32::new(0),
            upload: vbus_sync::RateLimiter::new(upload_bytes_per_second),
        }
    }

    pub fn uploads_now(&self) -> u32 {
        self.uploads.load(Ordering::Relaxed)
    }

    /// Checks the cluster token of a request.
    pub(crate) fn authorise(&self, request: &Request) -> Result<(), ApiError> {
        authorise_peer(self.token.as_deref(), request)
    }

    /// `len` bytes at `offset` of `dataset/path`, if held with hash `blake3`, whole or (the
    /// verified pieces the range touches) in flight; 425 while those pieces are not there yet.
    fn read_range(
        &self,
        dataset: &str,
        path: &str,
        query: &RangeQuery,
    ) -> Result<Vec<u8>, ApiError> {
        if query.len > RANGE_BYTES_MAX {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("len {} is over {RANGE_BYTES_MAX}", query.len),
            ));
        }
        self.uploads.fetch_add(1, Ordering::Relaxed);
        let _upload = Upload(&self.uploads);
        let not_held = || {
            error(
                StatusCode::NOT_FOUND,
                format!("{dataset}/{path} is not held here with that hash"),
            )
        };
        let held = match self.store.file_reader(dataset, path) {
            Ok(reader) => {
                reader.filter(|r| r.meta().hash_hex().as_deref() == Some(query.blake3.as_str()))
            }
            // This copy failed its checksum and was quarantined: not held here any more.
            Err(err @ vbus_store::Error::ChecksumMismatch { .. }) => {
                return Err(error(StatusCode::NOT_FOUND, err.to_string()));
            }
            Err(err @ vbus_store::Error::InvalidName { .. }) => {
                return Err(error(StatusCode::BAD_REQUEST, err.to_string()));
            }
            Err(err) => return Err(error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())),
        };
        let Some(mut reader) = held else {
            let Some(staging) = &self.staging else {
                return Err(not_held());
            };
            vbus_store::validate_dataset(dataset)
                .map_err(|err| error(StatusCode::BAD_REQUEST, err.to_string()))?;
            return match staging.read_in_flight(dataset, &query.blake3, query.offset, query.len) {
                Ok(vbus_sync::staging::InFlight::Bytes(bytes)) => {
                    vbus_sync::rate::acquire(self.upload.as_ref(), query.len);
                    Ok(bytes)
                }
                Ok(vbus_sync::staging::InFlight::NotYet) => Err(error(
                    StatusCode::from_u16(vbus_sync::peer::NOT_YET)
                        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                    format!("{dataset}/{path} is in flight here; that range is not yet"),
                )),
                Ok(vbus_sync::staging::InFlight::Absent) => Err(not_held()),
                Err(err) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())),
            };
        };
        let meta = reader.meta().clone();
        if query.offset.saturating_add(query.len) > meta.size_bytes {
            return Err(error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!(
                    "{} bytes at {} is past the end ({} bytes)",
                    query.len, query.offset, meta.size_bytes
                ),
            ));
        }
        vbus_sync::rate::acquire(self.upload.as_ref(), query.len);
        let mut bytes = Vec::with_capacity(query.len as usize);
        let read = reader
            .seek(SeekFrom::Start(query.offset))
            .and_then(|_| (&mut reader).take(query.len).read_to_end(&mut bytes));
        match read {
            Ok(n) if n as u64 == query.len => Ok(bytes),
            Ok(n) => Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("read {n} of {} bytes", query.len),
            )),
            Err(err) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())),
        }
    }

    /// The recorded manifest of `dataset@version`, as JSON.
    fn manifest(&self, dataset: &str, version: &str) -> Result<String, ApiError> {
        vbus_store::validate_dataset(dataset)
            .map_err(|err| error(StatusCode::BAD_REQUEST, err.to_string()))?;
        if version.is_empty()
            || version.len() > 64
            || !version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("bad version {version:?}"),
            ));
        }
        let not_held = || {
            error(
                StatusCode::NOT_FOUND,
                format!("no manifest of {dataset}@{version} here"),
            )
        };
        let dir = self.manifests_dir.as_ref().ok_or_else(not_held)?;
        std::fs::read_to_string(dir.join(format!("{dataset}@{version}.json")))
            .map_err(|_| not_held())
    }

    /// Answers a range request off the async threads.
    async fn respond(
        self: Arc<Self>,
        dataset: String,
        path: String,
        query: RangeQuery,
    ) -> Response {
        let work = move || self.read_range(&dataset, &path, &query);
        match tokio::task::spawn_blocking(work).await {
            Ok(Ok(bytes)) => bytes.into_response(),
            Ok(Err(refused)) => refused.into_response(),
            Err(err) => refuse(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        }
    }
}

/// The peer routes (`/v1/bus/…`: byte ranges and manifests of `peer`), behind the cluster token
/// rather than `api.token`; without a cluster token every request is refused (403). The daemon
/// merges it beside its API, and `vbus-bench sync` serves it for each in-process agent.
pub fn peer_router(peer: Arc<PeerFiles>) -> Router {
    async fn range(
        State(peer): State<Arc<PeerFiles>>,
        Path((dataset, path)): Path<(String, String)>,
        Query(query): Query<RangeQuery>,
    ) -> Response {
        peer.respond(dataset, path, query).await
    }
    async fn manifest(
        State(peer): State<Arc<PeerFiles>>,
        Path((dataset, version)): Path<(String, String)>,
    ) -> Response {
        match tokio::task::spawn_blocking(move || peer.manifest(&dataset, &version)).await {
            Ok(Ok(json)) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
            Ok(Err(refused)) => refused.into_response(),
            Err(err) => refuse(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
        }
    }
    async fn auth(State(peer): State<Arc<PeerFiles>>, request: Request, next: Next) -> Response {
        match peer.authorise(&request) {
            Ok(()) => next.run(request).await,
            Err(refused) => refused.into_response(),
        }
    }
    Router::new()
        .route("/v1/bus/files/{dataset}/{*path}", get(range))
        .route("/v1/bus/manifests/{dataset}/{version}", get(manifest))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&peer),
            auth,
        ))
        .with_state(peer)
}

/// Checks a peer request's bearer token against `token`; refused (403) without one.
fn authorise_peer(token: Option<&str>, request: &Request) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "this daemon is in no cluster (config key bus_config.cluster_token)",
        ));
    };
    if crate::api::presents(request, token) {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "peer requests need `Authorization: Bearer CLUSTER_TOKEN`",
        ))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    blake3: String,
    offset: u64,
    len: u64,
}

/// Counts an upload for as long as it lives.
struct Upload<'a>(&'a AtomicU32);

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PullRequest {
    dataset: String,
    #[serde(default)]
    version: Option<String>,
}

async fn pull(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let request: PullRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => return refuse(StatusCode::BAD_REQUEST, format!("bad pull request: {err}")),
    };
    let work = move || -> Result<serde_json::Value, ApiError> {
        let bus = &state.bus;
        let version = request.version.as_deref().unwrap_or(vbus_sync::LATEST);
        let manifest = match bus.origin.stored_manifest(&request.dataset, version) {
            Ok(manifest) => manifest,
            // The master cannot say: a named version may still come from peers (checked
            // against its name).
            Err(master_err) => match (&bus.tracker, version != vbus_sync::LATEST) {
                (Some(tracker), true) => vbus_sync::manifest_from_peers(
                    tracker,
                    &bus.http,
                    &bus.id,
                    &request.dataset,
                    version,
                )
                .map_err(|peer_err| {
                    error(
                        StatusCode::NOT_FOUND,
                        format!(
                            "no version {version} of {}: the master: {master_err}; peers: {peer_err}",
                            request.dataset
                        ),
                    )
                })?,
                _ => {
                    return Err(error(
                        StatusCode::NOT_FOUND,
                        format!(
                            "no version {version} of {} at the master: {master_err}",
                            request.dataset
                        ),
                    ));
                }
            },
        };
        let started = Instant::now();
        let listed = Listed::new(
            &bus.pulls,
            PullProgress {
                dataset: manifest.dataset.clone(),
                version: manifest.version.clone(),
                bytes: manifest.total_bytes(),
                bytes_done: std::sync::atomic::AtomicU64::new(0),
                started,
            },
        );
        let swarm = Swarm {
            tracker: bus.tracker.as_ref(),
            http: &bus.http,
            self_id: &bus.id,
            workers: bus.workers,
            download: bus.download.as_deref(),
        };
        let report = vbus_sync::pull_swarm(
            &manifest,
            &bus.origin,
            &CacheSink(&state.tiers.cache),
            swarm,
            &bus.staging,
            &|n| {
                listed.progress.bytes_done.fetch_add(n, Ordering::Relaxed);
            },
        )
        .map_err(|err| error(StatusCode::BAD_GATEWAY, err.to_string()))?;
        bus.record(&manifest)
            .map_err(|err| error(StatusCode::INTERNAL_SERVER_ERROR, format!("{err:#}")))?;
        tracing::info!(
            dataset = %manifest.dataset,
            version = %manifest.version,
            from_peers = report.bytes_from_peers,
            from_origin = report.bytes_from_origin,
            "pulled"
        );
        Ok(json!({
            "dataset": manifest.dataset,
            "version": manifest.version,
            "files": manifest.files.len(),
            "bytes": manifest.total_bytes(),
            "files_fetched": report.files_fetched,
            "files_skipped": report.files_skipped,
            "bytes_from_peers": report.bytes_from_peers,
            "bytes_from_origin": report.bytes_from_origin,
            "pieces_rejected": report.pieces_rejected,
            "peer_errors": report.peer_errors,
            "tracker_errors": report.tracker_errors,
            "seconds": started.elapsed().as_secs_f64(),
        }))
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(refused)) => refused.into_response(),
        Err(err) => refuse(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushRequest {
    dataset: String,
}

async fn push(State(state): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let request: PushRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => return refuse(StatusCode::BAD_REQUEST, format!("bad push request: {err}")),
    };
    let work = move || -> Result<serde_json::Value, ApiError> {
        let bus = &state.bus;
        let written_back = bus
            .write_back_dataset(&state.tiers.cache, &request.dataset)
            .map_err(|why| error(StatusCode::SERVICE_UNAVAILABLE, why))?;
        let manifest = bus
            .origin
            .publish_version(&request.dataset)
            .map_err(|err| error(StatusCode::BAD_REQUEST, err.to_string()))?;
        Ok(json!({
            "dataset": manifest.dataset,
            "version": manifest.version,
            "files": manifest.files.len(),
            "bytes": manifest.total_bytes(),
            "written_back": written_back,
        }))
    };
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(pushed)) => Json(pushed).into_response(),
        Ok(Err(refused)) => refused.into_response(),
        Err(err) => refuse(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

async fn status(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let bus = &state.bus;
    let held: Vec<_> = bus
        .holdings()
        .values()
        .map(|h| json!({ "dataset": h.dataset, "version": h.version, "files": h.files.len() }))
        .collect();
    let pulls: Vec<_> = lock(&bus.pulls)
        .iter()
        .map(|p| {
            json!({
                "dataset": p.dataset,
                "version": p.version,
                "bytes": p.bytes,
                "bytes_done": p.bytes_done.load(Ordering::Relaxed),
                "seconds": p.started.elapsed().as_secs_f64(),
            })
        })
        .collect();
    Json(json!({
        "agent_id": bus.id,
        "advertise": bus.addr,
        "tracker": bus.tracker.as_ref().map(TrackerClient::base),
        "master": bus.origin.describe(),
        "uploads_now": bus.peer.uploads_now(),
        "repositories": bus.repos.as_ref().map(|repos| json!({
            "dirs": repos.dirs(),
            "last_round": match &*lock(&repos.last) {
                None => json!(null),
                Some(Ok(round)) => json!(round),
                Some(Err(err)) => json!({ "error": err }),
            },
        })),
        "held": held,
        "pulls_in_progress": pulls,
    }))
}

/// `vbus tracker`: serves the tracker on `listen` until SIGINT or SIGTERM.
pub fn run_tracker(home: &Home, listen: &str, token: Option<String>) -> anyhow::Result<()> {
    let token = token
        .or_else(|| std::env::var("VBUS_CLUSTER_TOKEN").ok())
        .or_else(|| {
            home.config_path()
                .is_file()
                .then(|| home.load_config().ok())
                .flatten()
                .and_then(|config| config.bus_config.cluster_token)
        })
        .context("the tracker needs a cluster token: --token, $VBUS_CLUSTER_TOKEN or bus_config.cluster_token")?;
    let dir = home.root().join("BUS/CONTROL_PLANE");
    let tracker = Arc::new(vbus_sync::Tracker::open(&dir)?);
    let addr: std::net::SocketAddr = listen
        .parse()
        .with_context(|| format!("--listen {listen:?} is not host:port"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("vbus-tracker")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!(
            "tracker listening on http://{local} (state in {})",
            dir.display()
        );
        let app = tracker_router(tracker, token);
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("a SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            })
            .await
            .context("the tracker's HTTP server failed")
    })
}

/// The tracker's routes behind the cluster token.
pub fn tracker_router(tracker: SharedTracker, token: String) -> Router {
    tracker_routes()
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(token),
            tracker_auth,
        ))
        .with_state(tracker)
}

async fn tracker_auth(State(token): State<Arc<String>>, request: Request, next: Next) -> Response {
    if crate::api::presents(&request, &token) {
        next.run(request).await
    } else {
        refuse(
            StatusCode::UNAUTHORIZED,
            "tracker requests need `Authorization: Bearer CLUSTER_TOKEN`",
        )
    }
}

pub type SharedTracker = Arc<vbus_sync::Tracker>;

fn tracker_routes() -> Router<SharedTracker> {
    Router::new()
        .route("/v1/tracker/register", post(register))
        .route("/v1/tracker/heartbeat", post(heartbeat))
        .route("/v1/tracker/announce", post(announce))
        .route("/v1/tracker/withdraw", post(withdraw))
        .route("/v1/tracker/leave", post(leave))
        .route("/v1/tracker/claim", post(claim))
        .route("/v1/tracker/availability", get(availability))
        .route("/v1/tracker/holders", get(holders))
        .route("/v1/tracker/fetchers", get(fetchers))
        .route("/v1/tracker/agents", get(agents))
        .route("/v1/tracker/write", post(write))
        .route("/v1/tracker/line", get(line))
        .route("/v1/tracker/shared", post(shared))
        .route("/v1/tracker/writeback/begin", post(begin_writeback))
        .route("/v1/tracker/writeback/end", post(end_writeback))
        .route("/v1/tracker/dirty", get(dirty))
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
}

fn tracker_error(err: vbus_sync::TrackerError) -> Response {
    use vbus_sync::TrackerError as E;
    let status = match &err {
        E::UnknownAgent(_) => StatusCode::NOT_FOUND,
        E::BadInput { .. } | E::TooMany { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    refuse(status, err.to_string())
}

/// Runs a tracker call off the async threads (it may write its state file).
async fn tracker_call(
    work: impl FnOnce() -> Result<(), vbus_sync::TrackerError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(())) => Json(json!({ "ok": true })).into_response(),
        Ok(Err(err)) => tracker_error(err),
        Err(err) => refuse(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|err| error(StatusCode::BAD_REQUEST, format!("bad request body: {err}")))
}

async fn register(State(tracker): State<SharedTracker>, body: axum::body::Bytes) -> Response {
    match parse::<vbus_sync::peer::RegisterRequest>(&body) {
        Ok(r) => tracker_call(move || tracker.register(&r.id, &r.addr)).await,
        Err(refused) => refused.into_response(),
    }
}

async fn heartbeat(State(tracker): State<SharedTracker>, body: axum::body::Bytes) -> Response {
    match parse::<vbus_sync::peer::HeartbeatRequest>(&body) {
        Ok(r) => match tracker.heartbeat(&r.id, r.load) {
            Ok(()) => Json(json!({ "ok": true })).into_response(),
            Err(err) => tracker_error(err),
        },
        Err(refused) => refused.into_response(),
    }
}

async fn announce(State(tracker): State<SharedTracker>, body: axum::body::Bytes) -> Response {
    match parse::<vbus_sync::peer::AnnounceRequest>(&body) {
        Ok(r) => {
            tracker_call(move || tracker.announce(&r.id, &r.dataset, &r.version, &r.paths)).await
        }
        Err(refused) => refused.into_response(),
    }
}

async fn withdraw(State(tracker): State<SharedTracker>, body: axum::body::Bytes) -> Response {
    match parse::<vbus_sync::peer::WithdrawRequest>(&body) {
        Ok(r) => {
            tracker_call(move || tracker.withdraw(&r.id, &r.dataset, &r.version, &r.path)).await
        }
        Err(refused) => refused.into_response(),
    }
}

async fn leave(State(tracker): State<SharedTracker>, body: axum::body::Bytes) -> Response {
    match parse::<vbus_sync::peer::LeaveRequest>(&body) {
        Ok(r) => tracker_call(move || tracker.leave(&r.id)).await,
        Err(refused) => refused.into_response(),
    }
}

async fn claim(State(tracker): State<SharedTracker>, body: axum::body::Bytes) -> Response {
    match parse::<vbus_sync::peer::ClaimRequest>(&body) {
        Ok(r) => match tracker.claim(&r.id, &r.dataset, &r.version, &r.path) {
            Ok(()) => Json(json!({ "ok": true })).into_response(),
            Err(err) => tracker_error(err),
        },
        Err(refused) => refused.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionQuery {
    dataset: String,
    version: String,
}

async fn availability(
    State(tracker): State<SharedTracker>,
    Query(query): Query<VersionQuery>,
) -> Json<Vec<vbus_sync::Availability>> {
    Json(tracker.availability(&query.dataset, &query.version))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HoldersQuery {
    dataset: String,
    version: String,
    path: String,
}

async fn holders(
    State(tracker): State<SharedTracker>,
    Query(query): Query<HoldersQuery>,
) -> Json<Vec<vbus_sync::Agent>> {
    Json(tracker.holders(&query.dataset, &query.version, &query.path))
}

async fn fetchers(
    State(tracker): State<SharedTracker>,
    Query(query): Query<HoldersQuery>,
) -> Json<Vec<vbus_sync::Agent>> {
    Json(tracker.fetchers(&query.dataset, &query.version, &query.path))
}

async fn agents(State(tracker): State<SharedTracker>) -> Json<serde_json::Value> {
    let agents: Vec<_> = tracker
        .agents()
        .into_iter()
        .map(|(agent, alive)| json!({ "id": agent.id, "addr": agent.addr, "load": agent.load, "alive": alive }))
        .collect();
    Json(json!(agents))
}

/// Runs a tracker call that answers JSON off the async threads (it may write its state file).
async fn tracker_answer<T: Serialize + Send + 'static>(
    work: impl FnOnce() -> Result<T, vbus_sync::TrackerError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(answer)) => Json(answer).into_response(),
        Ok(Err(err)) => tracker_error(err),
        Err(err) => refuse(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

async fn write(State(tracker): State<SharedTracker>, body: axum::body::Bytes) -> Response {
    match parse::<vbus_sync::peer::WriteRequest>(&body) {
        Ok(r) => {
            tracker_answer(move || {
                tracker.write(&r.id, &r.dataset, &r.path, &r.blake3, r.size_bytes)
            })
            .await
        }
        Err(refused) => refused.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LineQuery {
    dataset: String,
    path: String,
}

async fn line(
    State(tracker): State<SharedTracker>,
    Query(query): Query<LineQuery>,
) -> Json<Option<vbus_sync::LineView>> {
    Json(tracker.line(&query.dataset, &query.path))
}

async fn shared(State(tracker): State<SharedTracker>, body: axum::body::Bytes) -> Response {
    match parse::<vbus_sync::peer::LineRequest>(&body) {
        Ok(r) => {
            tracker_answer(move || tracker.shared(&r.id, &r.dataset, &r.path, r.version)).await
        }
        Err(refused) => refused.into_response(),
    }
}

async fn begin_writeback(
    State(tracker): State<SharedTracker>,
    body: axum::body::Bytes,
) -> Response {
    match parse::<vbus_sync::peer::LineRequest>(&body) {
        Ok(r) => Json(tracker.begin_writeback(&r.id, &r.dataset, &r.path)).into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn end_writeback(State(tracker): State<SharedTracker>, body: axum::body::Bytes) -> Response {
    match parse::<vbus_sync::peer::LineRequest>(&body) {
        Ok(r) => {
            tracker_answer(move || {
                tracker.end_writeback(&r.id, &r.dataset, &r.path, r.version, r.written)
            })
            .await
        }
        Err(refused) => refused.into_response(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DirtyQuery {
    #[serde(default)]
    owner: Option<String>,
    #[serde(default)]
    dataset: Option<String>,
}

async fn dirty(
    State(tracker): State<SharedTracker>,
    Query(query): Query<DirtyQuery>,
) -> Json<Vec<vbus_sync::Line>> {
    Json(tracker.dirty(query.owner.as_deref(), query.dataset.as_deref()))
}
