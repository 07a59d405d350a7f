//! L3 of VBUS and the file storage of SyncBit: datasets of complete files at
//! `CACHE/L3_DISK/{dataset}/{path}`, published atomically, indexed (size, BLAKE3, version) and
//! verified on read. Knows nothing about RAM caching or GPUs.
//!
//! Empty until the L3-store issue lands; the workspace holds its place in the layer table.

#![forbid(unsafe_code)]
