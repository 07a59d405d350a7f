//! [`Node`]: the engine of one machine, opened from a home and its config: the tiers (L1 on the
//! device `gpu.backend` picks, L2, L3), the state bus, and the BUS agent. The daemon's HTTP API
//! and the CLI are adapters over it; the Python module is another.
//!
//! A node in a cluster (`bus_config.tracker` set) runs the BUS agent, and with it the peer
//! routes: other agents fetch byte ranges of the files this node holds from the address given to
//! [`Node::open`], so an embedding process must serve
//! [`Node::peer_router`] there (the daemon merges it into its API port).

mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::Context as _;
use parking_lot::Mutex;
use vbus_cache::{CacheKey, CacheManager, Found, Listed};
use vbus_state::StateBus;
use vbus_sync::{
    AgentOptions, AgentStatus, BusAgent, BusSource, Directory, Http, Origin, PullSummary,
    PushSummary, TrackerClient,
};

use crate::config::Config;
use crate::error::NodeError;
use crate::home::{Home, HomeLock};
use crate::tiers::{self, Tiers};

/// Values up to this size found in L3 are promoted into L2 by a read ([`Node::open_object`]).
pub const PROMOTE_MAX_BYTES: u64 = 64 << 20;

/// What a put did.
#[derive(Debug, Clone)]
pub struct Put {
    /// The version stored.
    pub version: u64,
    /// Whether it is on disk now (`false`: a write-back value in RAM, which reaches L3 when L2
    /// evicts it or the node stops, and is lost if the process is killed first).
    pub durable: bool,
    /// In a cluster, the coherence directory's line after it ordered the write.
    pub coherence: Option<vbus_sync::Line>,
}

/// The engine of one machine. Dropping it without [`Node::shutdown`] loses write-back values
/// still in RAM.
#[derive(Debug)]
pub struct Node {
    started: Instant,
    home: Home,
    config: Config,
    tiers: Tiers,
    state_bus: Option<Arc<StateBus>>,
    /// Why the state bus did not open (its log is damaged, say): objects are served on.
    state_error: Option<String>,
    bus: Arc<BusAgent>,
    loops: Mutex<Vec<JoinHandle<()>>>,
    _lock: HomeLock,
}

impl Node {
    /// Opens the node of `home` with `config`, holding `lock` (the home's exclusive lock) for its
    /// life. `peer_addr` is where this node serves [`Node::peer_router`] (advertised to the
    /// tracker unless `bus_config.advertise` says otherwise). A state bus that cannot open (a
    /// damaged log) does not stop the node: [`Node::state`] then says why.
    pub fn open(
        home: &Home,
        config: Config,
        lock: HomeLock,
        peer_addr: SocketAddr,
    ) -> Result<Self, NodeError> {
        let origin = master(home, &config).map_err(NodeError::Open)?;
        let bus_config = &config.bus_config;
        let http = Http::new(bus_config.cluster_token.clone());
        // In a cluster, the tracker is the directory, over HTTP.
        let directory = (!bus_config.tracker.is_empty()).then(|| {
            Arc::new(TrackerClient::new(&bus_config.tracker, http.clone())) as Arc<dyn Directory>
        });
        // A get that misses every tier fetches through the BUS (the master's newest version,
        // pieces from peers and the master).
        let source = BusSource::new(
            origin.clone(),
            directory.clone(),
            http,
            bus_config.agent_id.clone(),
            bus_config.pull_workers as usize,
            bus_config.download_bytes_per_second,
        );
        let download = source.download();
        let tiers = tiers::open(home, &config, Some(Arc::new(source))).map_err(NodeError::Open)?;
        let (state_bus, state_error) = match tiers::open_state(home, &config, tiers.device.as_ref())
        {
            Ok(bus) => (bus.map(Arc::new), None),
            Err(err) => {
                let message = format!(
                    "the state bus did not open: {err:#}; `vbus --home {} state repair \
                         --dry-run` shows what a repair would cut",
                    home.root().display()
                );
                tracing::error!("{message}; the objects API serves on, pages answer 503");
                (None, Some(message))
            }
        };
        let bus = BusAgent::new(
            agent_options(home, &config, peer_addr, directory),
            tiers.cache.store().clone(),
            origin,
            download,
        )?;
        Ok(Self {
            started: Instant::now(),
            home: home.clone(),
            config,
            tiers,
            state_bus,
            state_error,
            bus: Arc::new(bus),
            loops: Mutex::new(Vec::new()),
            _lock: lock,
        })
    }

    /// Starts the BUS agent's loops on their own threads: registration, heartbeats and
    /// write-backs with the tracker (in a cluster), and the repositories' rounds (when some are
    /// configured). [`Node::shutdown`] stops them.
    pub fn start(self: &Arc<Self>) -> Result<(), NodeError> {
        type Loop = fn(&BusAgent, &CacheManager);
        let runs: [(&str, Loop); 2] = [
            ("vbus-bus-agent", BusAgent::run_agent),
            ("vbus-repositories", BusAgent::run_repositories),
        ];
        for (name, run) in runs {
            let node = Arc::clone(self);
            let handle = std::thread::Builder::new()
                .name(name.to_owned())
                .spawn(move || run(&node.bus, &node.tiers.cache))
                .map_err(|err| NodeError::Open(anyhow::anyhow!("cannot start {name}: {err}")))?;
            self.loops.lock().push(handle);
        }
        Ok(())
    }

    /// Stops the BUS agent's loops, checkpoints the state bus and writes the write-back values
    /// to L3. Returns the checkpoint's sequence number (when the state bus runs) and the number
    /// of values written back.
    pub fn shutdown(&self) -> Result<(Option<u64>, u64), NodeError> {
        self.bus.stop();
        let loops: Vec<JoinHandle<()>> = self.loops.lock().drain(..).collect();
        for handle in loops {
            if handle.join().is_err() {
                tracing::error!("a BUS agent thread panicked");
            }
        }
        let seq = match &self.state_bus {
            Some(bus) => Some(bus.checkpoint()?),
            None => None,
        };
        let dirty = self.tiers.cache.get_stats().dirty_entries;
        self.tiers.cache.flush()?;
        Ok((seq, dirty))
    }

    /// The home.
    pub fn home(&self) -> &Home {
        &self.home
    }

    /// The config the node runs.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The tiered cache (for streaming reads and writes; [`Node::open_object`] and
    /// [`Node::put`] add the coherence directory in a cluster).
    pub fn cache(&self) -> &CacheManager {
        &self.tiers.cache
    }

    /// The tiers and the device L1 runs on.
    pub fn tiers(&self) -> &Tiers {
        &self.tiers
    }

    /// The BUS agent.
    pub fn bus(&self) -> &Arc<BusAgent> {
        &self.bus
    }

    /// When the node opened.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The peer routes of this node's BUS agent (byte ranges and manifests of the files it
    /// holds, behind the cluster token), to serve at the `peer_addr` given to [`Node::open`].
    pub fn peer_router(&self) -> axum::Router {
        vbus_sync::serve::peer::peer_router(Arc::clone(self.bus.peer_files()))
    }

    /// The state bus, or why it is not running.
    pub fn state(&self) -> Result<&Arc<StateBus>, NodeError> {
        if let Some(bus) = &self.state_bus {
            return Ok(bus);
        }
        Err(NodeError::StateUnavailable(
            self.state_error.clone().unwrap_or_else(|| {
                "the state bus is disabled (config key `state.enabled`)".to_owned()
            }),
        ))
    }

    /// The state bus when it runs (`None`: disabled or failed to open).
    pub fn state_bus(&self) -> Option<&Arc<StateBus>> {
        self.state_bus.as_ref()
    }

    /// Why the state bus did not open, if it did not.
    pub fn state_error(&self) -> Option<&str> {
        self.state_error.as_deref()
    }

    /// The value of `key`, in memory or as a reader over its L3 file. In a cluster the
    /// coherence directory is asked first, and a copy older than the newest version is replaced
    /// by it (or the read is refused rather than served stale).
    pub fn open_object(&self, key: &CacheKey) -> Result<Option<Found>, NodeError> {
        if self.bus.in_cluster() {
            self.bus.coherent_read(&self.tiers.cache, key)?;
        }
        Ok(self.tiers.cache.open(key.clone(), PROMOTE_MAX_BYTES)?)
    }

    /// The whole value of `key` (see [`Node::open_object`]).
    pub fn get(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, NodeError> {
        use std::io::Read as _;
        Ok(match self.open_object(key)? {
            None => None,
            Some(Found::Memory(value)) => Some(value.bytes().to_vec()),
            Some(Found::File(mut reader)) => {
                let mut bytes = Vec::new();
                reader.read_to_end(&mut bytes).map_err(|err| {
                    NodeError::Invalid(format!("cannot read {key} from L3: {err}"))
                })?;
                Some(bytes)
            }
        })
    }

    /// Stores `bytes` as the new value of `key`.
    pub fn put(&self, key: &CacheKey, bytes: &[u8]) -> Result<Put, NodeError> {
        self.put_kind(key, bytes, 0)
    }

    /// [`Node::put`] recording `kind` with the value ([`CacheManager::put_kind`]).
    pub fn put_kind(&self, key: &CacheKey, bytes: &[u8], kind: u8) -> Result<Put, NodeError> {
        let version = self
            .tiers
            .cache
            .put_kind(key.clone(), bytes, kind)?
            .version();
        let durable = self.tiers.cache.write_mode() == vbus_cache::WriteMode::Through;
        self.finish_put(key, version, durable)
    }

    /// A writer that stages a new value of `key` in L3; [`Node::commit`] publishes it.
    pub fn writer(&self, key: &CacheKey) -> Result<vbus_store::FileWriter, NodeError> {
        Ok(self.tiers.cache.writer(key.clone())?)
    }

    /// Publishes what `writer` staged as the new value of `key` (durable: it is in L3).
    pub fn commit(&self, key: &CacheKey, writer: vbus_store::FileWriter) -> Result<Put, NodeError> {
        let version = self.tiers.cache.commit(key.clone(), writer)?;
        self.finish_put(key, version, true)
    }

    /// In a cluster, the coherence directory orders the write and invalidates the other holders
    /// before it is acknowledged (a write-back value is written to L3 first).
    fn finish_put(&self, key: &CacheKey, version: u64, durable: bool) -> Result<Put, NodeError> {
        if !self.bus.in_cluster() {
            return Ok(Put {
                version,
                durable,
                coherence: None,
            });
        }
        let cache = &self.tiers.cache;
        if cache.write_mode() == vbus_cache::WriteMode::Back {
            cache.flush()?;
        }
        let coherence = self.bus.coherent_write(cache, key)?;
        Ok(Put {
            version,
            durable: true,
            coherence,
        })
    }

    /// Removes `key` from every tier; whether it was there.
    pub fn remove(&self, key: &CacheKey) -> Result<bool, NodeError> {
        Ok(self.tiers.cache.remove(key.clone())?)
    }

    /// The datasets L3 holds.
    pub fn datasets(&self) -> Vec<String> {
        self.tiers.cache.store().datasets()
    }

    /// The values of `dataset`.
    pub fn list(&self, dataset: &str) -> Result<Vec<Listed>, NodeError> {
        Ok(self.tiers.cache.list(dataset)?)
    }

    /// Pulls `dataset` at `version` (`None`: the newest) from peers and the master.
    pub fn pull(&self, dataset: &str, version: Option<&str>) -> Result<PullSummary, NodeError> {
        Ok(self.bus.pull(&self.tiers.cache, dataset, version)?)
    }

    /// Writes back `dataset`'s Modified files, then records the master's files as a version.
    pub fn push(&self, dataset: &str) -> Result<PushSummary, NodeError> {
        Ok(self.bus.push(&self.tiers.cache, dataset)?)
    }

    /// What the BUS agent holds, serves and pulls now.
    pub fn sync_status(&self) -> AgentStatus {
        self.bus.status()
    }
}

/// The master (`bus_config.master_db`: a directory, relative paths from the home, or an
/// `s3://` bucket).
pub fn master(home: &Home, config: &Config) -> anyhow::Result<Origin> {
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

/// The BUS agent's options from `bus_config`.
fn agent_options(
    home: &Home,
    config: &Config,
    peer_addr: SocketAddr,
    directory: Option<Arc<dyn Directory>>,
) -> AgentOptions {
    let bus = &config.bus_config;
    let addr = if bus.advertise.is_empty() {
        peer_addr.to_string()
    } else {
        bus.advertise.clone()
    };
    AgentOptions {
        home: home.root().to_owned(),
        id: if bus.agent_id.is_empty() {
            addr.clone()
        } else {
            bus.agent_id.clone()
        },
        addr,
        directory,
        cluster_token: bus.cluster_token.clone(),
        pull_workers: bus.pull_workers as usize,
        upload_bytes_per_second: bus.upload_bytes_per_second,
        sync_interval: std::time::Duration::from_secs(bus.sync_interval_seconds),
        repositories: bus.repositories.clone(),
    }
}
