//! The HTTP side of the BUS as an agent sees it: a [`TrackerClient`] (register, heartbeat,
//! announce, holders) and [`fetch_range`], which reads a byte range of a complete file from a
//! peer. Every request carries the cluster token; every answer is size-limited.
//!
//! The routes (served by `vbus tracker` and by every daemon):
//! - tracker: `POST /v1/tracker/{register,heartbeat,announce,withdraw,leave,claim}` (JSON
//!   bodies), `GET /v1/tracker/holders?dataset=&version=&path=`, `GET /v1/tracker/agents`,
//!   `GET /v1/tracker/availability?dataset=&version=`, `GET /v1/tracker/fetchers?…` (as
//!   `holders`); the coherence directory:
//!   `POST /v1/tracker/{write,shared,writeback/begin,writeback/end}` (`writeback/begin`
//!   answers `{"Ok": LINE}` or `{"Err": REFUSAL}`),
//!   `GET /v1/tracker/line?dataset=&path=`, `GET /v1/tracker/dirty?owner=&dataset=`;
//! - peer: `GET /v1/bus/files/{dataset}/{path}?blake3=HEX&offset=N&len=N`: the bytes, only when
//!   the peer holds that file with that hash.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tracker::{Agent, Availability};

/// The largest JSON answer read from a tracker.
const JSON_BYTES_MAX: u64 = 16 << 20;
/// How long a request may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a whole request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What a BUS request can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// No answer (refused, reset, timed out).
    #[error("{url}: {why}")]
    Unreachable {
        /// The request.
        url: String,
        /// The transport's error.
        why: String,
    },
    /// An answer other than success.
    #[error("{url}: HTTP {status}: {message}")]
    Refused {
        /// The request.
        url: String,
        /// The status.
        status: u16,
        /// The body, cut to 200 characters.
        message: String,
    },
    /// A success whose body was not what was asked for.
    #[error("{url}: bad answer: {why}")]
    BadAnswer {
        /// The request.
        url: String,
        /// What was wrong.
        why: String,
    },
}

impl PeerError {
    /// True when the tracker answered that the agent is unknown (it should register again).
    pub fn is_unknown_agent(&self) -> bool {
        matches!(self, Self::Refused { status: 404, message, .. } if message.contains("unknown agent"))
    }
}

/// Percent-encodes one query value or path, keeping `/` when `keep_slash`.
pub fn encode(value: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char);
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

fn base_url(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.trim_end_matches('/').to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// A shared HTTP client with the cluster token.
#[derive(Debug, Clone)]
pub struct Http {
    agent: ureq::Agent,
    token: Option<String>,
}

impl Http {
    /// A client sending `token` (when given) as a bearer token.
    pub fn new(token: Option<String>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .into();
        Self { agent, token }
    }

    fn auth<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    /// The body of a successful answer, at most `max_bytes`.
    fn body(
        url: &str,
        answer: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
        max_bytes: u64,
    ) -> Result<Vec<u8>, PeerError> {
        let mut response = answer.map_err(|err| PeerError::Unreachable {
            url: url.to_owned(),
            why: err.to_string(),
        })?;
        let status = response.status().as_u16();
        let body = response
            .body_mut()
            .with_config()
            .limit(max_bytes)
            .read_to_vec()
            .map_err(|err| PeerError::BadAnswer {
                url: url.to_owned(),
                why: err.to_string(),
            })?;
        if !(200..300).contains(&status) {
            return Err(PeerError::Refused {
                url: url.to_owned(),
                status,
                message: String::from_utf8_lossy(&body).chars().take(200).collect(),
            });
        }
        Ok(body)
    }

    fn get(&self, url: &str, max_bytes: u64) -> Result<Vec<u8>, PeerError> {
        Self::body(url, self.auth(self.agent.get(url)).call(), max_bytes)
    }

    fn post_json(&self, url: &str, body: &impl Serialize) -> Result<Vec<u8>, PeerError> {
        let text = serde_json::to_string(body).expect("requests serialise");
        let answer = self
            .auth(self.agent.post(url))
            .header("Content-Type", "application/json")
            .send(text.as_bytes());
        Self::body(url, answer, JSON_BYTES_MAX)
    }
}

/// `register`'s body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The agent's id.
    pub id: String,
    /// Where its peer API answers.
    pub addr: String,
}

/// `heartbeat`'s body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// The agent's id.
    pub id: String,
    /// Uploads it serves now.
    pub load: u32,
}

/// `announce`'s body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnnounceRequest {
    /// The agent's id.
    pub id: String,
    /// The dataset.
    pub dataset: String,
    /// Its version.
    pub version: String,
    /// The complete files it holds.
    pub paths: Vec<String>,
}

/// `withdraw`'s body: one file the agent no longer holds (or holds damaged).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WithdrawRequest {
    /// The agent whose copy is withdrawn.
    pub id: String,
    /// The dataset.
    pub dataset: String,
    /// Its version.
    pub version: String,
    /// The file.
    pub path: String,
}

/// `claim`'s body (one file the agent starts fetching): the fields of `withdraw`'s.
pub type ClaimRequest = WithdrawRequest;

/// `leave`'s body.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaveRequest {
    /// The agent's id.
    pub id: String,
}

/// `write`'s body: a new version of one file, written at agent `id`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteRequest {
    /// The writer.
    pub id: String,
    /// The dataset.
    pub dataset: String,
    /// The file.
    pub path: String,
    /// BLAKE3 (hex) of the new content.
    pub blake3: String,
    /// Its size.
    pub size_bytes: u64,
}

/// The body of `shared` (the agent holds `version` now) and of the write-back calls.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineRequest {
    /// The agent.
    pub id: String,
    /// The dataset.
    pub dataset: String,
    /// The file.
    pub path: String,
    /// The line's version (0 for `writeback/begin`, which takes the newest).
    #[serde(default)]
    pub version: u64,
    /// For `writeback/end`: whether the master now has that version whole.
    #[serde(default)]
    pub written: bool,
}

/// A tracker, as agents call it.
#[derive(Debug, Clone)]
pub struct TrackerClient {
    base: String,
    http: Http,
}

impl TrackerClient {
    /// The tracker at `addr` (`host:port` or a URL).
    pub fn new(addr: &str, http: Http) -> Self {
        Self {
            base: base_url(addr),
            http,
        }
    }

    /// Where it is.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn post(&self, route: &str, body: &impl Serialize) -> Result<(), PeerError> {
        self.http
            .post_json(&format!("{}/v1/tracker/{route}", self.base), body)
            .map(drop)
    }

    /// Registers `id` at `addr`.
    pub fn register(&self, id: &str, addr: &str) -> Result<(), PeerError> {
        self.post(
            "register",
            &RegisterRequest {
                id: id.to_owned(),
                addr: addr.to_owned(),
            },
        )
    }

    /// A heartbeat.
    pub fn heartbeat(&self, id: &str, load: u32) -> Result<(), PeerError> {
        self.post(
            "heartbeat",
            &HeartbeatRequest {
                id: id.to_owned(),
                load,
            },
        )
    }

    /// Announces complete files.
    pub fn announce(
        &self,
        id: &str,
        dataset: &str,
        version: &str,
        paths: Vec<String>,
    ) -> Result<(), PeerError> {
        self.post(
            "announce",
            &AnnounceRequest {
                id: id.to_owned(),
                dataset: dataset.to_owned(),
                version: version.to_owned(),
                paths,
            },
        )
    }

    /// Withdraws `id`'s copy of one file.
    pub fn withdraw(
        &self,
        id: &str,
        dataset: &str,
        version: &str,
        path: &str,
    ) -> Result<(), PeerError> {
        self.post_file("withdraw", id, dataset, version, path)
    }

    /// Says that `id` starts fetching one file.
    pub fn claim(
        &self,
        id: &str,
        dataset: &str,
        version: &str,
        path: &str,
    ) -> Result<(), PeerError> {
        self.post_file("claim", id, dataset, version, path)
    }

    /// A call about one file of one agent (`withdraw`, `claim`).
    fn post_file(
        &self,
        route: &str,
        id: &str,
        dataset: &str,
        version: &str,
        path: &str,
    ) -> Result<(), PeerError> {
        self.post(
            route,
            &WithdrawRequest {
                id: id.to_owned(),
                dataset: dataset.to_owned(),
                version: version.to_owned(),
                path: path.to_owned(),
            },
        )
    }

    /// A JSON call whose answer is wanted.
    fn call<T: serde::de::DeserializeOwned>(
        &self,
        route: &str,
        body: &impl Serialize,
    ) -> Result<T, PeerError> {
        let url = format!("{}/v1/tracker/{route}", self.base);
        let answer = self.http.post_json(&url, body)?;
        serde_json::from_slice(&answer).map_err(|err| PeerError::BadAnswer {
            url,
            why: err.to_string(),
        })
    }

    /// Orders a new version of `dataset/path` written at `id` (the directory's `write`).
    pub fn write(
        &self,
        id: &str,
        dataset: &str,
        path: &str,
        blake3: &str,
        size_bytes: u64,
    ) -> Result<crate::Line, PeerError> {
        self.call(
            "write",
            &WriteRequest {
                id: id.to_owned(),
                dataset: dataset.to_owned(),
                path: path.to_owned(),
                blake3: blake3.to_owned(),
                size_bytes,
            },
        )
    }

    /// The directory's line for `dataset/path` with the holders of its newest version; `None`
    /// when no write made one.
    pub fn line(&self, dataset: &str, path: &str) -> Result<Option<crate::LineView>, PeerError> {
        self.get_json(&format!(
            "{}/v1/tracker/line?dataset={}&path={}",
            self.base,
            encode(dataset, false),
            encode(path, false)
        ))
    }

    fn line_call<T: serde::de::DeserializeOwned>(
        &self,
        route: &str,
        id: &str,
        line: &crate::Line,
        written: bool,
    ) -> Result<T, PeerError> {
        self.call(
            route,
            &LineRequest {
                id: id.to_owned(),
                dataset: line.dataset.clone(),
                path: line.path.clone(),
                version: line.version,
                written,
            },
        )
    }

    /// `id` holds `line`'s version now; whether it is still the newest.
    pub fn shared(&self, id: &str, line: &crate::Line) -> Result<bool, PeerError> {
        self.line_call("shared", id, line, false)
    }

    /// Starts a write-back of the newest version of `dataset/path`: the line as leased, or why
    /// not (clean already, or another write-back runs).
    pub fn begin_writeback(
        &self,
        id: &str,
        dataset: &str,
        path: &str,
    ) -> Result<Result<crate::Line, crate::coherence::WritebackRefused>, PeerError> {
        self.call(
            "writeback/begin",
            &LineRequest {
                id: id.to_owned(),
                dataset: dataset.to_owned(),
                path: path.to_owned(),
                version: 0,
                written: false,
            },
        )
    }

    /// Ends a write-back of `line` (`written`: the master has it whole); whether the line is
    /// clean now.
    pub fn end_writeback(
        &self,
        id: &str,
        line: &crate::Line,
        written: bool,
    ) -> Result<bool, PeerError> {
        self.line_call("writeback/end", id, line, written)
    }

    /// The dirty lines owned by `owner`, or of `dataset`.
    pub fn dirty(
        &self,
        owner: Option<&str>,
        dataset: Option<&str>,
    ) -> Result<Vec<crate::Line>, PeerError> {
        let mut url = format!("{}/v1/tracker/dirty?", self.base);
        if let Some(owner) = owner {
            url.push_str(&format!("owner={}&", encode(owner, false)));
        }
        if let Some(dataset) = dataset {
            url.push_str(&format!("dataset={}", encode(dataset, false)));
        }
        self.get_json(&url)
    }

    /// Holders and fetchers of every file of a version someone holds or fetches.
    pub fn availability(
        &self,
        dataset: &str,
        version: &str,
    ) -> Result<Vec<Availability>, PeerError> {
        self.get_json(&format!(
            "{}/v1/tracker/availability?dataset={}&version={}",
            self.base,
            encode(dataset, false),
            encode(version, false)
        ))
    }

    /// A JSON answer of the tracker.
    fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, PeerError> {
        let body = self.http.get(url, JSON_BYTES_MAX)?;
        serde_json::from_slice(&body).map_err(|err| PeerError::BadAnswer {
            url: url.to_owned(),
            why: err.to_string(),
        })
    }

    /// Leaves the cluster.
    pub fn leave(&self, id: &str) -> Result<(), PeerError> {
        self.post("leave", &LeaveRequest { id: id.to_owned() })
    }

    /// The live agents fetching a file now, least loaded first.
    pub fn fetchers(
        &self,
        dataset: &str,
        version: &str,
        path: &str,
    ) -> Result<Vec<Agent>, PeerError> {
        self.agents_of("fetchers", dataset, version, path)
    }

    /// The live holders of a file, least loaded first.
    pub fn holders(
        &self,
        dataset: &str,
        version: &str,
        path: &str,
    ) -> Result<Vec<Agent>, PeerError> {
        self.agents_of("holders", dataset, version, path)
    }

    /// A list of agents about one file (`holders`, `fetchers`).
    fn agents_of(
        &self,
        route: &str,
        dataset: &str,
        version: &str,
        path: &str,
    ) -> Result<Vec<Agent>, PeerError> {
        self.get_json(&format!(
            "{}/v1/tracker/{route}?dataset={}&version={}&path={}",
            self.base,
            encode(dataset, false),
            encode(version, false),
            encode(path, false)
        ))
    }
}

/// The manifest of `dataset@version` as the peer at `addr` recorded it, checked: its dataset
/// and its content's version must be the ones asked for (so a peer cannot pass off other files).
pub fn fetch_manifest(
    http: &Http,
    addr: &str,
    dataset: &str,
    version: &str,
) -> Result<crate::Manifest, PeerError> {
    let url = format!(
        "{}/v1/bus/manifests/{}/{}",
        base_url(addr),
        encode(dataset, false),
        encode(version, false)
    );
    let body = http.get(&url, JSON_BYTES_MAX)?;
    let bad = |why: String| PeerError::BadAnswer {
        url: url.clone(),
        why,
    };
    let text = String::from_utf8(body).map_err(|err| bad(err.to_string()))?;
    let manifest = crate::Manifest::from_json(&text).map_err(|err| bad(err.to_string()))?;
    let actual = crate::origin::content_version(&manifest);
    if manifest.dataset != dataset || manifest.version != version || actual != version {
        return Err(bad(format!(
            "a manifest of {}@{} whose content is version {actual}",
            manifest.dataset, manifest.version
        )));
    }
    Ok(manifest)
}

/// The status a peer answers for a range of a file it is still fetching, before the pieces the
/// range touches are there (425 Too Early).
pub const NOT_YET: u16 = 425;

/// Reads `len` bytes at `offset` of `dataset/path` from the peer at `addr`, which serves them
/// only if it holds the file with hash `blake3`, whole or (the pieces it has verified) in
/// flight; [`NOT_YET`] otherwise while in flight. The caller verifies the bytes.
pub fn fetch_range(
    http: &Http,
    addr: &str,
    dataset: &str,
    path: &str,
    blake3: &str,
    offset: u64,
    len: u64,
) -> Result<Vec<u8>, PeerError> {
    let url = format!(
        "{}/v1/bus/files/{}/{}?blake3={}&offset={offset}&len={len}",
        base_url(addr),
        encode(dataset, false),
        encode(path, true),
        encode(blake3, false)
    );
    let body = http.get(&url, len)?;
    if body.len() as u64 != len {
        return Err(PeerError::BadAnswer {
            url,
            why: format!("{} bytes, asked for {len}", body.len()),
        });
    }
    Ok(body)
}
