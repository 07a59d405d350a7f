//! The BUS: the tracker (controller), agents, piece transfer with verification, origins (local
//! directory, S3-compatible), the MESI coherence directory and rate limits.
//!
//! Built so far: [`manifest`], the description of a dataset version that every transfer is
//! checked against (files, sizes, BLAKE3 roots, pieces and their hashes). The tracker, agents,
//! origins and coherence are the rest of the BUS issue.

#![forbid(unsafe_code)]

pub mod manifest;

pub use manifest::{FileEntry, Manifest, ManifestError, PIECE_BYTES_DEFAULT};
