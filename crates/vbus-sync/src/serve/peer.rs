//! The peer's routes: byte ranges and manifests of the complete files an agent holds, served to
//! peers that present the cluster token, counted (the load the agent reports to the tracker) and
//! paced by the upload limit. The client side is [`crate::peer::fetch_range`].

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::error::BusError;

/// The largest byte range a peer serves in one request.
pub const RANGE_BYTES_MAX: u64 = crate::manifest::PIECE_BYTES_MAX;

/// Byte ranges of the complete files of one store, served to peers that present the cluster
/// token, counted (the load reported to the tracker) and paced by the upload limit.
#[derive(Debug)]
pub struct PeerFiles {
    store: vbus_store::FileStore,
    /// Files in flight, whose verified pieces are served too.
    staging: Option<Arc<crate::Interconnect>>,
    /// Where the manifests of held versions are kept (`None`: none served).
    manifests_dir: Option<PathBuf>,
    token: Option<String>,
    /// Ranges being served now.
    uploads: AtomicU32,
    upload: Option<crate::RateLimiter>,
}

impl PeerFiles {
    /// Serves `store` (and, with `staging`, the verified pieces of files in flight).
    pub fn new(
        store: vbus_store::FileStore,
        staging: Option<Arc<crate::Interconnect>>,
        manifests_dir: Option<PathBuf>,
        token: Option<String>,
        upload_bytes_per_second: u64,
    ) -> Self {
        Self {
            store,
            staging,
            manifests_dir,
            token,
            uploads: AtomicU32::new(0),
            upload: crate::RateLimiter::new(upload_bytes_per_second),
        }
    }

    /// Where the manifests of held versions are kept.
    pub(crate) fn manifests_dir(&self) -> Option<&std::path::Path> {
        self.manifests_dir.as_deref()
    }

    /// Ranges being served now (the load reported to the tracker).
    pub fn uploads_now(&self) -> u32 {
        self.uploads.load(Ordering::Relaxed)
    }

    /// Checks the cluster token of a request.
    pub fn authorise(&self, request: &Request) -> Result<(), BusError> {
        authorise_peer(self.token.as_deref(), request)
    }

    /// `len` bytes at `offset` of `dataset/path`, if held with hash `blake3`, whole or (the
    /// verified pieces the range touches) in flight; 425 while those pieces are not there yet.
    fn read_range(
        &self,
        dataset: &str,
        path: &str,
        query: &RangeQuery,
    ) -> Result<Vec<u8>, BusError> {
        if query.len > RANGE_BYTES_MAX {
            return Err(BusError::Invalid(format!(
                "len {} is over {RANGE_BYTES_MAX}",
                query.len
            )));
        }
        self.uploads.fetch_add(1, Ordering::Relaxed);
        let _upload = Upload(&self.uploads);
        let not_held =
            || BusError::NotFound(format!("{dataset}/{path} is not held here with that hash"));
        // A copy that failed its checksum was quarantined: the error's kind is "not found".
        let held = self
            .store
            .file_reader(dataset, path)?
            .filter(|r| r.meta().hash_hex().as_deref() == Some(query.blake3.as_str()));
        let Some(mut reader) = held else {
            let Some(staging) = &self.staging else {
                return Err(not_held());
            };
            vbus_store::validate_dataset(dataset)?;
            return match staging.read_in_flight(dataset, &query.blake3, query.offset, query.len) {
                Ok(crate::staging::InFlight::Bytes(bytes)) => {
                    crate::rate::acquire(self.upload.as_ref(), query.len);
                    Ok(bytes)
                }
                Ok(crate::staging::InFlight::NotYet) => Err(BusError::NotYet {
                    dataset: dataset.to_owned(),
                    path: path.to_owned(),
                }),
                Ok(crate::staging::InFlight::Absent) => Err(not_held()),
                Err(err) => Err(BusError::Manifest(err)),
            };
        };
        let meta = reader.meta().clone();
        if query.offset.saturating_add(query.len) > meta.size_bytes {
            return Err(BusError::PastTheEnd {
                offset: query.offset,
                len: query.len,
                size_bytes: meta.size_bytes,
            });
        }
        crate::rate::acquire(self.upload.as_ref(), query.len);
        let mut bytes = Vec::with_capacity(query.len as usize);
        let read = reader
            .seek(SeekFrom::Start(query.offset))
            .and_then(|_| (&mut reader).take(query.len).read_to_end(&mut bytes));
        match read {
            Ok(n) if n as u64 == query.len => Ok(bytes),
            Ok(n) => Err(BusError::Internal(format!(
                "{dataset}/{path}: read {n} of {} bytes",
                query.len
            ))),
            Err(err) => Err(BusError::Internal(format!("{dataset}/{path}: {err}"))),
        }
    }

    /// The recorded manifest of `dataset@version`, as JSON.
    fn manifest(&self, dataset: &str, version: &str) -> Result<String, BusError> {
        vbus_store::validate_dataset(dataset)?;
        if version.is_empty()
            || version.len() > 64
            || !version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(BusError::Invalid(format!("bad version {version:?}")));
        }
        let not_held = || BusError::NotFound(format!("no manifest of {dataset}@{version} here"));
        let dir = self.manifests_dir.as_ref().ok_or_else(not_held)?;
        std::fs::read_to_string(dir.join(format!("{dataset}@{version}.json")))
            .map_err(|_| not_held())
    }

    /// Answers a range request off the async threads.
    async fn respond(
        self: Arc<Self>,
        dataset: String,
        path: String,
        query: RangeQuery,
    ) -> Response {
        let work = move || self.read_range(&dataset, &path, &query);
        match tokio::task::spawn_blocking(work).await {
            Ok(Ok(bytes)) => bytes.into_response(),
            Ok(Err(refused)) => refused.into_response(),
            Err(err) => BusError::Internal(format!("a range task failed: {err}")).into_response(),
        }
    }
}

/// The peer routes (`/v1/bus/…`: byte ranges and manifests of `peer`), behind the cluster token
/// rather than `api.token`; without a cluster token every request is refused (403). The daemon
/// merges it beside its API, and `vbus-bench sync` serves it for each in-process agent.
pub fn peer_router(peer: Arc<PeerFiles>) -> Router {
    async fn range(
        State(peer): State<Arc<PeerFiles>>,
        Path((dataset, path)): Path<(String, String)>,
        Query(query): Query<RangeQuery>,
    ) -> Response {
        peer.respond(dataset, path, query).await
    }
    async fn manifest(
        State(peer): State<Arc<PeerFiles>>,
        Path((dataset, version)): Path<(String, String)>,
    ) -> Response {
        match tokio::task::spawn_blocking(move || peer.manifest(&dataset, &version)).await {
            Ok(Ok(json)) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
            Ok(Err(refused)) => refused.into_response(),
            Err(err) => {
                BusError::Internal(format!("a manifest task failed: {err}")).into_response()
            }
        }
    }
    async fn auth(State(peer): State<Arc<PeerFiles>>, request: Request, next: Next) -> Response {
        match peer.authorise(&request) {
            Ok(()) => next.run(request).await,
            Err(refused) => refused.into_response(),
        }
    }
    Router::new()
        .route("/v1/bus/files/{dataset}/{*path}", get(range))
        .route("/v1/bus/manifests/{dataset}/{version}", get(manifest))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&peer),
            auth,
        ))
        .with_state(peer)
}

/// Checks a peer request's bearer token against `token`; refused (403) without one.
fn authorise_peer(token: Option<&str>, request: &Request) -> Result<(), BusError> {
    let Some(token) = token else {
        return Err(BusError::NoCluster);
    };
    if super::presents(request, token) {
        Ok(())
    } else {
        Err(BusError::Unauthorised)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RangeQuery {
    blake3: String,
    offset: u64,
    len: u64,
}

/// Counts an upload for as long as it lives.
struct Upload<'a>(&'a AtomicU32);

impl Drop for Upload<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
