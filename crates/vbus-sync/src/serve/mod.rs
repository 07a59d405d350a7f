//! The BUS over HTTP, server side: the peer's routes ([`peer`]: byte ranges and manifests of the
//! files an agent holds) and the tracker's ([`tracker`]), each beside its client
//! ([`crate::peer`]), and how a [`BusError`] is answered.
//!
//! Every refusal is `{"error": MESSAGE}` with its status. A failure on this side (5xx) is logged
//! with its detail and a request id, and the body names what failed and the id, never the
//! internal error's text.

pub mod peer;
pub mod tracker;

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Json;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::{BusError, ErrorKind};

/// The HTTP status of each kind of error.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::NoCluster => StatusCode::FORBIDDEN,
        ErrorKind::Unauthorised => StatusCode::UNAUTHORIZED,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::PastTheEnd => StatusCode::RANGE_NOT_SATISFIABLE,
        ErrorKind::NotYet => {
            StatusCode::from_u16(crate::peer::NOT_YET).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
        }
        ErrorKind::Upstream => StatusCode::BAD_GATEWAY,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for BusError {
    fn into_response(self) -> Response {
        let status = status_of(self.kind());
        let what = match &self {
            // A damaged copy names the user's file, not the daemon's internals.
            BusError::Store(
                vbus_store::Error::ChecksumMismatch { .. } | vbus_store::Error::Damaged { .. },
            ) => None,
            BusError::Store(_) => Some("the L3 store failed"),
            BusError::Cache(_) => Some("the cache failed"),
            BusError::State { .. } => Some("the agent's state files failed"),
            _ => Some("the request failed"),
        };
        error_response(status, what, &self.to_string())
    }
}

/// A request id: unique within this process, distinct across restarts.
pub fn request_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| fastrand::u64(..) & 0xffff_ffff_0000_0000);
    format!("{:016x}", start | NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The answer to a failed request: `{"error": message}`. A 500 with `what` answers what failed
/// and a request id instead of `message`, which goes to the log with the id; a 500 without
/// `what` (damaged data: the message names the file and offset, not the daemon's internals) and
/// other 5xx (an unreachable directory, master or peer) keep their message, which says what to
/// fix, and add the id.
pub fn error_response(status: StatusCode, what: Option<&str>, message: &str) -> Response {
    if !status.is_server_error() {
        return (status, Json(serde_json::json!({ "error": message }))).into_response();
    }
    let id = request_id();
    tracing::error!(status = %status, request_id = %id, error = %message, "request failed");
    (status, Json(server_error_body(status, what, message, &id))).into_response()
}

/// The body of a 5xx answer (see [`error_response`]).
fn server_error_body(
    status: StatusCode,
    what: Option<&str>,
    message: &str,
    id: &str,
) -> serde_json::Value {
    let shown = match what {
        Some(what) if status == StatusCode::INTERNAL_SERVER_ERROR => {
            format!("{what}; the daemon's log has the detail under request id {id}")
        }
        _ => message.to_owned(),
    };
    serde_json::json!({ "error": shown, "request_id": id })
}

/// The token of an `Authorization: Bearer TOKEN` header, if any (the scheme's name is
/// case-insensitive, RFC 9110 11.1).
pub fn bearer(request: &Request) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start_matches(' '))
}

/// Whether `request` presents `token` as its bearer token (compared in constant time).
pub fn presents(request: &Request, token: &str) -> bool {
    bearer(request)
        .is_some_and(|presented| constant_time_eq(presented.as_bytes(), token.as_bytes()))
}

/// Equality in time that depends only on the lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_failure_shows_a_request_id_not_its_detail() {
        let body = server_error_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("the L3 store failed"),
            "open /secret/path: permission denied",
            "00000000000000aa",
        );
        let shown = body["error"].as_str().unwrap();
        assert!(shown.starts_with("the L3 store failed"), "{shown}");
        assert!(
            shown.contains("00000000000000aa") && !shown.contains("/secret"),
            "{shown}"
        );
        assert_eq!(body["request_id"], "00000000000000aa");
        let body = server_error_body(
            StatusCode::BAD_GATEWAY,
            Some("x"),
            "the master is down",
            "1",
        );
        assert_eq!(body["error"], "the master is down");
        let body = server_error_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            "the log is damaged at 00000000000000000001.seg offset 96",
            "2",
        );
        assert_eq!(
            body["error"],
            "the log is damaged at 00000000000000000001.seg offset 96"
        );
        let unavailable = BusError::Unavailable("the directory is down".into()).into_response();
        assert_eq!(unavailable.status(), StatusCode::SERVICE_UNAVAILABLE);
        let a = request_id();
        let b = request_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive_and_compared_whole() {
        let request = Request::builder()
            .header(header::AUTHORIZATION, "bEaReR  secret")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(bearer(&request), Some("secret"));
        assert!(presents(&request, "secret"));
        assert!(!presents(&request, "secre"));
        assert!(constant_time_eq(b"", b""));
    }
}
