//! The BUS: the tracker (controller), agents, piece transfer with verification, origins (local
//! directory, S3-compatible), the MESI coherence directory and rate limits.
//!
//! Empty until the BUS issue lands; the workspace holds its place in the layer table.

#![forbid(unsafe_code)]
