//! The BUS: the tracker (controller), agents, piece transfer with verification, origins (local
//! directory, S3-compatible), the MESI coherence directory and rate limits.
//!
//! Built so far: [`manifest`], the description of a dataset version that every transfer is
//! checked against (files, sizes, BLAKE3 roots, pieces and their hashes), and [`origin`]: a
//! local-directory origin and a verified, atomic pull from it into the L3 store. The tracker,
//! agents, the S3-compatible origin and coherence are the rest of the BUS issue.

#![forbid(unsafe_code)]

pub mod manifest;
pub mod origin;

pub use manifest::{FileEntry, Manifest, ManifestError, PIECE_BYTES_DEFAULT};
pub use origin::{DirOrigin, PullError, PullReport, pull};
