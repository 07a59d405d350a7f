//! VBUS: the memory hierarchy and data bus of a GPU machine and of a cluster of them.
//!
//! This crate is the facade and the binary: the CLI, the configuration, `init` and `scan`, the
//! daemon and `bench`. The tiers, the state bus and the BUS live in the crates below it
//! (see `ARCHITECTURE.md`).

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod client;
pub mod daemon;
mod repos;
pub mod sync;
