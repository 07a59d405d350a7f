//! The VBUS engine as a library: the configuration ([`Config`]), the home directory ([`Home`]),
//! the machine scan ([`SystemScan`]), and the tiers and the state bus opened from them. The
//! `vbus` binary (CLI and HTTP daemon) and the Python module are adapters over this crate.

#![forbid(unsafe_code)]

pub mod config;
pub mod home;
pub mod repair;
pub mod scan;
pub mod tiers;

pub use config::{Config, ConfigError};
pub use home::Home;
pub use scan::SystemScan;
