//! Where a miss in every tier goes: the BUS implements [`Source`] (`vbus_sync::BusSource`);
//! [`DirSource`] reads a local directory laid out as `{root}/{dataset}/{path}`.

use std::path::{Path, PathBuf};

use crate::CacheKey;

/// Why a [`Source`] failed: its own error type, kept whole (with its chain) in
/// [`Error::Source`](crate::Error::Source).
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// A place values can be fetched from when no tier holds them. The cache never knows what is
/// behind it.
pub trait Source: Send + Sync {
    /// A short name for errors and logs.
    fn name(&self) -> &str;
    /// The value of `key`, `Ok(None)` when the source does not have it.
    fn fetch(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, SourceError>;
}

/// A local directory of datasets: `{root}/{dataset}/{path}`.
#[derive(Debug, Clone)]
pub struct DirSource {
    root: PathBuf,
    name: String,
}

impl DirSource {
    /// The directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let name = format!("dir:{}", root.display());
        Self { root, name }
    }

    fn file(&self, key: &CacheKey) -> Result<PathBuf, vbus_store::Error> {
        // The names are the store's to validate; refuse anything that could leave the root.
        vbus_store::validate_dataset(key.dataset())?;
        vbus_store::validate_path(key.path())?;
        Ok(self.root.join(key.dataset()).join(Path::new(key.path())))
    }
}

impl Source for DirSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn fetch(&self, key: &CacheKey) -> Result<Option<Vec<u8>>, SourceError> {
        let path = self.file(key)?;
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(format!("cannot read {}: {err}", path.display()).into()),
        }
    }
}
