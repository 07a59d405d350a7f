//! The state bus (MMSB): pages on CPU or GPU, deltas and their merge operators, epochs, the page
//! graph and propagation, checkpoint and exact replay over `vbus-tlog`. Knows nothing about the
//! network.
//!
//! Empty until the state-bus issue lands; the workspace holds its place in the layer table.

#![forbid(unsafe_code)]
