//! L3 of VBUS and the file storage of SyncBit: datasets of complete files at
//! `{root}/{dataset}/{path}` (`CACHE/L3_DISK` in a VBUS home), ready for any program to open.
//!
//! - Atomic publish: bytes are staged in `{root}/.vbus-staging`, fsynced, renamed to the final
//!   path, and the directory fsynced. Readers see the old version or the new one; concurrent
//!   writers of one path never tear it (the last publish wins); staging leftovers of a crash are
//!   removed on open.
//! - An index per file (size, BLAKE3, version, last access, pin) persisted as a snapshot plus a
//!   journal in `{root}/.vbus-index`, and reconciled with the directory on open: files copied in
//!   by hand are adopted (hashed on first read), files deleted by hand are dropped.
//! - Every read checks each 1 MiB piece against its XXH3-64, computed when the file was published
//!   or first verified against its BLAKE3 and kept beside the index, before any of the piece's
//!   bytes leaves the store ([`Verify::FirstRead`] opts out); a mismatch is an error naming the
//!   file, which moves to `{root}/.vbus-quarantine`. A file changed behind the store's back while
//!   it was closed is logged with its old and new hashes and adopted or quarantined
//!   ([`OnChange`]); one deleted by hand leaves the index at its next read.
//! - A capacity enforced by evicting the least recently used unpinned files; an
//!   [`EvictionHook`] lets the tiered cache keep the only copy of a value.
//!
//! Knows nothing about RAM caching or GPUs.

#![forbid(unsafe_code)]

pub mod atomic;
mod error;
mod index;
mod name;
mod persist;
mod reader;
mod store;
mod sums;
mod walk;
mod writer;

pub use error::{Error, Result};
pub use name::{
    DATASET_LEN_MAX, PATH_LEN_MAX, RESERVED_PREFIX, SEGMENT_LEN_MAX, validate_dataset,
    validate_path,
};
pub use reader::FileReader;
pub use store::{
    EvictionHook, FileMeta, FileStore, OnChange, QuarantinedFile, StoreBuilder, StoreStats, Verify,
};
pub use writer::FileWriter;
