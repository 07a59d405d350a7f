//! The transaction log of the state bus: segmented, framed and checksummed records, group
//! commit, durability modes chosen per append, recovery that truncates only a torn tail, and
//! reading from any retained sequence number. Knows nothing about page semantics.
//!
//! - [`record`]: the frame of one record (`body_len u32 | crc32c u32 | seq u64 | kind u8 |
//!   payload`, padded to 8 bytes) and a decoder that never panics on any input.
//! - [`Log`]: segments preallocated on disk, appends with group commit (one `fdatasync` serves
//!   every writer waiting on it), recovery on open, [`Log::read_from`] and [`Log::release_before`].
//! - [`Histogram`]: lock-free latency counts with percentiles, for the log's and the bus's
//!   monitoring.

#![forbid(unsafe_code)]

mod crc;
mod error;
mod histogram;
mod log;
pub mod record;
mod repair;
mod segment;

pub use error::{Error, Result};
pub use histogram::{Histogram, LatencySummary};
pub use log::{
    ASYNC_PENDING_MAX_BYTES, Durability, FLUSH_INTERVAL, Log, LogOptions, LogStats, Recovery,
};
pub use record::{MAX_BODY_BYTES, RecordRef};
pub use repair::{RepairPlan, plan as repair_plan, repair, restart_after};
