//! The state bus: pages (create, query, update with JSON or binary deltas, delete), edges,
//! checkpoint and replay.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use vbus_state::{Delta, ElemType, Location, MergeOp, PageId, Rule, StateBus};

use super::{ApiError, ApiResult, AppState, DELTA_BODY_MAX_BYTES, JSON_BODY_MAX_BYTES, blocking};

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

pub(super) async fn create_page(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> ApiResult<Response> {
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

pub(super) async fn list_pages(
    State(state): State<Arc<AppState>>,
) -> ApiResult<Json<serde_json::Value>> {
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

pub(super) async fn query_page(
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

pub(super) async fn update_page(
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

pub(super) async fn delete_page(
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

pub(super) async fn add_edge(
    State(state): State<Arc<AppState>>,
    body: Body,
) -> ApiResult<Response> {
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

pub(super) async fn list_edges(
    State(state): State<Arc<AppState>>,
) -> ApiResult<Json<serde_json::Value>> {
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

pub(super) async fn remove_edge(
    State(state): State<Arc<AppState>>,
    Path((source, target)): Path<(String, String)>,
) -> ApiResult<Response> {
    let bus = bus(&state)?;
    let (source, target) = (page_id(&source)?, page_id(&target)?);
    let seq = blocking(move || Ok(bus.remove_edge(source, target)?)).await?;
    Ok(Json(json!({ "seq": seq })).into_response())
}

pub(super) async fn checkpoint(State(state): State<Arc<AppState>>) -> ApiResult<Response> {
    let bus = bus(&state)?;
    let seq = blocking(move || Ok(bus.checkpoint()?)).await?;
    Ok(Json(json!({ "seq": seq })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayQuery {
    to: u64,
}

pub(super) async fn replay(
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

pub(super) async fn replay_page(
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

/// The alphabet of base64 (RFC 4648), for `data_base64` in JSON deltas.
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
    }
}
