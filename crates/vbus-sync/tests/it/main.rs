//! `vbus-sync` through its public API.

mod manifest;
mod origin;
