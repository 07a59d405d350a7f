//! `vbus up`: the node daemon in the foreground.
//!
//! It holds an exclusive lock on the home (two daemons never share one), logs to
//! `AUDIT/LOGS/vbus_daemon.log` and stderr, serves HTTP on `api.listen`, and exits 0 on SIGINT or
//! SIGTERM after the requests in flight finish.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::config::{Config, GpuBackend};
use crate::home::{self, Home, Overwrite};

/// Which device L1 runs on, decided once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L1Device {
    /// A CUDA device.
    Cuda,
    /// Host memory behind the device API.
    Simulated,
}

impl L1Device {
    fn as_str(self) -> &'static str {
        match self {
            Self::Cuda => "cuda",
            Self::Simulated => "simulated",
        }
    }

    /// Applies `gpu.backend`: `auto` picks CUDA when the configured device exists.
    fn choose(config: &Config) -> anyhow::Result<Self> {
        let wanted = config.gpu.device_index as usize;
        match config.gpu.backend {
            GpuBackend::Simulated => Ok(Self::Simulated),
            backend => {
                let inventory = vbus_gpu::discover();
                let present = inventory.devices.len() > wanted;
                match (backend, present) {
                    (_, true) => Ok(Self::Cuda),
                    (GpuBackend::Cuda, false) => anyhow::bail!(
                        "config key `gpu.backend` is \"cuda\" but GPU {wanted} does not exist ({} found{}); \
                         use \"auto\" or \"simulated\"",
                        inventory.devices.len(),
                        inventory
                            .problem
                            .map(|p| format!(": {p}"))
                            .unwrap_or_default()
                    ),
                    _ => Ok(Self::Simulated),
                }
            }
        }
    }
}

/// The daemon's shared state.
#[derive(Debug)]
struct AppState {
    started: Instant,
    home: Home,
    config: Config,
    l1_device: L1Device,
    /// L3, when enabled.
    store: Option<vbus_store::FileStore>,
}

/// Runs the daemon until SIGINT or SIGTERM. `listen` overrides `api.listen` (port 0 picks a free
/// port; the address is logged as `listening on http://ADDR`).
pub fn up(home: &Home, listen: Option<&str>) -> anyhow::Result<()> {
    if !home.is_initialised() {
        let report = home::init(home, Overwrite::Keep)?;
        eprint!("{}", report.to_text(home));
    }
    let mut config = home.load_config()?;
    if let Some(listen) = listen {
        config.api.listen = listen.to_owned();
        config.validate().context("--listen is not allowed")?;
    }
    let _lock = HomeLock::acquire(home)?;
    install_logging(home)?;
    let l1_device = L1Device::choose(&config)?;
    let listen_addr = config.api.listen_addr()?;
    let l3 = &config.cache_hierarchy.l3_disk;
    let store = if l3.enabled {
        let store = vbus_store::FileStore::builder(home.l3_dir())
            .capacity_bytes(l3.capacity_bytes())
            .open()
            .with_context(|| format!("cannot open the L3 store at {}", home.l3_dir().display()))?;
        Some(store)
    } else {
        None
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vbus-daemon")
        .build()
        .context("cannot start the async runtime")?;
    let state = Arc::new(AppState {
        started: Instant::now(),
        home: home.clone(),
        config,
        l1_device,
        store,
    });
    runtime.block_on(serve(state, listen_addr))
}

async fn serve(state: Arc<AppState>, listen_addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen_addr)
        .await
        .with_context(|| format!("cannot listen on {listen_addr} (config key `api.listen`)"))?;
    let local_addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let signals = ShutdownSignals::install()?;
    tracing::info!(
        home = %state.home.root().display(),
        l1_device = state.l1_device.as_str(),
        "vbus {} started", env!("CARGO_PKG_VERSION")
    );
    tracing::info!("listening on http://{local_addr}");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(signals.recv())
        .await
        .context("the HTTP server failed")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/stats", get(stats))
        .fallback(not_found)
        .with_state(state)
}

async fn health(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
    }))
}

/// Tier configuration and process figures. Per-tier usage and hit rates join when the
/// `CacheManager` runs in the daemon.
async fn stats(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let tiers = &state.config.cache_hierarchy;
    let tier = |tier: &crate::config::TierConfig, extra: serde_json::Value| {
        let mut value = json!({
            "enabled": tier.enabled,
            "capacity_bytes": tier.capacity_bytes(),
            "eviction_policy": tier.eviction_policy.as_str(),
        });
        if let (Some(object), serde_json::Value::Object(extra)) = (value.as_object_mut(), extra) {
            object.extend(extra);
        }
        value
    };
    Json(json!({
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "home": state.home.root(),
        "tiers": {
            "L1_VRAM": tier(&tiers.l1_vram, json!({ "device": state.l1_device.as_str() })),
            "L2_RAM": tier(&tiers.l2_ram, json!({ "page_locked": state.l1_device == L1Device::Cuda })),
            "L3_DISK": tier(&tiers.l3_disk, l3_stats(&state)),
        },
        "process": { "rss_bytes": rss_bytes() },
    }))
}

/// What the L3 store holds, and what it did since the daemon started.
fn l3_stats(state: &AppState) -> serde_json::Value {
    let mut value = json!({ "path": state.home.l3_dir() });
    if let (Some(store), Some(object)) = (&state.store, value.as_object_mut()) {
        let stats = store.stats();
        object.extend(
            json!({
                "n_files": stats.n_files,
                "used_bytes": stats.used_bytes,
                "n_pinned": stats.n_pinned,
                "pinned_bytes": stats.pinned_bytes,
                "n_evictions": stats.n_evictions,
                "evicted_bytes": stats.evicted_bytes,
                "n_checksum_failures": stats.n_checksum_failures,
                "n_adopted_on_open": stats.n_adopted_on_open,
                "n_dropped_on_open": stats.n_dropped_on_open,
                "open_ms": stats.open_ms,
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        );
    }
    value
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let body = json!({ "error": format!("no route for {method} {}", uri.path()) });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// SIGINT and SIGTERM handlers, installed before the daemon says it is listening, so a signal
/// sent as soon as the address is known is never lost to the default action.
struct ShutdownSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    async fn recv(mut self) {
        let name = tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        };
        tracing::info!(signal = name, "shutting down: finishing requests in flight");
    }
}

/// Resident set size of this process, from `/proc/self/status`.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line["VmRSS:".len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// An exclusive `flock` on `.vbus.lock` at the home's root, held for the daemon's life; the file
/// names the holder's pid.
#[derive(Debug)]
struct HomeLock {
    _file: File,
}

impl HomeLock {
    fn acquire(home: &Home) -> anyhow::Result<Self> {
        let path = home.lock_path();
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))?;
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            anyhow::bail!(
                "another vbus daemon (pid {}) is running on the home {}",
                holder.trim(),
                home.root().display()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        Ok(Self { _file: file })
    }
}

/// Log level from `$VBUS_LOG` (`error`, `warn`, `info`, `debug`, `trace`), default `info`.
fn log_level(
    default: tracing_subscriber::filter::LevelFilter,
) -> anyhow::Result<tracing_subscriber::filter::LevelFilter> {
    match std::env::var("VBUS_LOG") {
        Ok(level) if !level.is_empty() => level.parse().map_err(|_| {
            anyhow::anyhow!(
                "VBUS_LOG={level:?} is not a level; allowed: error, warn, info, debug, trace, off"
            )
        }),
        _ => Ok(default),
    }
}

/// Logging for commands other than `up`: stderr only, warnings and errors by default.
pub fn install_cli_logging() -> anyhow::Result<()> {
    use tracing_subscriber::prelude::*;
    let level = log_level(tracing_subscriber::filter::LevelFilter::WARN)?;
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_filter(level);
    let _ = tracing_subscriber::registry().with(stderr).try_init();
    Ok(())
}

/// Installs the daemon's logging: the daemon log file and stderr.
fn install_logging(home: &Home) -> anyhow::Result<()> {
    use tracing_subscriber::prelude::*;
    let level = log_level(tracing_subscriber::filter::LevelFilter::INFO)?;
    let log_path = home.daemon_log_path();
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("cannot open the daemon log {}", log_path.display()))?;
    let file_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .with_filter(level);
    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_filter(level);
    tracing_subscriber::registry()
        .with(file_layer)
        .with(stderr_layer)
        .try_init()
        .context("cannot install the daemon's logging")?;
    Ok(())
}
