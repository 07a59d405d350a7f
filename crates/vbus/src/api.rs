//! The daemon's HTTP API beyond `/health` and `/v1/stats`: objects (streamed both ways, `Range`
//! on GET), listings, pages and edges of the state bus, checkpoint and replay, and `/metrics` in
//! Prometheus text format. `docs/API.md` describes every route.
//!
//! Library calls block (disk, fsync), so each runs on tokio's blocking pool. Every refusal is a
//! 4xx with `{"error": "..."}` saying what was wrong, and changes nothing.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::Deserialize;
use serde_json::json;
use vbus_cache::{CacheKey, Found};
use vbus_state::{Delta, ElemType, Location, MergeOp, PageId, Rule, StateBus};

use vbus_sync::serve::{bearer, constant_time_eq};

use crate::daemon::AppState;

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

fn key(dataset: &str, path: &str) -> ApiResult<CacheKey> {
    // The store validates names too; refusing here keeps errors uniform and early.
    vbus_store::validate_dataset(dataset)?;
    vbus_store::validate_path(path)?;
    Ok(CacheKey::new(dataset, path))
}

async fn list_datasets(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "datasets": state.cache().store().datasets() }))
}

async fn list_objects(
    State(state): State<Arc<AppState>>,
    Path(dataset): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let cache = state.cache().clone();
    let listed = blocking(move || Ok(cache.list(&dataset)?)).await?;
    let objects: Vec<serde_json::Value> = listed
        .into_iter()
        .map(|item| {
            json!({
                "path": item.path,
                "size_bytes": item.size_bytes,
                "version": item.version,
                "pinned": item.pinned,
                "dirty": item.dirty,
            })
        })
        .collect();
    Ok(Json(json!({ "objects": objects })))
}

/// A single `bytes=START-END`, `bytes=START-` or `bytes=-SUFFIX` range over `len` bytes, as an
/// inclusive `(start, end)`; `Ok(None)` without a Range header.
fn parse_range(headers: &HeaderMap, len: u64) -> ApiResult<Option<(u64, u64)>> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let unsatisfiable = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            format!(
                "range {value:?} is not a single satisfiable byte range of a {len}-byte object"
            ),
        )
    };
    let spec = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("bytes="))
        .filter(|spec| !spec.contains(','))
        .ok_or_else(unsatisfiable)?;
    let (start, end) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let (start, end) = match (start.trim(), end.trim()) {
        ("", suffix) => {
            let suffix: u64 = suffix.parse().map_err(|_| unsatisfiable())?;
            if suffix == 0 || len == 0 {
                return Err(unsatisfiable());
            }
            (len.saturating_sub(suffix), len - 1)
        }
        (start, "") => (
            start.parse().map_err(|_| unsatisfiable())?,
            len.saturating_sub(1),
        ),
        (start, end) => (
            start.parse().map_err(|_| unsatisfiable())?,
            end.parse::<u64>()
                .map_err(|_| unsatisfiable())?
                .min(len.saturating_sub(1)),
        ),
    };
    if start > end || start >= len {
        return Err(unsatisfiable());
    }
    Ok(Some((start, end)))
}

fn object_headers(response: &mut Response, version: u64, len: u64, hash: Option<String>) {
    let headers = response.headers_mut();
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers.insert("x-vbus-version", HeaderValue::from(version));
    if let Some(hash) = hash.and_then(|hash| HeaderValue::from_str(&format!("\"{hash}\"")).ok()) {
        headers.insert(header::ETAG, hash);
    }
}

async fn open_object(state: &Arc<AppState>, key: CacheKey) -> ApiResult<Found> {
    let node = Arc::clone(state);
    let name = key.to_string();
    // In a cluster, the coherence directory first: an Invalid copy is replaced by the newest.
    blocking(move || Ok(node.open_object(&key)?))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no object {name}")))
}

async fn get_object(
    State(state): State<Arc<AppState>>,
    Path((dataset, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let key = key(&dataset, &path)?;
    match open_object(&state, key).await? {
        Found::Memory(value) => {
            let len = value.len() as u64;
            let (status, start, end) = match parse_range(&headers, len)? {
                Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end),
                None => (StatusCode::OK, 0, len.saturating_sub(1)),
            };
            let version = value.version();
            // The body borrows the value's own bytes (page-locked or heap): no copy.
            let body = if len == 0 {
                Bytes::new()
            } else {
                Bytes::from_owner(value).slice(start as usize..=end as usize)
            };
            let mut response = (status, body).into_response();
            let body_len = if len == 0 { 0 } else { end - start + 1 };
            object_headers(&mut response, version, body_len, None);
            if status == StatusCode::PARTIAL_CONTENT {
                set_content_range(&mut response, start, end, len);
            }
            Ok(response)
        }
        Found::File(mut reader) => {
            let meta = reader.meta().clone();
            let len = meta.size_bytes;
            let (status, start, end) = match parse_range(&headers, len)? {
                Some((start, end)) => (StatusCode::PARTIAL_CONTENT, start, end),
                None => (StatusCode::OK, 0, len.saturating_sub(1)),
            };
            let body_len = if len == 0 { 0 } else { end - start + 1 };
            let (tx, rx) =
                tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(STREAM_CHUNKS_IN_FLIGHT);
            tokio::task::spawn_blocking(move || {
                let mut remaining = body_len;
                if let Err(err) = reader.seek(SeekFrom::Start(start)) {
                    let _ = tx.blocking_send(Err(err));
                    return;
                }
                while remaining > 0 {
                    // Read into spare capacity: no zeroing of a fresh buffer per chunk.
                    let want = remaining.min(STREAM_CHUNK_BYTES as u64);
                    let mut chunk = Vec::with_capacity(want as usize);
                    match (&mut reader).take(want).read_to_end(&mut chunk) {
                        Ok(n) if n as u64 == want => {}
                        Ok(n) => {
                            let _ = tx.blocking_send(Err(std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                format!("the L3 file ended {} bytes early", remaining - n as u64),
                            )));
                            return;
                        }
                        Err(err) => {
                            let _ = tx.blocking_send(Err(err));
                            return;
                        }
                    }
                    remaining -= chunk.len() as u64;
                    if tx.blocking_send(Ok(Bytes::from(chunk))).is_err() {
                        return; // The client went away.
                    }
                }
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            let mut response = (status, Body::from_stream(stream)).into_response();
            object_headers(&mut response, meta.version, body_len, meta.hash_hex());
            if status == StatusCode::PARTIAL_CONTENT {
                set_content_range(&mut response, start, end, len);
            }
            Ok(response)
        }
    }
}

fn set_content_range(response: &mut Response, start: u64, end: u64, len: u64) {
    if let Ok(value) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
        response.headers_mut().insert(header::CONTENT_RANGE, value);
    }
}

async fn head_object(
    State(state): State<Arc<AppState>>,
    Path((dataset, path)): Path<(String, String)>,
) -> ApiResult<Response> {
    let key = key(&dataset, &path)?;
    let (version, len, hash) = match open_object(&state, key).await? {
        Found::Memory(value) => (value.version(), value.len() as u64, None),
        Found::File(reader) => {
            let meta = reader.meta();
            (meta.version, meta.size_bytes, meta.hash_hex())
        }
    };
    let mut response = StatusCode::OK.into_response();
    object_headers(&mut response, version, len, hash);
    Ok(response)
}

async fn put_object(
    State(state): State<Arc<AppState>>,
    Path((dataset, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let key = key(&dataset, &path)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let capacity = state.cache().store().stats().capacity_bytes;
    if let Some(len) = declared
        && len > capacity
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{len} bytes is more than L3's capacity of {capacity} bytes"),
        ));
    }
    let node = Arc::clone(&state);
    // A small value in write-back mode is acknowledged from RAM: it reaches L3 later (and is
    // lost if the daemon is killed first), so the answer says it is not durable yet. In a
    // cluster the directory orders the write and invalidates the other holders before it is
    // acknowledged.
    let put = if declared.is_some_and(|len| len <= SMALL_PUT_BYTES) {
        let bytes = axum::body::to_bytes(body, SMALL_PUT_BYTES as usize)
            .await
            .map_err(|err| ApiError::bad_request(format!("cannot read the body: {err}")))?;
        blocking(move || Ok(node.put(&key, &bytes)?)).await?
    } else {
        stream_into_l3(node, key, body).await?
    };
    let mut answer = json!({
        "dataset": dataset,
        "path": path,
        "version": put.version,
        "durable": put.durable,
    });
    if let Some(line) = put.coherence {
        answer["coherence"] = json!({ "version": line.version, "owner": line.owner });
    }
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// Streams a body into a staged L3 file; published only if the whole body arrived.
async fn stream_into_l3(
    node: Arc<AppState>,
    key: CacheKey,
    body: Body,
) -> ApiResult<vbus_node::Put> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(STREAM_CHUNKS_IN_FLIGHT);
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let writing = tokio::task::spawn_blocking(move || -> ApiResult<vbus_node::Put> {
        use std::io::Write as _;
        let mut writer = node.writer(&key)?;
        while let Some(chunk) = rx.blocking_recv() {
            writer
                .write_all(&chunk)
                .map_err(|err| ApiError::internal(format!("cannot stage the object: {err}")))?;
        }
        // The sender is gone: commit only if the body ended cleanly.
        let mut done_rx = done_rx;
        if done_rx.try_recv().is_err() {
            return Err(ApiError::bad_request(
                "the body ended early; nothing was stored",
            ));
        }
        Ok(node.commit(&key, writer)?)
    });
    let mut stream = body.into_data_stream();
    let mut failure = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(chunk) => {
                if tx.send(chunk).await.is_err() {
                    break; // The writer failed; its error is the answer.
                }
            }
            Err(err) => {
                failure = Some(ApiError::bad_request(format!(
                    "cannot read the body: {err}"
                )));
                break;
            }
        }
    }
    if failure.is_none() {
        let _ = done_tx.send(());
    }
    drop(tx);
    let outcome = writing
        .await
        .map_err(|err| ApiError::internal(format!("the writer task failed: {err}")))?;
    match failure {
        Some(err) => Err(err),
        None => outcome,
    }
}

async fn delete_object(
    State(state): State<Arc<AppState>>,
    Path((dataset, path)): Path<(String, String)>,
) -> ApiResult<Response> {
    let key = key(&dataset, &path)?;
    let cache = state.cache().clone();
    let name = key.to_string();
    if blocking(move || Ok(cache.remove(key)?)).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!("no object {name}")))
    }
}

fn bus(state: &AppState) -> ApiResult<Arc<StateBus>> {
    state.state_bus().cloned().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            state
                .state_error()
                .unwrap_or("the state bus is off (config key state.enabled)"),
        )
    })
}

/// A JSON body of at most [`JSON_BODY_MAX_BYTES`].
async fn json_body<T: for<'de> Deserialize<'de>>(body: Body) -> ApiResult<T> {
    let bytes = axum::body::to_bytes(body, JSON_BODY_MAX_BYTES)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("a JSON body may be at most {JSON_BODY_MAX_BYTES} bytes"),
            )
        })?;
    serde_json::from_slice(&bytes).map_err(|err| ApiError::bad_request(format!("bad JSON: {err}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePage {
    size: u64,
    #[serde(default)]
    location: Option<String>,
}

/// The largest page a request may create (16 GiB).
const PAGE_SIZE_MAX: u64 = 16 << 30;

async fn create_page(State(state): State<Arc<AppState>>, body: Body) -> ApiResult<Response> {
    let bus = bus(&state)?;
    let request: CreatePage = json_body(body).await?;
    let location = match request.location.as_deref() {
        None | Some("cpu") => Location::Cpu,
        Some("gpu") => Location::Gpu,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "location {other:?} is not one of \"cpu\", \"gpu\""
            )));
        }
    };
    if request.size > PAGE_SIZE_MAX {
        return Err(ApiError::bad_request(format!(
            "a page may be at most {PAGE_SIZE_MAX} bytes, not {}",
            request.size
        )));
    }
    let (id, seq) = blocking(move || Ok(bus.create(request.size, location)?)).await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "seq": seq }))).into_response())
}

async fn list_pages(State(state): State<Arc<AppState>>) -> ApiResult<Json<serde_json::Value>> {
    let bus = bus(&state)?;
    let pages = blocking(move || Ok(bus.pages())).await?;
    Ok(Json(json!({ "pages": pages_json(&pages) })))
}

fn pages_json(pages: &[vbus_state::PageInfo]) -> Vec<serde_json::Value> {
    pages
        .iter()
        .map(|page| {
            json!({
                "id": page.id,
                "size": page.size,
                "location": page.location.as_str(),
                "epoch": page.epoch,
            })
        })
        .collect()
}

fn page_response(view: vbus_state::PageView) -> Response {
    let mut response = (StatusCode::OK, view.bytes).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert("x-vbus-epoch", HeaderValue::from(view.epoch));
    headers.insert(
        "x-vbus-location",
        HeaderValue::from_static(view.location.as_str()),
    );
    response
}

fn page_id(raw: &str) -> ApiResult<PageId> {
    raw.parse()
        .map_err(|_| ApiError::bad_request(format!("page id {raw:?} is not a number")))
}

async fn query_page(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let bus = bus(&state)?;
    let id = page_id(&id)?;
    let view = blocking(move || Ok(bus.query_page(id)?)).await?;
    Ok(page_response(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonDelta {
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    elem: Option<String>,
    runs: Vec<JsonRun>,
    #[serde(default)]
    expected_epoch: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRun {
    offset: u64,
    /// Base64 (standard alphabet, padded).
    data: String,
}

/// An operator as the API names it (`overwrite`, `add`, `max`, `min`, `or`).
pub fn parse_op(name: &str) -> Option<MergeOp> {
    MergeOp::ALL.into_iter().find(|op| op.as_str() == name)
}

/// An element type as the API names it (`u8`, `i32`, `i64`, `f32`, `f64`).
pub fn parse_elem(name: &str) -> Option<ElemType> {
    ElemType::ALL.into_iter().find(|elem| elem.as_str() == name)
}

async fn update_page(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let bus = bus(&state)?;
    let id = page_id(&id)?;
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let (delta, expected_epoch) = if is_json {
        let request: JsonDelta = json_body(body).await?;
        let op = match request.op.as_deref() {
            None => MergeOp::Overwrite,
            Some(name) => parse_op(name).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "op {name:?} is not one of overwrite, add, max, min, or"
                ))
            })?,
        };
        let elem = match request.elem.as_deref() {
            None => ElemType::U8,
            Some(name) => parse_elem(name).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "elem {name:?} is not one of u8, i32, i64, f32, f64"
                ))
            })?,
        };
        let mut runs = Vec::with_capacity(request.runs.len());
        for (idx, run) in request.runs.into_iter().enumerate() {
            let bytes = base64_decode(&run.data)
                .ok_or_else(|| ApiError::bad_request(format!("run {idx}: data is not base64")))?;
            runs.push((run.offset, bytes));
        }
        (Delta::with_op(op, elem, runs), request.expected_epoch)
    } else {
        let bytes = axum::body::to_bytes(body, DELTA_BODY_MAX_BYTES)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("a delta may be at most {DELTA_BODY_MAX_BYTES} bytes"),
                )
            })?;
        let (delta, used) = vbus_state::delta::decode(&bytes)?;
        if used != bytes.len() {
            return Err(ApiError::bad_request(format!(
                "{} bytes follow the delta",
                bytes.len() - used
            )));
        }
        (delta, None)
    };
    let (seq, epoch) = blocking(move || {
        let seq = match expected_epoch {
            Some(epoch) => bus.update_page_at(id, &delta, epoch)?,
            None => bus.update_page(id, &delta)?,
        };
        // The epoch without copying the page's bytes.
        Ok((seq, bus.page_info(id).map(|info| info.epoch).ok()))
    })
    .await?;
    Ok(Json(json!({ "seq": seq, "epoch": epoch })).into_response())
}

async fn delete_page(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let bus = bus(&state)?;
    let id = page_id(&id)?;
    let seq = blocking(move || Ok(bus.delete_page(id)?)).await?;
    Ok(Json(json!({ "seq": seq })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddEdge {
    source: PageId,
    target: PageId,
    rule: String,
}

/// `add:i64`, `max:f32`, ... or `function:NAME`.
pub(crate) fn parse_rule(text: &str) -> Option<Rule> {
    let (head, tail) = text.split_once(':')?;
    if head == "function" {
        return (!tail.is_empty()).then(|| Rule::Function(tail.to_owned()));
    }
    Some(Rule::Semiring {
        op: parse_op(head)?,
        elem: parse_elem(tail)?,
    })
}

fn rule_name(rule: &Rule) -> String {
    match rule {
        Rule::Semiring { op, elem } => format!("{}:{}", op.as_str(), elem.as_str()),
        Rule::Function(name) => format!("function:{name}"),
    }
}

async fn add_edge(State(state): State<Arc<AppState>>, body: Body) -> ApiResult<Response> {
    let bus = bus(&state)?;
    let request: AddEdge = json_body(body).await?;
    let rule = parse_rule(&request.rule).ok_or_else(|| {
        ApiError::bad_request(format!(
            "rule {:?} is not OP:ELEM (OP add, max, min or or; ELEM u8, i32, i64, f32, f64) or function:NAME",
            request.rule
        ))
    })?;
    let seq = blocking(move || Ok(bus.add_edge(request.source, request.target, rule)?)).await?;
    Ok((StatusCode::CREATED, Json(json!({ "seq": seq }))).into_response())
}

async fn list_edges(State(state): State<Arc<AppState>>) -> ApiResult<Json<serde_json::Value>> {
    let bus = bus(&state)?;
    let edges = blocking(move || Ok(bus.edges())).await?;
    let edges: Vec<serde_json::Value> = edges
        .iter()
        .map(|(source, target, rule)| {
            json!({ "source": source, "target": target, "rule": rule_name(rule) })
        })
        .collect();
    Ok(Json(json!({ "edges": edges })))
}

async fn remove_edge(
    State(state): State<Arc<AppState>>,
    Path((source, target)): Path<(String, String)>,
) -> ApiResult<Response> {
    let bus = bus(&state)?;
    let (source, target) = (page_id(&source)?, page_id(&target)?);
    let seq = blocking(move || Ok(bus.remove_edge(source, target)?)).await?;
    Ok(Json(json!({ "seq": seq })).into_response())
}

async fn checkpoint(State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let bus = bus(&state)?;
    let seq = blocking(move || Ok(bus.checkpoint()?)).await?;
    Ok(Json(json!({ "seq": seq })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayQuery {
    to: u64,
}

async fn replay(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ReplayQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let bus = bus(&state)?;
    let Query(query) = query.map_err(|err| {
        ApiError::bad_request(format!("replay needs ?to=SEQ (a sequence number): {err}"))
    })?;
    let (seq, hash, pages) = blocking(move || {
        let snapshot = bus.replay_to(query.to)?;
        Ok((snapshot.seq(), snapshot.state_hash()?, snapshot.pages()))
    })
    .await?;
    let hash: String = hash.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(
        Json(json!({ "seq": seq, "state_hash": hash, "pages": pages_json(&pages) }))
            .into_response(),
    )
}

async fn replay_page(
    State(state): State<Arc<AppState>>,
    Path((seq, id)): Path<(String, String)>,
) -> ApiResult<Response> {
    let bus = bus(&state)?;
    let seq: u64 = seq
        .parse()
        .map_err(|_| ApiError::bad_request(format!("sequence number {seq:?} is not a number")))?;
    let id = page_id(&id)?;
    let view = blocking(move || Ok(bus.replay_to(seq)?.query_page(id)?)).await?;
    Ok(page_response(view))
}

/// `/metrics`: the tiers, moves and state bus in Prometheus text format.
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let cache = state.cache().get_stats();
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in samples {
            if labels.is_empty() {
                out.push_str(&format!("{name} {value}\n"));
            } else {
                out.push_str(&format!("{name}{{{labels}}} {value}\n"));
            }
        }
    };
    let tiers = [("l1", &cache.l1), ("l2", &cache.l2), ("l3", &cache.l3)];
    let per_tier = |pick: &dyn Fn(&vbus_cache::TierStats) -> u64| -> Vec<(String, f64)> {
        tiers
            .iter()
            .map(|(name, stats)| (format!("tier=\"{name}\""), pick(stats) as f64))
            .collect()
    };
    for (name, kind, help, pick) in [
        (
            "vbus_cache_hits_total",
            "counter",
            "Gets answered by the tier.",
            (|s: &vbus_cache::TierStats| s.hits) as fn(&vbus_cache::TierStats) -> u64,
        ),
        (
            "vbus_cache_misses_total",
            "counter",
            "Gets the tier could not answer.",
            |s| s.misses,
        ),
        (
            "vbus_cache_evictions_total",
            "counter",
            "Values evicted from the tier.",
            |s| s.n_evictions,
        ),
        (
            "vbus_cache_used_bytes",
            "gauge",
            "Bytes the tier holds.",
            |s| s.used_bytes,
        ),
        (
            "vbus_cache_capacity_bytes",
            "gauge",
            "The tier's capacity.",
            |s| s.capacity_bytes,
        ),
        (
            "vbus_cache_entries",
            "gauge",
            "Values the tier holds.",
            |s| s.n_entries,
        ),
    ] {
        let samples = per_tier(&pick);
        let samples: Vec<(&str, f64)> = samples.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        family(name, kind, help, &samples);
    }
    for (name, value) in [
        ("vbus_l1_hit_rate", cache.l1_hit_rate),
        ("vbus_l2_hit_rate", cache.l2_hit_rate),
        ("vbus_l3_hit_rate", cache.l3_hit_rate),
    ] {
        family(
            name,
            "gauge",
            "The seed's hit rate, percent.",
            &[("", value)],
        );
    }
    for (name, help, value) in [
        (
            "vbus_promotions_total",
            "Values promoted L3 to L2.",
            cache.promotions,
        ),
        (
            "vbus_write_backs_total",
            "Dirty values written to L3.",
            cache.write_backs,
        ),
        (
            "vbus_source_fetches_total",
            "Values fetched from the source.",
            cache.source_fetches,
        ),
    ] {
        family(name, "counter", help, &[("", value as f64)]);
    }
    let l3 = state.cache().store().stats();
    for (name, help, value) in [
        (
            "vbus_l3_checksum_failures_total",
            "L3 files whose bytes failed their checksums (each quarantined, never served).",
            l3.n_checksum_failures,
        ),
        (
            "vbus_l3_changed_on_open_total",
            "L3 files whose bytes changed on disk while the daemon was down.",
            l3.n_changed_on_open,
        ),
        (
            "vbus_l3_missing_total",
            "L3 files deleted by hand while the daemon ran.",
            l3.n_missing,
        ),
    ] {
        family(name, "counter", help, &[("", value as f64)]);
    }
    family(
        "vbus_dirty_bytes",
        "gauge",
        "Write-back bytes not yet in L3.",
        &[("", cache.dirty_bytes as f64)],
    );
    if let Some(bus) = state.state_bus() {
        let metrics = bus.metrics();
        family(
            "vbus_state_pages",
            "gauge",
            "Pages of the state bus.",
            &[("", metrics.n_pages as f64)],
        );
        family(
            "vbus_state_last_seq",
            "gauge",
            "The last change's sequence number.",
            &[("", metrics.last_seq as f64)],
        );
        family(
            "vbus_state_log_syncs_total",
            "counter",
            "Log syncs.",
            &[("", metrics.log.n_syncs as f64)],
        );
        family(
            "vbus_state_delta_apply_seconds",
            "summary",
            "Applying an update's deltas.",
            &[
                ("quantile=\"0.5\"", metrics.delta_apply.p50_ns as f64 / 1e9),
                ("quantile=\"0.99\"", metrics.delta_apply.p99_ns as f64 / 1e9),
            ],
        );
    }
    let mut response = out.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
#[cfg(test)]
pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for idx in 0..4 {
            if idx <= chunk.len() {
                out.push(BASE64[(n >> (18 - 6 * idx) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 with padding; `None` for anything else.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.as_bytes();
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    for (chunk_idx, chunk) in text.chunks(4).enumerate() {
        let last = chunk_idx == text.len() / 4 - 1;
        let n_pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if n_pad > 2 || (n_pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for (idx, &c) in chunk.iter().enumerate() {
            let value = if idx >= 4 - n_pad {
                0
            } else {
                BASE64.iter().position(|&b| b == c)? as u32
            };
            n = (n << 6) | value;
        }
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - n_pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_refuses_junk() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = base64_encode(&bytes);
            assert_eq!(base64_decode(&text), Some(bytes));
        }
        assert_eq!(base64_encode(b"Man"), "TWFu");
        assert_eq!(base64_encode(b"Ma"), "TWE=");
        for junk in ["abc", "a===", "TW=u", "TWE=TWFu", "@@@@"] {
            assert_eq!(base64_decode(junk), None, "{junk}");
        }
    }

    #[test]
    fn ranges_parse_and_refuse() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::RANGE, HeaderValue::from_str(value).unwrap());
            headers
        };
        assert_eq!(parse_range(&HeaderMap::new(), 10).unwrap(), None);
        assert_eq!(parse_range(&with("bytes=2-5"), 10).unwrap(), Some((2, 5)));
        assert_eq!(parse_range(&with("bytes=7-"), 10).unwrap(), Some((7, 9)));
        assert_eq!(parse_range(&with("bytes=-3"), 10).unwrap(), Some((7, 9)));
        assert_eq!(parse_range(&with("bytes=5-100"), 10).unwrap(), Some((5, 9)));
        for bad in [
            "bytes=10-",
            "bytes=5-2",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=-0",
            "bytes=x-",
        ] {
            assert!(parse_range(&with(bad), 10).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_parse() {
        assert_eq!(
            parse_rule("add:i64"),
            Some(Rule::Semiring {
                op: MergeOp::Add,
                elem: ElemType::I64
            })
        );
        assert_eq!(
            parse_rule("function:blend"),
            Some(Rule::Function("blend".to_owned()))
        );
        for bad in ["add", "sum:i64", "add:i16", "function:"] {
            assert_eq!(parse_rule(bad), None, "{bad}");
        }
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
