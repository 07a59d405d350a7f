//! `CacheManager` through its public API.

mod crash;
mod manager;
mod model;
mod stress;
