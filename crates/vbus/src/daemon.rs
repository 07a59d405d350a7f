//! `vbus up`: the node daemon in the foreground.
//!
//! It holds an exclusive lock on the home (two daemons never share one), logs to
//! `AUDIT/LOGS/vbus_daemon.log` and stderr, serves HTTP on `api.listen`, and exits 0 on SIGINT or
//! SIGTERM after the requests in flight finish.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use vbus_node::Node;
use vbus_node::home::{self, Home, HomeLock, Overwrite};

/// The daemon's shared state: the node it serves.
pub(crate) type AppState = Node;

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
    let lock = HomeLock::acquire(home)?;
    install_logging(home, &config.audit)?;
    let listen_addr = config.api.listen_addr()?;
    // Bound first, so the BUS agent advertises the real port (with `--listen HOST:0`); the
    // peer routes are served on it too.
    let listener = std::net::TcpListener::bind(listen_addr)
        .with_context(|| format!("cannot listen on {listen_addr} (config key `api.listen`)"))?;
    listener
        .set_nonblocking(true)
        .context("cannot make the listener non-blocking")?;
    let local_addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let node = Arc::new(Node::open(home, config, lock, local_addr)?);
    // Client commands given this home talk to this address (port 0 resolved).
    vbus_store::atomic::write_whole(&home.addr_path(), format!("{local_addr}\n").as_bytes())
        .with_context(|| {
            format!(
                "cannot record the address in {}",
                home.addr_path().display()
            )
        })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("vbus-daemon")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(node, listener))
}

async fn serve(state: Arc<AppState>, listener: std::net::TcpListener) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::from_std(listener).context("cannot serve on the listener")?;
    let local_addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let signals = ShutdownSignals::install()?;
    tracing::info!(
        home = %state.home().root().display(),
        l1_backend = state.tiers().l1_backend.map_or("off", |kind| kind.as_str()),
        "vbus {} started", env!("CARGO_PKG_VERSION")
    );
    tracing::info!("listening on http://{local_addr}");
    state.start()?;
    let checkpoints = tokio::spawn(checkpoint_periodically(Arc::clone(&state)));
    let snapshots = tokio::spawn(snapshot_metrics_periodically(Arc::clone(&state)));
    axum::serve(listener, router(Arc::clone(&state)))
        .with_graceful_shutdown(signals.recv())
        .await
        .context("the HTTP server failed")?;
    checkpoints.abort();
    snapshots.abort();
    let node = Arc::clone(&state);
    let (seq, written_back) = tokio::task::spawn_blocking(move || node.shutdown())
        .await
        .context("the shutdown task failed")?
        .context("cannot stop cleanly")?;
    if let Some(seq) = seq {
        tracing::info!(seq, "state bus checkpointed");
    }
    tracing::info!(written_back, "stopped cleanly");
    Ok(())
}

/// Checkpoints the state bus every `state.checkpoint_interval_seconds` (0: never).
async fn checkpoint_periodically(state: Arc<AppState>) {
    let seconds = state.config().state.checkpoint_interval_seconds;
    let Some(bus) = state.state_bus().cloned().filter(|_| seconds > 0) else {
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

fn router(state: Arc<AppState>) -> Router {
    let peers = state.peer_router();
    Router::new()
        .route("/health", get(health))
        .route("/v1/stats", get(stats))
        .merge(crate::api::routes())
        .merge(crate::bus_api::routes())
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
        "uptime_seconds": state.started().elapsed().as_secs_f64(),
    }))
}

/// Every tier's configuration and figures, the hit rates, and process figures.
async fn stats(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(state.stats())
}

/// Appends a JSON line of `/v1/stats` (with the time) to `AUDIT/METRICS/vbus_metrics.jsonl`
/// every `audit.metrics_interval_seconds` (0: never).
async fn snapshot_metrics_periodically(state: Arc<AppState>) {
    let audit = state.config().audit.clone();
    if audit.metrics_interval_seconds == 0 {
        return;
    }
    let path = state.home().root().join("AUDIT/METRICS/vbus_metrics.jsonl");
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
        let mut line = state.stats();
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
