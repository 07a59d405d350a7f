//! The tiered cache (`CacheManager`): L1 on `vbus-gpu`, L2 in host RAM, L3 on `vbus-store`,
//! with eviction policies, promotion and demotion, pinning, per-tier statistics and single-flight
//! loads. Knows nothing about the network: misses in every tier go to a `Source` trait.
//!
//! Empty until the tiered-cache issue lands; the workspace holds its place in the layer table.

#![forbid(unsafe_code)]
