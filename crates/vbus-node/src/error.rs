//! The node's errors: what failed, typed, for each adapter (the HTTP daemon, the CLI, the
//! Python module) to say in its own terms.

/// An error of a [`Node`](crate::Node) operation.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The node could not open: its config, its home or one of its tiers.
    #[error("{0:#}")]
    Open(anyhow::Error),
    /// A dataset or path name was refused, or a request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The cache (L1, L2, L3 or its source) failed or refused.
    #[error(transparent)]
    Cache(#[from] vbus_cache::Error),
    /// The L3 store failed or refused.
    #[error(transparent)]
    Store(#[from] vbus_store::Error),
    /// The state bus refused or failed.
    #[error(transparent)]
    State(#[from] vbus_state::Error),
    /// The state bus is not running: disabled in the config, or it did not open (the message
    /// says why and how to repair it).
    #[error("{0}")]
    StateUnavailable(String),
    /// The BUS (pull, push, coherence) failed or refused.
    #[error(transparent)]
    Bus(#[from] vbus_sync::BusError),
}
