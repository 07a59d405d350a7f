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

/// A value's bytes: on the heap, or in page-locked memory of a CUDA L1 device, from which a
/// promotion to the device is one DMA transfer rather than a copy staged through the driver.
pub(crate) enum ValueBytes {
    Heap(Vec<u8>),
    PageLocked(vbus_gpu::HostBuffer),
}

impl std::ops::Deref for ValueBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Self::Heap(bytes) => bytes,
            Self::PageLocked(buffer) => buffer,
        }
    }
}

impl AsMut<[u8]> for ValueBytes {
    fn as_mut(&mut self) -> &mut [u8] {
        match self {
            Self::Heap(bytes) => bytes,
            Self::PageLocked(buffer) => buffer,
        }
    }
}

/// An immutable value: its bytes and the version the put (or the load) gave it. Cheap to clone;
/// a handle stays valid after a newer put of the same key.
#[derive(Clone)]
pub struct Value {
    /// Taken over without a copy from a read of the disk or the device.
    bytes: Arc<ValueBytes>,
    version: u64,
    kind: u8,
}

impl Value {
    pub(crate) fn new(bytes: Vec<u8>, version: u64) -> Self {
        Self::from_bytes(ValueBytes::Heap(bytes), version)
    }

    pub(crate) fn from_bytes(bytes: ValueBytes, version: u64) -> Self {
        Self {
            bytes: Arc::new(bytes),
            version,
            kind: 0,
        }
    }

    pub(crate) fn with_kind(mut self, kind: u8) -> Self {
        self.kind = kind;
        self
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Monotonic per key (the L3 store's version of the file).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// What its writer said it holds, as the L3 index records it
    /// ([`vbus_store::FileWriter::set_kind`]; 0: plain bytes).
    pub fn kind(&self) -> u8 {
        self.kind
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True for an empty value.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// True when the bytes are in page-locked memory of the L1 device (a CUDA L1 puts large
    /// values there), so copies to and from the device need no staging.
    pub fn is_page_locked(&self) -> bool {
        matches!(*self.bytes, ValueBytes::PageLocked(_))
    }
}

impl AsRef<[u8]> for Value {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl PartialEq for Value {
    /// Same version and same bytes, wherever they live.
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version && self.bytes() == other.bytes()
    }
}

impl Eq for Value {}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Value")
            .field("version", &self.version)
            .field("len", &self.len())
            .field("page_locked", &self.is_page_locked())
            .finish()
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
