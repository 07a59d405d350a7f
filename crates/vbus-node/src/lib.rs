//! The VBUS engine as a library: the configuration ([`Config`]), the home directory ([`Home`]),
//! the machine scan ([`SystemScan`]), and [`Node`], which opens the tiers, the state bus and
//! the BUS agent from them and offers the whole engine as a typed API. The `vbus` binary (CLI
//! and HTTP daemon) and the Python module are adapters over this crate.

#![forbid(unsafe_code)]

pub mod config;
mod error;
pub mod home;
mod node;
pub mod repair;
pub mod scan;
pub mod tiers;

pub use config::{Config, ConfigError};
pub use error::NodeError;
pub use home::{Home, HomeLock};
pub use node::{Node, PROMOTE_MAX_BYTES, Put, master};
pub use scan::SystemScan;
