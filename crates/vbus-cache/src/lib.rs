//! The tiered cache (`CacheManager`): L1 on `vbus-gpu`, L2 in host RAM, L3 on `vbus-store`,
//! with eviction policies, promotion and demotion, pinning, per-tier statistics and single-flight
//! loads. Knows nothing about the network: misses in every tier go to a [`Source`].
//!
//! The eviction policies ([`policy`]), the sharded memory tier ([`memory`]), and the
//! [`CacheManager`] running L1 (device buffers through `vbus-gpu`), L2 and L3, write-through or
//! write-back, with a source, single-flight loads, pins and per-tier statistics.

#![forbid(unsafe_code)]

mod error;
mod key;
mod manager;
pub mod memory;
pub mod policy;
#[cfg(any(test, feature = "bench"))]
pub mod replay;
mod source;

pub use error::{Error, Result};
pub use key::{CacheKey, DEFAULT_DATASET, Value};
pub use manager::{
    CacheBuilder, CacheManager, CacheStats, DeviceValue, Found, Listed, PAGE_LOCKED_MIN_BYTES,
    WriteMode,
};
pub use memory::{Inserted, MemoryTier, TierStats};
pub use policy::{Entries, Policy, PolicyKind, SlotTable, Victim};
pub use source::{DirSource, Source, SourceError};
