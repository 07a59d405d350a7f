//! VBUS: the memory hierarchy and data bus of a GPU machine and of a cluster of them.
//!
//! This crate is the binary and its adapters: the CLI (`main.rs`, `client.rs`) and the HTTP
//! daemon (`daemon.rs`, `api.rs`, `bus_api.rs`, `audit.rs`) over the engine in `vbus-node`.

#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
mod bus_api;
pub mod client;
pub mod daemon;
pub use bus_api::run_tracker;
