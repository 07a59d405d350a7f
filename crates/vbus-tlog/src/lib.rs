//! The transaction log of the state bus: segmented, framed and checksummed records, group
//! commit, durability modes, recovery that truncates only a torn tail, and replay from any
//! sequence number. Knows nothing about page semantics.
//!
//! Empty until the state-bus issue lands; the workspace holds its place in the layer table.

#![forbid(unsafe_code)]
