//! The daemon's HTTP API beyond `/health` and `/v1/stats`: objects (streamed both ways, `Range`
//! on GET), listings, pages and edges of the state bus, checkpoint and replay, and `/metrics` in
//! Prometheus text format. `docs/API.md` describes every route.
//!
//! Library calls block (disk, fsync), so each runs on tokio's blocking pool. Every refusal is a
//! 4xx with `{"error": "..."}` saying what was wrong, and changes nothing.

mod metrics;
mod objects;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use vbus_node::Node as AppState;
use vbus_sync::serve::{bearer, constant_time_eq};

/// Bodies up to this size are taken whole and go through the cache's `put` (kept in L2, and
/// write-back when configured); larger ones are streamed to L3.
const SMALL_PUT_BYTES: u64 = 8 << 20;
/// The largest JSON body accepted.
const JSON_BODY_MAX_BYTES: usize = 1 << 20;
/// The largest binary delta accepted.
const DELTA_BODY_MAX_BYTES: usize = vbus_tlog::MAX_BODY_BYTES;
/// Bytes per chunk when streaming a file out or in.
const STREAM_CHUNK_BYTES: usize = 4 << 20;
/// Chunks in flight between the network and the disk, each way.
const STREAM_CHUNKS_IN_FLIGHT: usize = 4;

/// A refusal or failure, answered as `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// For a 500: what failed, shown instead of `message` (which goes to the log); `None` when
    /// the message is for the client (damaged data, named by file and offset).
    what: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            what: Some("the daemon failed"),
        }
    }

    /// What failed, for a 500 (see [`ApiError::what`]).
    fn with_what(mut self, what: Option<&'static str>) -> Self {
        self.what = what;
        self
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message.to_string())
    }
}

impl IntoResponse for ApiError {
    /// `{"error": message}`; a 500 shows a request id instead of its detail, which is logged.
    fn into_response(self) -> Response {
        vbus_sync::serve::error_response(self.status, self.what, &self.message)
    }
}

impl From<vbus_store::Error> for ApiError {
    fn from(err: vbus_store::Error) -> Self {
        use vbus_store::Error as E;
        let status = match &err {
            E::InvalidName { .. } => StatusCode::BAD_REQUEST,
            E::NotFound { .. } => StatusCode::NOT_FOUND,
            E::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            E::CapacityExhausted { .. } => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let damage = matches!(
            err,
            E::ChecksumMismatch { .. } | E::Damaged { .. } | E::UnsupportedFormat { .. }
        );
        Self::new(status, err.to_string()).with_what((!damage).then_some("the L3 store failed"))
    }
}

impl From<vbus_cache::Error> for ApiError {
    fn from(err: vbus_cache::Error) -> Self {
        match err {
            vbus_cache::Error::Store(err) => err.into(),
            other => Self::internal(other),
        }
    }
}

impl From<vbus_node::NodeError> for ApiError {
    fn from(err: vbus_node::NodeError) -> Self {
        use vbus_node::NodeError as E;
        match err {
            E::Cache(err) => err.into(),
            E::Store(err) => err.into(),
            E::State(err) => err.into(),
            E::Bus(err) => err.into(),
            E::Invalid(message) => Self::bad_request(message),
            E::StateUnavailable(message) => Self::new(StatusCode::SERVICE_UNAVAILABLE, message),
            E::Open(err) => Self::internal(format!("{err:#}")),
        }
    }
}

impl From<vbus_sync::BusError> for ApiError {
    fn from(err: vbus_sync::BusError) -> Self {
        Self::new(vbus_sync::serve::status_of(err.kind()), err.to_string())
    }
}

impl From<vbus_state::Error> for ApiError {
    fn from(err: vbus_state::Error) -> Self {
        use vbus_state::Error as E;
        let status = match &err {
            E::NoSuchPage { .. } => StatusCode::NOT_FOUND,
            E::BadDelta { .. }
            | E::NotMergeable { .. }
            | E::Cycle { .. }
            | E::BadEdge { .. }
            | E::UnknownFunction { .. } => StatusCode::BAD_REQUEST,
            E::EpochMismatch { .. } => StatusCode::CONFLICT,
            E::NotRetained { .. } => StatusCode::GONE,
            E::OverLimit { .. } => StatusCode::INSUFFICIENT_STORAGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = match &err {
            E::OverLimit { limit, .. } => format!(
                "{err} ({})",
                match limit {
                    vbus_state::Limit::PageBytes => "config key state.pages_max_mb",
                    vbus_state::Limit::CheckpointBytes =>
                        "config key state.checkpoints_max_mb, for state.checkpoints_retained + 1 \
                         images of the pages",
                    vbus_state::Limit::DeviceMemory =>
                        "the device's memory; config key cache_hierarchy.L1_VRAM.max_size_mb",
                    vbus_state::Limit::DiskSpace => "the free space of DATA/CHECKPOINTS",
                }
            ),
            _ => err.to_string(),
        };
        let damage = matches!(
            err,
            E::BadRecord { .. }
                | E::CorruptCheckpoint { .. }
                | E::UnsupportedFormat { .. }
                | E::Log(
                    vbus_tlog::Error::Corrupt { .. } | vbus_tlog::Error::UnsupportedFormat { .. }
                )
        );
        Self::new(status, message).with_what((!damage).then_some("the state bus failed"))
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Runs blocking library work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| ApiError::internal(format!("a worker task failed: {err}")))?
}

/// The routes of this module (the daemon adds `/health`, `/v1/stats` and the fallback).
pub(crate) fn routes() -> Router<Arc<AppState>> {
    use metrics::metrics;
    use objects::{
        delete_object, get_object, head_object, list_datasets, list_objects, put_object,
    };
    use pages::{
        add_edge, checkpoint, create_page, delete_page, list_edges, list_pages, query_page,
        remove_edge, replay, replay_page, update_page,
    };
    Router::new()
        .route("/v1/objects", get(list_datasets))
        .route("/v1/objects/{dataset}", get(list_objects))
        .route(
            "/v1/objects/{dataset}/{*path}",
            get(get_object)
                .head(head_object)
                .put(put_object)
                .delete(delete_object),
        )
        .route("/v1/pages", post(create_page).get(list_pages))
        .route(
            "/v1/pages/{id}",
            get(query_page).patch(update_page).delete(delete_page),
        )
        .route("/v1/edges", post(add_edge).get(list_edges))
        .route("/v1/edges/{source}/{target}", delete(remove_edge))
        .route("/v1/checkpoint", post(checkpoint))
        .route("/v1/replay", get(replay))
        .route("/v1/replay/{seq}/pages/{id}", get(replay_page))
        .route("/metrics", get(metrics))
}

/// Error bodies larger than this are not rewrapped (ours are JSON already).
const PLAIN_ERROR_BYTES_MAX: usize = 16 * 1024;

/// Turns the plain-text refusals axum's extractors answer (a path that is not UTF-8, a query
/// that does not parse) into the JSON error every other refusal carries: `{"error": TEXT}`.
pub(crate) async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if !(response.status().is_client_error() || response.status().is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, PLAIN_ERROR_BYTES_MAX).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(_) => format!("request refused ({})", parts.status),
    };
    ApiError::new(parts.status, text).into_response()
}

/// Requires `Authorization: Bearer TOKEN` on every route but `/health` when `api.token` is set;
/// the comparison takes the same time wherever the first difference lies.
pub(crate) async fn require_token(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.config().api.token else {
        return next.run(request).await;
    };
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    match bearer(&request) {
        Some(presented) if constant_time_eq(presented.as_bytes(), token.as_bytes()) => {
            next.run(request).await
        }
        Some(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "the bearer token is wrong").into_response()
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this daemon requires `Authorization: Bearer TOKEN` (config key api.token)",
        )
        .into_response(),
    }
}

pub use pages::{parse_elem, parse_op};
