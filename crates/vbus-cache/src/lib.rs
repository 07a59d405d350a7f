//! The tiered cache (`CacheManager`): L1 on `vbus-gpu`, L2 in host RAM, L3 on `vbus-store`,
//! with eviction policies, promotion and demotion, pinning, per-tier statistics and single-flight
//! loads. Knows nothing about the network: misses in every tier go to a [`Source`].
//!
//! Built so far: the eviction policies ([`policy`]), the sharded memory tier ([`memory`]), a
//! single-tier replay of access traces ([`replay`]), and a first [`CacheManager`] running L2 over
//! L3, write-through, with a source, single-flight loads, pins and the seed's statistics. L1 and
//! write-back are not wired yet.

#![forbid(unsafe_code)]

mod error;
mod key;
mod manager;
pub mod memory;
pub mod policy;
pub mod replay;
mod source;

pub use error::{Error, Result};
pub use key::{CacheKey, DEFAULT_DATASET, Value};
pub use manager::{CacheBuilder, CacheManager, CacheStats};
pub use memory::{Inserted, MemoryTier, TierStats};
pub use policy::{Policy, PolicyKind};
pub use source::{DirSource, Source};
