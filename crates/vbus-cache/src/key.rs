//! Keys: `(dataset, path)`; a flat name lives in dataset `default`.

use std::fmt;
use std::sync::Arc;

/// The dataset of flat keys such as `model_weights`.
pub const DEFAULT_DATASET: &str = "default";

/// A cache key. Cheap to clone (shared strings).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey {
    dataset: Arc<str>,
    path: Arc<str>,
}

impl CacheKey {
    /// `dataset/path`. Names are validated by the L3 store's rules when the key is used.
    pub fn new(dataset: &str, path: &str) -> Self {
        Self {
            dataset: Arc::from(dataset),
            path: Arc::from(path),
        }
    }

    /// A flat name in [`DEFAULT_DATASET`].
    pub fn flat(name: &str) -> Self {
        Self::new(DEFAULT_DATASET, name)
    }

    /// The dataset.
    pub fn dataset(&self) -> &str {
        &self.dataset
    }

    /// The path inside the dataset.
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl From<&str> for CacheKey {
    /// `"dataset/path"` splits at the first `/`; a name without one is flat.
    fn from(key: &str) -> Self {
        match key.split_once('/') {
            Some((dataset, path)) => Self::new(dataset, path),
            None => Self::flat(key),
        }
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.dataset, self.path)
    }
}

/// An immutable value: its bytes and the version the put (or the load) gave it. Cheap to clone;
/// a handle stays valid after a newer put of the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// A `Vec` behind the `Arc`, so a value read from disk or the device is taken over without a
    /// copy (`Arc<[u8]>` from a `Vec` would copy it).
    bytes: Arc<Vec<u8>>,
    version: u64,
}

impl Value {
    pub(crate) fn new(bytes: Vec<u8>, version: u64) -> Self {
        Self {
            bytes: Arc::new(bytes),
            version,
        }
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Monotonic per key (the L3 store's version of the file).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True for an empty value.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_and_qualified_keys() {
        assert_eq!(
            CacheKey::from("model_weights"),
            CacheKey::new("default", "model_weights")
        );
        assert_eq!(
            CacheKey::from("llama/weights/shard-0.bin").path(),
            "weights/shard-0.bin"
        );
        assert_eq!(CacheKey::new("d", "p").to_string(), "d/p");
    }
}
