//! [`Directory`]: the cluster's directory as the agent and the swarm see it, one method per
//! tracker operation. The embedded [`Tracker`] implements it in process, and [`TrackerClient`]
//! over HTTP against a tracker serving [`crate::serve::tracker`] (whose routes are these same
//! operations, with the request types of [`crate::peer`]).
//!
//! The operations are shaped for a replicated back end such as etcd as well: membership is a
//! registration renewed by heartbeats (a lease that lapses when they stop); holdings and claims
//! are keys per file; a coherent write is a transaction that orders the line's next version, and
//! `shared` and `end_writeback` name the version they saw, so a back end can refuse a stale one
//! (a compare-and-set on the line's version); a write-back is leased by `begin_writeback` until
//! `end_writeback`. An agent learns of invalidations by asking for a line before it reads
//! ([`Directory::line`]); a back end that can push them (watches) may serve those reads from a
//! cache it keeps current.

use crate::coherence::WritebackRefused;
use crate::peer::PeerError;
use crate::tracker::{Agent, Availability, LineView, Tracker, TrackerError};
use crate::{Line, TrackerClient};

/// What a directory operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// A remote directory did not answer, or refused.
    #[error(transparent)]
    Remote(#[from] PeerError),
    /// The embedded directory refused or failed.
    #[error(transparent)]
    Local(#[from] TrackerError),
}

impl DirectoryError {
    /// True when the directory does not know the agent (it must register again: the directory
    /// restarted, or the agent's registration lapsed).
    pub fn is_unknown_agent(&self) -> bool {
        match self {
            Self::Remote(err) => err.is_unknown_agent(),
            Self::Local(err) => matches!(err, TrackerError::UnknownAgent(_)),
        }
    }
}

/// `Result` of a directory operation.
pub type DirectoryResult<T> = Result<T, DirectoryError>;

/// The cluster's directory: agents, what they hold, and the MESI lines.
pub trait Directory: Send + Sync + std::fmt::Debug {
    /// Where the directory is, for status pages and logs.
    fn describe(&self) -> String;

    /// Registers agent `id`, reachable at `addr` (again, after a restart of either).
    fn register(&self, id: &str, addr: &str) -> DirectoryResult<()>;
    /// Renews `id`'s registration and reports its upload load.
    fn heartbeat(&self, id: &str, load: u32) -> DirectoryResult<()>;
    /// Removes `id` and everything it holds.
    fn leave(&self, id: &str) -> DirectoryResult<()>;

    /// `id` holds `paths` of `dataset@version` whole.
    fn announce(
        &self,
        id: &str,
        dataset: &str,
        version: &str,
        paths: Vec<String>,
    ) -> DirectoryResult<()>;
    /// `id` no longer holds `path` of `dataset@version`.
    fn withdraw(&self, id: &str, dataset: &str, version: &str, path: &str) -> DirectoryResult<()>;
    /// `id` is fetching `path` of `dataset@version` (peers may take its verified pieces).
    fn claim(&self, id: &str, dataset: &str, version: &str, path: &str) -> DirectoryResult<()>;
    /// How many live agents hold each file of `dataset@version`.
    fn availability(&self, dataset: &str, version: &str) -> DirectoryResult<Vec<Availability>>;
    /// The live agents holding a file, least loaded first.
    fn holders(&self, dataset: &str, version: &str, path: &str) -> DirectoryResult<Vec<Agent>>;
    /// The live agents fetching a file now, least loaded first.
    fn fetchers(&self, dataset: &str, version: &str, path: &str) -> DirectoryResult<Vec<Agent>>;

    /// Orders a write of `dataset/path` (content `blake3`, `size_bytes`) by `id`: the line's
    /// next version, `id` its Modified owner, every other holder Invalid.
    fn write(
        &self,
        id: &str,
        dataset: &str,
        path: &str,
        blake3: &str,
        size_bytes: u64,
    ) -> DirectoryResult<Line>;
    /// The line of `dataset/path` and the agents holding its newest version; `None` when no
    /// ordered write touched it.
    fn line(&self, dataset: &str, path: &str) -> DirectoryResult<Option<LineView>>;
    /// `id` holds `line`'s version now (Shared); false when a newer version was ordered since.
    fn shared(&self, id: &str, line: &Line) -> DirectoryResult<bool>;
    /// Leases the write-back of `dataset/path`'s newest version to `id`; the refusal says why
    /// not (clean already, or another write-back runs).
    fn begin_writeback(
        &self,
        id: &str,
        dataset: &str,
        path: &str,
    ) -> DirectoryResult<Result<Line, WritebackRefused>>;
    /// Ends the write-back of `line`'s version (`written`: the master has it); whether the line
    /// is clean now.
    fn end_writeback(&self, id: &str, line: &Line, written: bool) -> DirectoryResult<bool>;
    /// The Modified lines, of one owner or of one dataset, or all.
    fn dirty(&self, owner: Option<&str>, dataset: Option<&str>) -> DirectoryResult<Vec<Line>>;
}

impl Directory for TrackerClient {
    fn describe(&self) -> String {
        self.base().to_owned()
    }
    fn register(&self, id: &str, addr: &str) -> DirectoryResult<()> {
        Ok(TrackerClient::register(self, id, addr)?)
    }
    fn heartbeat(&self, id: &str, load: u32) -> DirectoryResult<()> {
        Ok(TrackerClient::heartbeat(self, id, load)?)
    }
    fn leave(&self, id: &str) -> DirectoryResult<()> {
        Ok(TrackerClient::leave(self, id)?)
    }
    fn announce(
        &self,
        id: &str,
        dataset: &str,
        version: &str,
        paths: Vec<String>,
    ) -> DirectoryResult<()> {
        Ok(TrackerClient::announce(self, id, dataset, version, paths)?)
    }
    fn withdraw(&self, id: &str, dataset: &str, version: &str, path: &str) -> DirectoryResult<()> {
        Ok(TrackerClient::withdraw(self, id, dataset, version, path)?)
    }
    fn claim(&self, id: &str, dataset: &str, version: &str, path: &str) -> DirectoryResult<()> {
        Ok(TrackerClient::claim(self, id, dataset, version, path)?)
    }
    fn availability(&self, dataset: &str, version: &str) -> DirectoryResult<Vec<Availability>> {
        Ok(TrackerClient::availability(self, dataset, version)?)
    }
    fn holders(&self, dataset: &str, version: &str, path: &str) -> DirectoryResult<Vec<Agent>> {
        Ok(TrackerClient::holders(self, dataset, version, path)?)
    }
    fn fetchers(&self, dataset: &str, version: &str, path: &str) -> DirectoryResult<Vec<Agent>> {
        Ok(TrackerClient::fetchers(self, dataset, version, path)?)
    }
    fn write(
        &self,
        id: &str,
        dataset: &str,
        path: &str,
        blake3: &str,
        size_bytes: u64,
    ) -> DirectoryResult<Line> {
        Ok(TrackerClient::write(
            self, id, dataset, path, blake3, size_bytes,
        )?)
    }
    fn line(&self, dataset: &str, path: &str) -> DirectoryResult<Option<LineView>> {
        Ok(TrackerClient::line(self, dataset, path)?)
    }
    fn shared(&self, id: &str, line: &Line) -> DirectoryResult<bool> {
        Ok(TrackerClient::shared(self, id, line)?)
    }
    fn begin_writeback(
        &self,
        id: &str,
        dataset: &str,
        path: &str,
    ) -> DirectoryResult<Result<Line, WritebackRefused>> {
        Ok(TrackerClient::begin_writeback(self, id, dataset, path)?)
    }
    fn end_writeback(&self, id: &str, line: &Line, written: bool) -> DirectoryResult<bool> {
        Ok(TrackerClient::end_writeback(self, id, line, written)?)
    }
    fn dirty(&self, owner: Option<&str>, dataset: Option<&str>) -> DirectoryResult<Vec<Line>> {
        Ok(TrackerClient::dirty(self, owner, dataset)?)
    }
}

impl Directory for Tracker {
    fn describe(&self) -> String {
        "the embedded tracker".to_owned()
    }
    fn register(&self, id: &str, addr: &str) -> DirectoryResult<()> {
        Ok(Tracker::register(self, id, addr)?)
    }
    fn heartbeat(&self, id: &str, load: u32) -> DirectoryResult<()> {
        Ok(Tracker::heartbeat(self, id, load)?)
    }
    fn leave(&self, id: &str) -> DirectoryResult<()> {
        Ok(Tracker::leave(self, id)?)
    }
    fn announce(
        &self,
        id: &str,
        dataset: &str,
        version: &str,
        paths: Vec<String>,
    ) -> DirectoryResult<()> {
        Ok(Tracker::announce(self, id, dataset, version, &paths)?)
    }
    fn withdraw(&self, id: &str, dataset: &str, version: &str, path: &str) -> DirectoryResult<()> {
        Ok(Tracker::withdraw(self, id, dataset, version, path)?)
    }
    fn claim(&self, id: &str, dataset: &str, version: &str, path: &str) -> DirectoryResult<()> {
        Ok(Tracker::claim(self, id, dataset, version, path)?)
    }
    fn availability(&self, dataset: &str, version: &str) -> DirectoryResult<Vec<Availability>> {
        Ok(Tracker::availability(self, dataset, version))
    }
    fn holders(&self, dataset: &str, version: &str, path: &str) -> DirectoryResult<Vec<Agent>> {
        Ok(Tracker::holders(self, dataset, version, path))
    }
    fn fetchers(&self, dataset: &str, version: &str, path: &str) -> DirectoryResult<Vec<Agent>> {
        Ok(Tracker::fetchers(self, dataset, version, path))
    }
    fn write(
        &self,
        id: &str,
        dataset: &str,
        path: &str,
        blake3: &str,
        size_bytes: u64,
    ) -> DirectoryResult<Line> {
        Ok(Tracker::write(self, id, dataset, path, blake3, size_bytes)?)
    }
    fn line(&self, dataset: &str, path: &str) -> DirectoryResult<Option<LineView>> {
        Ok(Tracker::line(self, dataset, path))
    }
    fn shared(&self, id: &str, line: &Line) -> DirectoryResult<bool> {
        Ok(Tracker::shared(
            self,
            id,
            &line.dataset,
            &line.path,
            line.version,
        )?)
    }
    fn begin_writeback(
        &self,
        id: &str,
        dataset: &str,
        path: &str,
    ) -> DirectoryResult<Result<Line, WritebackRefused>> {
        Ok(Tracker::begin_writeback(self, id, dataset, path))
    }
    fn end_writeback(&self, id: &str, line: &Line, written: bool) -> DirectoryResult<bool> {
        Ok(Tracker::end_writeback(
            self,
            id,
            &line.dataset,
            &line.path,
            line.version,
            written,
        )?)
    }
    fn dirty(&self, owner: Option<&str>, dataset: Option<&str>) -> DirectoryResult<Vec<Line>> {
        Ok(Tracker::dirty(self, owner, dataset))
    }
}
