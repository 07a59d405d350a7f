//! `vbus-sync` through its public API.

mod agent;
mod manifest;
mod origin;
