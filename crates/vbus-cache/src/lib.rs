//! The tiered cache (`CacheManager`): L1 on `vbus-gpu`, L2 in host RAM, L3 on `vbus-store`,
//! with eviction policies, promotion and demotion, pinning, per-tier statistics and single-flight
//! loads. Knows nothing about the network: misses in every tier go to a `Source` trait.
//!
//! Built so far: the eviction policies ([`policy`]), the sharded memory tier ([`memory`]) and a
//! single-tier replay of access traces ([`replay`]) that measures hit ratios. The L1 and L3 tiers,
//! promotion and demotion, and the `CacheManager` come next.

#![forbid(unsafe_code)]

pub mod memory;
pub mod policy;
pub mod replay;

pub use memory::{Inserted, MemoryTier, TierStats};
pub use policy::{Policy, PolicyKind};
