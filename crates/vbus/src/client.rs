//! The CLI's side of the HTTP API: `vbus put`, `get`, `rm`, `ls`, `stats`, `page ...`,
//! `checkpoint` and `replay` talk to a running daemon.
//!
//! The daemon's address is `--addr`, else `$VBUS_ADDR`, else the address the home's running
//! daemon recorded in `.vbus.addr` when it bound its port (a home with no daemon running is an
//! error, never a guess at a default port that another home's daemon may hold); the token is
//! `$VBUS_TOKEN`, else the home's `api.token`. A `--home` (or `$VBUS_HOME`) that does not exist is
//! an error.

use std::io::{Read, Write};

use anyhow::Context as _;
use serde_json::Value as Json;

use vbus_node::Home;

/// Bytes beyond which a transfer on a terminal shows its progress.
const PROGRESS_MIN_BYTES: u64 = 8 << 20;

/// A connection to a daemon.
#[derive(Debug)]
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// `dataset/path`, or a flat name in `default`.
pub fn split_key(key: &str) -> (&str, &str) {
    match key.split_once('/') {
        Some((dataset, path)) if !dataset.is_empty() && !path.is_empty() => (dataset, path),
        _ => (vbus_cache::DEFAULT_DATASET, key),
    }
}

/// Percent-encodes a path for a URL, keeping `/` between segments.
fn encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for byte in path.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(byte as char);
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// `/v1/objects/{dataset}`, the name percent-encoded.
pub fn objects_path(dataset: &str) -> String {
    format!("/v1/objects/{}", encode_path(dataset))
}

impl Client {
    /// A client for the daemon of `home` (or `addr`). `home_given`: the home was named by
    /// `--home` or `$VBUS_HOME`, so it must exist.
    pub fn new(home: &Home, home_given: bool, addr: Option<&str>) -> anyhow::Result<Self> {
        let root = home.root().display();
        if home_given && !home.root().is_dir() {
            anyhow::bail!(
                "the home {root} does not exist; `vbus --home {root} up` creates it and starts \
                 its daemon"
            );
        }
        let config = if home.config_path().is_file() {
            home.load_config()?
        } else {
            vbus_node::Config::default()
        };
        let addr = match addr.map(str::to_owned).or_else(|| {
            std::env::var("VBUS_ADDR")
                .ok()
                .filter(|addr| !addr.is_empty())
        }) {
            Some(addr) => addr,
            None => match home.running_daemon_addr()? {
                Some(addr) => addr,
                None if !home.root().is_dir() => anyhow::bail!(
                    "there is no home at {root} (pass --home, set $VBUS_HOME, or start one with \
                     `vbus up`), and no --addr or $VBUS_ADDR names a daemon"
                ),
                None => anyhow::bail!(
                    "no vbus daemon is running on the home {root}; start it with \
                     `vbus --home {root} up` (or name another daemon with --addr)"
                ),
            },
        };
        let token = std::env::var("VBUS_TOKEN").ok().or(config.api.token);
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let base = if addr.starts_with("http://") {
            addr
        } else {
            format!("http://{addr}")
        };
        Ok(Self { base, token, agent })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn object_url(&self, key: &str) -> String {
        let (dataset, path) = split_key(key);
        self.url(&format!(
            "/v1/objects/{}/{}",
            encode_path(dataset),
            encode_path(path)
        ))
    }

    fn auth<B>(&self, request: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.token {
            Some(token) => request.header("Authorization", format!("Bearer {token}")),
            None => request,
        }
    }

    fn unreachable(&self) -> impl FnOnce(ureq::Error) -> anyhow::Error + '_ {
        move |err| {
            anyhow::anyhow!(
                "cannot reach the daemon at {} ({err}); is `vbus up` running? (--addr, $VBUS_ADDR)",
                self.base
            )
        }
    }

    /// The JSON answer of a request, or the daemon's error message.
    fn json(&self, response: ureq::http::Response<ureq::Body>) -> anyhow::Result<Json> {
        let text = self
            .check(response)?
            .body_mut()
            .read_to_string()
            .context("cannot read the daemon's answer")?;
        if text.is_empty() {
            return Ok(Json::Null);
        }
        serde_json::from_str(&text).context("the daemon's answer is not JSON")
    }

    /// The response if it succeeded, else the daemon's error message.
    fn check(
        &self,
        mut response: ureq::http::Response<ureq::Body>,
    ) -> anyhow::Result<ureq::http::Response<ureq::Body>> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let message = serde_json::from_str::<Json>(&text)
            .ok()
            .and_then(|json| json["error"].as_str().map(str::to_owned))
            .unwrap_or(text);
        anyhow::bail!("the daemon answered {status}: {message}")
    }

    /// Stores `len` bytes from `reader` under `key`; returns the daemon's answer.
    pub fn put(&self, key: &str, reader: &mut dyn Read, len: Option<u64>) -> anyhow::Result<Json> {
        // The daemon refuses a bad key, a wrong token or a value too large for L3 before it reads
        // the body: waiting for its 100 Continue lets that answer arrive instead of a broken pipe.
        let mut request = self
            .auth(self.agent.put(&self.object_url(key)))
            .header("Expect", "100-continue");
        if let Some(len) = len {
            request = request.header("Content-Length", len.to_string());
        }
        let mut progress = Progress::new("put", key, len);
        let mut counted = CountingReader {
            inner: reader,
            progress: &mut progress,
        };
        let response = request
            .send(ureq::SendBody::from_reader(&mut counted))
            .map_err(self.unreachable())?;
        progress.finish();
        self.json(response)
    }

    /// Writes the value of `key` to `out`; returns its size.
    pub fn get(&self, key: &str, out: &mut dyn Write) -> anyhow::Result<u64> {
        let response = self
            .auth(self.agent.get(&self.object_url(key)))
            .call()
            .map_err(self.unreachable())?;
        let mut response = self.check(response)?;
        let len = response.body().content_length();
        let mut progress = Progress::new("get", key, len);
        let mut reader = response.body_mut().as_reader();
        let mut buffer = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = reader.read(&mut buffer).context("the transfer broke off")?;
            if n == 0 {
                break;
            }
            out.write_all(&buffer[..n])?;
            total += n as u64;
            progress.advance(n as u64);
        }
        progress.finish();
        out.flush()?;
        Ok(total)
    }

    /// Removes `key`.
    pub fn rm(&self, key: &str) -> anyhow::Result<()> {
        let response = self
            .auth(self.agent.delete(&self.object_url(key)))
            .call()
            .map_err(self.unreachable())?;
        self.check(response).map(|_| ())
    }

    /// GETs a JSON path.
    pub fn get_json(&self, path: &str) -> anyhow::Result<Json> {
        let response = self
            .auth(self.agent.get(&self.url(path)))
            .call()
            .map_err(self.unreachable())?;
        self.json(response)
    }

    /// POSTs JSON (or nothing) to a path.
    pub fn post_json(&self, path: &str, body: Option<&Json>) -> anyhow::Result<Json> {
        let request = self
            .auth(self.agent.post(&self.url(path)))
            .header("Content-Type", "application/json");
        let response = match body {
            Some(body) => request.send(body.to_string().as_bytes()),
            None => request.send_empty(),
        }
        .map_err(self.unreachable())?;
        self.json(response)
    }

    /// PATCHes a page with a binary delta.
    pub fn patch_delta(&self, page: u64, delta: &[u8]) -> anyhow::Result<Json> {
        let response = self
            .auth(self.agent.patch(&self.url(&format!("/v1/pages/{page}"))))
            .header("Content-Type", "application/octet-stream")
            .send(delta)
            .map_err(self.unreachable())?;
        self.json(response)
    }

    /// DELETEs a path, answering JSON.
    pub fn delete_json(&self, path: &str) -> anyhow::Result<Json> {
        let response = self
            .auth(self.agent.delete(&self.url(path)))
            .call()
            .map_err(self.unreachable())?;
        self.json(response)
    }

    /// The bytes and epoch of a page (at `seq` when given).
    pub fn page_bytes(&self, page: u64, seq: Option<u64>) -> anyhow::Result<(Vec<u8>, u64)> {
        let path = match seq {
            Some(seq) => format!("/v1/replay/{seq}/pages/{page}"),
            None => format!("/v1/pages/{page}"),
        };
        let response = self
            .auth(self.agent.get(&self.url(&path)))
            .call()
            .map_err(self.unreachable())?;
        let mut response = self.check(response)?;
        let epoch = response
            .headers()
            .get("x-vbus-epoch")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut bytes = Vec::new();
        response
            .body_mut()
            .as_reader()
            .read_to_end(&mut bytes)
            .context("the transfer broke off")?;
        Ok((bytes, epoch))
    }
}

/// Counts bytes read into a [`Progress`].
struct CountingReader<'a> {
    inner: &'a mut dyn Read,
    progress: &'a mut Progress,
}

impl Read for CountingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

impl Client {
    /// `POST /v1/sync/pull` for `dataset@version`; meanwhile, when stderr is a terminal, a
    /// progress line drawn from the pull's entry in `/v1/sync/status`.
    pub fn sync_pull(&self, dataset: &str, version: &str) -> anyhow::Result<Json> {
        let body = serde_json::json!({ "dataset": dataset, "version": version });
        std::thread::scope(|scope| {
            let pulling = scope.spawn(|| self.post_json("/v1/sync/pull", Some(&body)));
            let mut progress = Progress::new("pull", &format!("{dataset}@{version}"), None);
            while !pulling.is_finished() {
                std::thread::sleep(std::time::Duration::from_millis(200));
                let Ok(status) = self.get_json("/v1/sync/status") else {
                    continue;
                };
                let entry = status["pulls_in_progress"].as_array().and_then(|pulls| {
                    pulls.iter().find(|p| {
                        p["dataset"] == dataset
                            && (version == vbus_sync::LATEST || p["version"] == version)
                    })
                });
                if let Some(entry) = entry {
                    progress.set(
                        entry["bytes_done"].as_u64().unwrap_or(0),
                        entry["bytes"].as_u64().unwrap_or(0),
                    );
                }
            }
            progress.finish();
            pulling
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

/// A one-line progress display on stderr (`indicatif`), for transfers above
/// [`PROGRESS_MIN_BYTES`] when stderr is a terminal.
struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    fn new(verb: &str, key: &str, total: Option<u64>) -> Self {
        use std::io::IsTerminal as _;
        let shown = std::io::stderr().is_terminal()
            && total.is_none_or(|total| total >= PROGRESS_MIN_BYTES);
        let bar = match (shown, total) {
            (false, _) => indicatif::ProgressBar::hidden(),
            (true, Some(total)) => indicatif::ProgressBar::new(total),
            (true, None) => indicatif::ProgressBar::no_length(),
        };
        bar.set_style(Self::style(total.is_some()));
        bar.set_message(format!("{verb} {key}"));
        Self { bar }
    }

    /// The line: with a percentage when the total is known.
    fn style(with_total: bool) -> indicatif::ProgressStyle {
        let template = if with_total {
            "{msg}: {percent:>3}% {bytes} / {total_bytes}, {bytes_per_sec}"
        } else {
            "{msg}: {bytes}, {bytes_per_sec}"
        };
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    }

    /// Sets where a transfer measured elsewhere stands.
    fn set(&mut self, done: u64, total: u64) {
        if self.bar.length() != Some(total) {
            self.bar.set_length(total);
            self.bar.set_style(Self::style(true));
        }
        self.bar.set_position(done);
    }

    fn advance(&mut self, n: u64) {
        self.bar.inc(n);
    }

    /// Leaves the final line for a transfer large enough to have shown one.
    fn finish(&mut self) {
        if self.bar.position() >= PROGRESS_MIN_BYTES {
            self.bar.finish();
        } else {
            self.bar.finish_and_clear();
        }
    }
}
