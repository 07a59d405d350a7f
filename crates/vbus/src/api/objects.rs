//! Objects: listings, `GET` (streamed from L3 beyond 64 MiB, `Range` supported), `HEAD`, `PUT`
//! (small bodies whole, larger ones streamed into a staged L3 file) and `DELETE`.

use std::io::{Read as _, Seek as _, SeekFrom};
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde_json::json;
use vbus_cache::{CacheKey, Found};

use super::{
    ApiError, ApiResult, AppState, SMALL_PUT_BYTES, STREAM_CHUNK_BYTES, STREAM_CHUNKS_IN_FLIGHT,
    blocking,
};

fn key(dataset: &str, path: &str) -> ApiResult<CacheKey> {
    // The store validates names too; refusing here keeps errors uniform and early.
    vbus_store::validate_dataset(dataset)?;
    vbus_store::validate_path(path)?;
    Ok(CacheKey::new(dataset, path))
}

pub(super) async fn list_datasets(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "datasets": state.cache().store().datasets() }))
}

pub(super) async fn list_objects(
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

pub(super) async fn get_object(
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

pub(super) async fn head_object(
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

pub(super) async fn put_object(
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

pub(super) async fn delete_object(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
