//! `CacheManager` through its public API.

mod crash;
mod l1;
mod manager;
mod model;
mod stress;
