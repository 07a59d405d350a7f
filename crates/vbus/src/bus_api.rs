//! The BUS on the daemon's API (`/v1/sync/{pull,push,status}`, adapters over the node's BUS
//! agent), and `vbus tracker`, the cluster's tracker served over HTTP with its state in the
//! home's `BUS/CONTROL_PLANE`.

use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use vbus_node::Home;

use crate::api::ApiError;
use vbus_node::Node as AppState;

/// The routes of the BUS on a daemon.
pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/sync/pull", post(pull))
        .route("/v1/sync/push", post(push))
        .route("/v1/sync/status", get(status))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PullRequest {
    dataset: String,
    #[serde(default)]
    version: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushRequest {
    dataset: String,
}

/// Runs `work` off the async threads and answers its result as JSON.
async fn answer<T: serde::Serialize + Send + 'static>(
    work: impl FnOnce() -> Result<T, vbus_node::NodeError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(answer)) => Json(answer).into_response(),
        Ok(Err(err)) => ApiError::from(err).into_response(),
        Err(err) => ApiError::from(vbus_sync::BusError::Internal(err.to_string())).into_response(),
    }
}

fn bad_request(what: &str, err: &serde_json::Error) -> Response {
    ApiError::new(
        axum::http::StatusCode::BAD_REQUEST,
        format!("bad {what} request: {err}"),
    )
    .into_response()
}

async fn pull(State(node): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let request: PullRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => return bad_request("pull", &err),
    };
    answer(move || node.pull(&request.dataset, request.version.as_deref())).await
}

async fn push(State(node): State<Arc<AppState>>, body: axum::body::Bytes) -> Response {
    let request: PushRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => return bad_request("push", &err),
    };
    answer(move || node.push(&request.dataset)).await
}

async fn status(State(node): State<Arc<AppState>>) -> Json<vbus_sync::AgentStatus> {
    Json(node.sync_status())
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
        let app = vbus_sync::serve::tracker::tracker_router(tracker, token);
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
