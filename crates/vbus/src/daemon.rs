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

use crate::sync::BusAgent;
use vbus_node::config::Config;
use vbus_node::home::{self, Home, Overwrite};
use vbus_node::tiers::{self, Tiers};

/// The daemon's shared state.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) started: Instant,
    pub(crate) home: Home,
    pub(crate) config: Config,
    pub(crate) tiers: Tiers,
    pub(crate) state_bus: Option<Arc<vbus_state::StateBus>>,
    /// Why the state bus did not open (its log is damaged, say): the objects API serves on,
    /// and pages answer 503 with this.
    pub(crate) state_error: Option<String>,
    /// The BUS side: pulls, peers, the tracker.
    pub(crate) bus: Arc<crate::sync::BusAgent>,
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
    install_logging(home, &config.audit)?;
    let listen_addr = config.api.listen_addr()?;
    // A get that misses every tier fetches through the BUS (the master's newest version, pieces
    // from peers and the master).
    let origin = crate::sync::master(home, &config)?;
    let source = crate::sync::BusSource::new(&config, origin.clone());
    let download = source.download();
    let tiers = tiers::open(home, &config, Some(Arc::new(source)))?;
    // A state bus that cannot open (a damaged log) does not stop the objects API.
    let (state_bus, state_error) = match tiers::open_state(home, &config, tiers.device.as_ref()) {
        Ok(bus) => (bus.map(Arc::new), None),
        Err(err) => {
            let message = format!(
                "the state bus did not open: {err:#}; `vbus --home {} state repair --dry-run` \
                 shows what a repair would cut",
                home.root().display()
            );
            tracing::error!("{message}; the objects API serves on, pages answer 503");
            (None, Some(message))
        }
    };

    // Bound now, so the BUS agent advertises the real port (with `--listen HOST:0`).
    let listener = std::net::TcpListener::bind(listen_addr)
        .with_context(|| format!("cannot listen on {listen_addr} (config key `api.listen`)"))?;
    listener
        .set_nonblocking(true)
        .context("cannot make the listener non-blocking")?;
    let local_addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    // Client commands given this home talk to this address (port 0 resolved).
    vbus_store::atomic::write_whole(&home.addr_path(), format!("{local_addr}\n").as_bytes())
        .with_context(|| {
            format!(
                "cannot record the address in {}",
                home.addr_path().display()
            )
        })?;
    let bus = Arc::new(crate::sync::BusAgent::new(
        home,
        &config,
        local_addr,
        tiers.cache.store().clone(),
        origin,
        download,
    )?);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vbus-daemon")
        .build()
        .context("cannot start the async runtime")?;
    let state = Arc::new(AppState {
        started: Instant::now(),
        home: home.clone(),
        config,
        tiers,
        state_bus,
        state_error,
        bus,
    });
    runtime.block_on(serve(state, listener))
}

async fn serve(state: Arc<AppState>, listener: std::net::TcpListener) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::from_std(listener).context("cannot serve on the listener")?;
    let local_addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let signals = ShutdownSignals::install()?;
    tracing::info!(
        home = %state.home.root().display(),
        l1_backend = state.tiers.l1_backend.map_or("off", |kind| kind.as_str()),
        "vbus {} started", env!("CARGO_PKG_VERSION")
    );
    tracing::info!("listening on http://{local_addr}");
    let agent = spawn_bus_loop(&state, "vbus-bus-agent", BusAgent::run_agent)?;
    let repositories = spawn_bus_loop(&state, "vbus-repositories", BusAgent::run_repositories)?;
    let checkpoints = tokio::spawn(checkpoint_periodically(Arc::clone(&state)));
    let snapshots = tokio::spawn(snapshot_metrics_periodically(Arc::clone(&state)));
    axum::serve(listener, router(Arc::clone(&state)))
        .with_graceful_shutdown(signals.recv())
        .await
        .context("the HTTP server failed")?;
    checkpoints.abort();
    snapshots.abort();
    state.bus.stop();
    for (thread, name) in [(agent, "the BUS agent"), (repositories, "the repositories")] {
        if thread.join().is_err() {
            tracing::error!("{name} thread panicked");
        }
    }
    if let Some(bus) = &state.state_bus {
        let bus = Arc::clone(bus);
        let seq = tokio::task::spawn_blocking(move || bus.checkpoint())
            .await
            .context("the checkpoint task failed")?
            .context("cannot checkpoint the state bus")?;
        tracing::info!(seq, "state bus checkpointed");
    }
    let dirty = state.tiers.cache.get_stats().dirty_entries;
    state
        .tiers
        .cache
        .flush()
        .context("cannot write the write-back values to L3")?;
    tracing::info!(written_back = dirty, "stopped cleanly");
    Ok(())
}

/// Runs one of the BUS agent's loops (`run(&bus, &cache)`, until [`BusAgent::stop`]) on a thread
/// named `name`.
fn spawn_bus_loop(
    state: &Arc<AppState>,
    name: &str,
    run: fn(&BusAgent, &vbus_cache::CacheManager),
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let state = Arc::clone(state);
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || run(&state.bus, &state.tiers.cache))
        .with_context(|| format!("cannot start the {name} thread"))
}

/// Checkpoints the state bus every `state.checkpoint_interval_seconds` (0: never).
async fn checkpoint_periodically(state: Arc<AppState>) {
    let seconds = state.config.state.checkpoint_interval_seconds;
    let Some(bus) = state.state_bus.clone().filter(|_| seconds > 0) else {
        return;
    };
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(seconds));
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let bus = Arc::clone(&bus);
        match tokio::task::spawn_blocking(move || bus.checkpoint()).await {
            Ok(Ok(seq)) => tracing::info!(seq, "periodic checkpoint"),
            Ok(Err(err)) => tracing::error!(error = %err, "periodic checkpoint failed"),
            Err(err) => tracing::error!(error = %err, "periodic checkpoint task failed"),
        }
    }
}

/// The state bus's figures for `/v1/stats`.
fn state_stats(bus: Option<&vbus_state::StateBus>) -> serde_json::Value {
    let Some(bus) = bus else {
        return json!({ "enabled": false });
    };
    let metrics = bus.metrics();
    let latency = |summary: vbus_tlog::LatencySummary| {
        json!({
            "count": summary.count,
            "mean_ns": summary.mean_ns,
            "p50_ns": summary.p50_ns,
            "p99_ns": summary.p99_ns,
            "max_ns": summary.max_ns,
        })
    };
    json!({
        "enabled": true,
        "n_pages": metrics.n_pages,
        "page_bytes": metrics.page_bytes,
        "n_edges": metrics.n_edges,
        "last_seq": metrics.last_seq,
        "log": {
            "first_seq": metrics.log.first_seq,
            "synced_seq": metrics.log.synced_seq,
            "n_segments": metrics.log.n_segments,
            "n_syncs": metrics.log.n_syncs,
            "appended_bytes": metrics.log.appended_bytes,
        },
        "latency": {
            "delta_apply": latency(metrics.delta_apply),
            "propagation": latency(metrics.propagation),
            "log_append": latency(metrics.log_append),
            "fsync": latency(metrics.log.sync),
        },
    })
}

fn router(state: Arc<AppState>) -> Router {
    let peers = crate::sync::peer_router(Arc::clone(&state.bus.peer));
    Router::new()
        .route("/health", get(health))
        .route("/v1/stats", get(stats))
        .merge(crate::api::routes())
        .merge(crate::sync::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(crate::api::json_errors))
        .layer(axum::middleware::from_fn(crate::audit::access_log))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            crate::api::require_token,
        ))
        .with_state(state)
        // Peers present the cluster token (checked by their router), not `api.token`.
        .merge(peers.layer(axum::middleware::from_fn(crate::audit::access_log)))
}

async fn health(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
    }))
}

/// Every tier's configuration and figures, the seed's hit rates, and process figures.
async fn stats(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(stats_json(&state))
}

/// Appends a JSON line of `/v1/stats` (with the time) to `AUDIT/METRICS/vbus_metrics.jsonl`
/// every `audit.metrics_interval_seconds` (0: never).
async fn snapshot_metrics_periodically(state: Arc<AppState>) {
    let audit = state.config.audit.clone();
    if audit.metrics_interval_seconds == 0 {
        return;
    }
    let path = state.home.root().join("AUDIT/METRICS/vbus_metrics.jsonl");
    let opened = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| {
            crate::audit::RotatingFile::open(&path, audit.file_max_bytes, audit.files_kept)
        });
    let mut file = match opened {
        Ok(file) => file,
        Err(err) => {
            tracing::error!(path = %path.display(), error = %err, "metric snapshots are off");
            return;
        }
    };
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(
        audit.metrics_interval_seconds,
    ));
    loop {
        ticks.tick().await;
        let mut line = stats_json(&state);
        line["unix_time"] = json!(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64())
        );
        // One write per line, so a rotation never splits a line.
        if let Err(err) = file.write_all(format!("{line}\n").as_bytes()) {
            tracing::error!(path = %path.display(), error = %err, "cannot write a metric snapshot");
        }
    }
}

/// The body of `/v1/stats`.
fn stats_json(state: &AppState) -> serde_json::Value {
    let tiers = &state.config.cache_hierarchy;
    let cache = state.tiers.cache.get_stats();
    let tier = |config: &vbus_node::config::TierConfig,
                stats: &vbus_cache::TierStats,
                extra: serde_json::Value| {
        let mut value = json!({
            "enabled": config.enabled,
            "capacity_bytes": config.capacity_bytes(),
            "eviction_policy": config.eviction_policy.as_str(),
            "hits": stats.hits,
            "misses": stats.misses,
            "hit_rate_percent": stats.hit_rate_percent(),
            "n_entries": stats.n_entries,
            "used_bytes": stats.used_bytes,
            "n_evictions": stats.n_evictions,
            "evicted_bytes": stats.evicted_bytes,
            "n_pinned": stats.n_pinned,
        });
        if let (Some(object), serde_json::Value::Object(extra)) = (value.as_object_mut(), extra) {
            object.extend(extra);
        }
        value
    };
    let l1_device = state.tiers.l1_backend.map_or("off", |kind| kind.as_str());
    json!({
        "uptime_seconds": state.started.elapsed().as_secs_f64(),
        "home": state.home.root(),
        "l1_hit_rate": cache.l1_hit_rate,
        "l2_hit_rate": cache.l2_hit_rate,
        "l3_hit_rate": cache.l3_hit_rate,
        "tiers": {
            "L1_VRAM": tier(&tiers.l1_vram, &cache.l1, json!({ "device": l1_device })),
            "L2_RAM": tier(&tiers.l2_ram, &cache.l2, json!({})),
            "L3_DISK": tier(&tiers.l3_disk, &cache.l3, l3_extra(state)),
        },
        "moves": {
            "promotions_l3_to_l2": cache.promotions,
            "bytes_l3_to_l2": cache.bytes_l3_to_l2,
            "promotions_to_l1": cache.promotions_to_l1,
            "bytes_to_l1": cache.bytes_to_l1,
            "demotions_from_l1": cache.demotions_from_l1,
            "bytes_from_l1": cache.bytes_from_l1,
            "source_fetches": cache.source_fetches,
            "write_backs": cache.write_backs,
            "bytes_written_back": cache.bytes_written_back,
            "write_back_failures": cache.write_back_failures,
        },
        "write_mode": tiers.write_mode,
        "dirty": { "entries": cache.dirty_entries, "bytes": cache.dirty_bytes },
        "state": match &state.state_error {
            Some(error) => json!({ "enabled": true, "error": error }),
            None => state_stats(state.state_bus.as_deref()),
        },
        "process": { "rss_bytes": rss_bytes() },
    })
}

/// What only the L3 store knows: its files, its start-up reconciliation, its checksum failures.
fn l3_extra(state: &AppState) -> serde_json::Value {
    let stats = state.tiers.cache.store().stats();
    json!({
        "path": state.home.l3_dir(),
        "n_files": stats.n_files,
        "pinned_bytes": stats.pinned_bytes,
        "n_checksum_failures": stats.n_checksum_failures,
        "n_missing": stats.n_missing,
        "n_changed_on_open": stats.n_changed_on_open,
        "n_adopted_on_open": stats.n_adopted_on_open,
        "n_dropped_on_open": stats.n_dropped_on_open,
        "open_ms": stats.open_ms,
    })
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
        // Retried briefly: a client probing whether a daemon runs holds a shared lock for an
        // instant.
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        while rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .is_err()
        {
            if Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            }
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
fn install_logging(home: &Home, audit: &vbus_node::config::AuditConfig) -> anyhow::Result<()> {
    use tracing_subscriber::prelude::*;
    let level = log_level(tracing_subscriber::filter::LevelFilter::INFO)?;
    let log_path = home.daemon_log_path();
    if let Some(dir) = log_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let file = crate::audit::RotatingFile::open(&log_path, audit.file_max_bytes, audit.files_kept)
        .with_context(|| format!("cannot open the daemon log {}", log_path.display()))?;
    let file_layer = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .with_filter(level);
    // Never blocks: a daemon whose stderr nobody reads must keep serving.
    let stderr =
        crate::audit::NonBlockingStderr::start().context("cannot start the stderr writer")?;
    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(stderr)
        .with_filter(level);
    tracing_subscriber::registry()
        .with(file_layer)
        .with(stderr_layer)
        .try_init()
        .context("cannot install the daemon's logging")?;
    Ok(())
}
