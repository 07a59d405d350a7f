//! The state bus (MMSB): pages on CPU or GPU, deltas and their merge operators, epochs, the page
//! graph and propagation, checkpoints and exact replay over `vbus-tlog`. Knows nothing about the
//! network.
//!
//! Every change (create, update, delete, edge) is checked, applied in memory and queued as one
//! log record under the state's write lock, so the log's order is the order of application;
//! the caller then waits for the record's durability outside the lock, sharing syncs with
//! other writers. Replay runs the same apply code over the same records, so any retained
//! sequence number rebuilds bytes and epochs exactly.

#![forbid(unsafe_code)]

mod bus;
mod checkpoint;
pub mod delta;
mod error;
mod graph;
mod op;
mod page;
mod state;

pub use bus::{Snapshot, StateBus, StateBusBuilder, StateMetrics};
pub use checkpoint::checkpoint_seqs;
pub use delta::{Delta, ElemType, MergeOp, Run, merge};
pub use error::{Error, Limit, Result};
pub use graph::{Rule, RuleFn};
pub use page::{Location, PageId};
pub use state::{PageInfo, PageView};
pub use vbus_tlog::Durability;
