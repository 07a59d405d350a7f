//! The BUS: the tracker (controller), agents, piece transfer with verification, origins (local
//! directory, S3-compatible), the MESI coherence directory and rate limits.
//!
//! [`manifest`] describes a dataset version that every transfer is checked against (files,
//! sizes, BLAKE3 roots, pieces and their hashes); [`origin`] is the master store (a local
//! directory, or an S3-compatible bucket through [`s3`]) with recorded versions; [`tracker`] is
//! the controller's state (agents, liveness, who holds which complete file) and [`coherence`]
//! the MESI directory it keeps; [`peer`] is the HTTP client side (tracker calls, byte ranges
//! from peers) and [`serve`] the server side (the peer's and the tracker's routes); [`swarm`]
//! pulls from peers with per-piece verification and fallback to the origin, through
//! [`staging`] (pieces served while a file is in flight, resumable pulls). [`agent`] is a node's
//! side of the cluster (pulls, pushes, MESI reads and writes, write-backs, [`repos`]), and
//! [`cache_source`] the cache's source of last resort.

#![forbid(unsafe_code)]

pub mod agent;
pub mod cache_source;
pub mod coherence;
pub mod directory;
pub mod error;
pub mod manifest;
pub mod origin;
pub mod peer;
pub mod rate;
pub mod repos;
pub mod s3;
pub mod serve;
pub mod staging;
pub mod swarm;
pub mod tracker;

pub use agent::{AgentOptions, AgentStatus, BusAgent, PullSummary, PushSummary};
pub use cache_source::BusSource;
pub use coherence::{Line, LineState};
pub use directory::{Directory, DirectoryError};
pub use error::{BusError, ErrorKind};
pub use manifest::{FileEntry, Manifest, ManifestError, PIECE_BYTES_DEFAULT};
pub use origin::{LATEST, Object, Origin, PullError, PullReport, content_version, pull};
pub use peer::{Http, PeerError, TrackerClient};
pub use rate::RateLimiter;
pub use s3::S3Options;
pub use staging::Interconnect;
pub use swarm::{Sink, Swarm, SwarmReport, fetch_file_bytes, manifest_from_peers, pull_swarm};
pub use tracker::{Agent, Availability, LineView, Tracker, TrackerError};

/// `dataset` or `dataset@version` as (dataset, version); the version is [`LATEST`] when none is
/// named.
pub fn split_version(spec: &str) -> (&str, &str) {
    match spec.split_once('@') {
        Some((dataset, version)) => (dataset, version),
        None => (spec, LATEST),
    }
}
