//! Integration tests of `vbus-store` through its public API.

mod basics;
mod capacity;
mod concurrency;
mod crash;
mod integrity;
mod model;
mod reconcile;
mod support;
