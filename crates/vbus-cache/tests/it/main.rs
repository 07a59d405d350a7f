//! `CacheManager` through its public API.

mod manager;
mod model;
mod stress;
