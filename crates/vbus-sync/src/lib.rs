//! The BUS: the tracker (controller), agents, piece transfer with verification, origins (local
//! directory, S3-compatible), the MESI coherence directory and rate limits.
//!
//! Built so far: [`manifest`], the description of a dataset version that every transfer is
//! checked against (files, sizes, BLAKE3 roots, pieces and their hashes); [`origin`], the
//! master store (a local directory, or an S3-compatible bucket through [`s3`]) with recorded
//! versions and a verified, atomic pull from it into the L3 store; [`tracker`], the controller's state (agents, liveness, who holds which complete
//! file); [`peer`], the HTTP client side (tracker calls, byte ranges from peers); and [`swarm`],
//! a pull from peers with per-piece verification and fallback to the origin. [`coherence`]
//! is the MESI directory the tracker keeps. Pieces served while a file is in flight and
//! resumable pulls are the rest of the BUS issue.

#![forbid(unsafe_code)]

pub mod coherence;
pub mod manifest;
pub mod origin;
pub mod peer;
pub mod rate;
pub mod s3;
pub mod staging;
pub mod swarm;
pub mod tracker;

pub use coherence::{Line, LineState};
pub use manifest::{FileEntry, Manifest, ManifestError, PIECE_BYTES_DEFAULT};
pub use origin::{LATEST, Object, Origin, PullError, PullReport, content_version, pull};
pub use peer::{Http, PeerError, TrackerClient};
pub use rate::RateLimiter;
pub use s3::S3Options;
pub use staging::Interconnect;
pub use swarm::{Sink, Swarm, SwarmReport, fetch_file_bytes, manifest_from_peers, pull_swarm};
pub use tracker::{Agent, Availability, LineView, Tracker, TrackerError};
