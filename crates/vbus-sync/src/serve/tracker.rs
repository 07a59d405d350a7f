//! The tracker's routes (`/v1/tracker/…`, behind the cluster token): the server side of
//! [`crate::peer::TrackerClient`], each route one call of [`Tracker`](crate::Tracker).

use std::sync::Arc;

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

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
    if super::presents(&request, &token) {
        next.run(request).await
    } else {
        refuse(
            StatusCode::UNAUTHORIZED,
            "tracker requests need `Authorization: Bearer CLUSTER_TOKEN`",
        )
    }
}

/// The tracker, shared by its handlers.
pub type SharedTracker = Arc<crate::Tracker>;

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

fn tracker_error(err: crate::TrackerError) -> Response {
    use crate::TrackerError as E;
    let status = match &err {
        E::UnknownAgent(_) => StatusCode::NOT_FOUND,
        E::BadInput { .. } | E::TooMany { .. } => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    refuse(status, err.to_string())
}

/// Runs a tracker call off the async threads (it may write its state file).
async fn tracker_call(
    work: impl FnOnce() -> Result<(), crate::TrackerError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(())) => Json(json!({ "ok": true })).into_response(),
        Ok(Err(err)) => tracker_error(err),
        Err(err) => refuse(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, crate::BusError> {
    serde_json::from_slice(body)
        .map_err(|err| crate::BusError::Invalid(format!("bad request body: {err}")))
}

/// A refusal or failure of the tracker, as `{"error": MESSAGE}`.
fn refuse(status: StatusCode, message: impl Into<String>) -> Response {
    super::error_response(status, Some("the tracker failed"), &message.into())
}

async fn register(State(tracker): State<SharedTracker>, body: axum::body::Bytes) -> Response {
    match parse::<crate::peer::RegisterRequest>(&body) {
        Ok(r) => tracker_call(move || tracker.register(&r.id, &r.addr)).await,
        Err(refused) => refused.into_response(),
    }
}

async fn heartbeat(State(tracker): State<SharedTracker>, body: axum::body::Bytes) -> Response {
    match parse::<crate::peer::HeartbeatRequest>(&body) {
        Ok(r) => match tracker.heartbeat(&r.id, r.load) {
            Ok(()) => Json(json!({ "ok": true })).into_response(),
            Err(err) => tracker_error(err),
        },
        Err(refused) => refused.into_response(),
    }
}

async fn announce(State(tracker): State<SharedTracker>, body: axum::body::Bytes) -> Response {
    match parse::<crate::peer::AnnounceRequest>(&body) {
        Ok(r) => {
            tracker_call(move || tracker.announce(&r.id, &r.dataset, &r.version, &r.paths)).await
        }
        Err(refused) => refused.into_response(),
    }
}

async fn withdraw(State(tracker): State<SharedTracker>, body: axum::body::Bytes) -> Response {
    match parse::<crate::peer::WithdrawRequest>(&body) {
        Ok(r) => {
            tracker_call(move || tracker.withdraw(&r.id, &r.dataset, &r.version, &r.path)).await
        }
        Err(refused) => refused.into_response(),
    }
}

async fn leave(State(tracker): State<SharedTracker>, body: axum::body::Bytes) -> Response {
    match parse::<crate::peer::LeaveRequest>(&body) {
        Ok(r) => tracker_call(move || tracker.leave(&r.id)).await,
        Err(refused) => refused.into_response(),
    }
}

async fn claim(State(tracker): State<SharedTracker>, body: axum::body::Bytes) -> Response {
    match parse::<crate::peer::ClaimRequest>(&body) {
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
) -> Json<Vec<crate::Availability>> {
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
) -> Json<Vec<crate::Agent>> {
    Json(tracker.holders(&query.dataset, &query.version, &query.path))
}

async fn fetchers(
    State(tracker): State<SharedTracker>,
    Query(query): Query<HoldersQuery>,
) -> Json<Vec<crate::Agent>> {
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
    work: impl FnOnce() -> Result<T, crate::TrackerError> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(answer)) => Json(answer).into_response(),
        Ok(Err(err)) => tracker_error(err),
        Err(err) => refuse(StatusCode::INTERNAL_SERVER_ERROR, err.to_string()),
    }
}

async fn write(State(tracker): State<SharedTracker>, body: axum::body::Bytes) -> Response {
    match parse::<crate::peer::WriteRequest>(&body) {
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
) -> Json<Option<crate::LineView>> {
    Json(tracker.line(&query.dataset, &query.path))
}

async fn shared(State(tracker): State<SharedTracker>, body: axum::body::Bytes) -> Response {
    match parse::<crate::peer::LineRequest>(&body) {
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
    match parse::<crate::peer::LineRequest>(&body) {
        Ok(r) => Json(tracker.begin_writeback(&r.id, &r.dataset, &r.path)).into_response(),
        Err(refused) => refused.into_response(),
    }
}

async fn end_writeback(State(tracker): State<SharedTracker>, body: axum::body::Bytes) -> Response {
    match parse::<crate::peer::LineRequest>(&body) {
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
) -> Json<Vec<crate::Line>> {
    Json(tracker.dirty(query.owner.as_deref(), query.dataset.as_deref()))
}
