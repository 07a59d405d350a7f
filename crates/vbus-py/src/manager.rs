//! [`PyNode`]: one process's VBUS engine ([`vbus_node::Node`]) for the Python `CacheManager`.
//! Every copy, disk read or write and wait runs with the GIL released.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use vbus_cache::{CacheKey, DEFAULT_DATASET, Found};
use vbus_node::home::{self, Home, HomeLock, Overwrite};
use vbus_node::{Config, Node};

use crate::errors::{BindError, BindResult};
use crate::value::{Held, ValueView};

/// Values at least this large are copied into a new `bytes` with the GIL released.
const COPY_DETACHED_MIN_BYTES: usize = 1 << 20;

/// The engine of one home, open in this process (it holds the home's lock until `close`).
#[pyclass(frozen, name = "Node", module = "vbus._vbus")]
#[derive(Debug)]
pub(crate) struct PyNode {
    node: RwLock<Option<Arc<Node>>>,
    home: PathBuf,
}

impl PyNode {
    fn node(&self) -> BindResult<Arc<Node>> {
        self.node.read().clone().ok_or(BindError::Closed)
    }
}

/// A key as Python gives it: `dataset/path`, or a flat name (dataset `default`), checked by the
/// store's naming rules before it reaches a tier.
fn parse_key(key: &str) -> BindResult<CacheKey> {
    let key = CacheKey::from(key);
    vbus_store::validate_dataset(key.dataset())
        .and_then(|()| vbus_store::validate_path(key.path()))
        .map_err(|err| BindError::InvalidKey(format!("bad key {:?}: {err}", key.to_string())))?;
    Ok(key)
}

/// The name Python sees for `key` (a flat name for the default dataset).
fn key_name(dataset: &str, path: &str) -> String {
    if dataset == DEFAULT_DATASET {
        path.to_owned()
    } else {
        format!("{dataset}/{path}")
    }
}

/// The bytes of `buffer`, which must be C-contiguous unsigned bytes.
pub(crate) fn contiguous(buffer: &PyBuffer<u8>) -> PyResult<&[u8]> {
    if !buffer.is_c_contiguous() {
        return Err(PyTypeError::new_err(
            "the value's buffer is not C-contiguous (copy it first)",
        ));
    }
    let len = buffer.len_bytes();
    if len == 0 {
        return Ok(&[]);
    }
    // SAFETY: `buffer` holds the exporter's buffer (which may not be freed or resized while
    // held) for the life of the borrow; it is C-contiguous, so `len` bytes from `buf_ptr` are
    // its contents. A Python thread writing into the same object while this call reads it with
    // the GIL released races with the read, as with any buffer handed to code that releases the
    // GIL (documented on `CacheManager.put`).
    Ok(unsafe { std::slice::from_raw_parts(buffer.buf_ptr().cast::<u8>(), len) })
}

fn open_node(
    home: Option<&Path>,
    config_json: Option<&str>,
    config_path: Option<&Path>,
) -> BindResult<(Node, PathBuf)> {
    let home = Home::resolve(home).map_err(BindError::Open)?;
    if !home.is_initialised() {
        home::init_for(&home, Overwrite::Keep, Path::new("vbus")).map_err(BindError::Open)?;
    }
    let config = match (config_json, config_path) {
        (Some(text), _) => Config::from_json_str(text, "the config given to CacheManager")
            .map_err(|err| BindError::Open(err.into()))?,
        (None, Some(path)) => Config::load(path).map_err(BindError::Open)?,
        (None, None) => home.load_config().map_err(BindError::Open)?,
    };
    if !config.bus_config.tracker.is_empty() {
        return Err(BindError::Open(anyhow::anyhow!(
            "bus_config.tracker is set ({}): a clustered node serves its peers and is run by \
             `vbus up`, not in process; give CacheManager a config without a tracker",
            config.bus_config.tracker
        )));
    }
    let lock = HomeLock::acquire(&home).map_err(|err| {
        BindError::Locked(format!(
            "{err:#}; one process owns a home: stop it, or open another home \
             (CacheManager(home=...))"
        ))
    })?;
    let node = Node::open(&home, config, lock, SocketAddr::from(([127, 0, 0, 1], 0)))?;
    Ok((node, home.root().to_owned()))
}

#[pymethods]
impl PyNode {
    /// Opens (and on first use creates, as `vbus init` does) the home `home` (else `$VBUS_HOME`,
    /// else `./VBUS`) with the config `config_json` (a JSON document), else the file
    /// `config_path`, else the home's own.
    #[new]
    #[pyo3(signature = (home=None, config_json=None, config_path=None))]
    fn new(
        py: Python<'_>,
        home: Option<PathBuf>,
        config_json: Option<String>,
        config_path: Option<PathBuf>,
    ) -> PyResult<Self> {
        let (node, home) = py.detach(|| -> BindResult<_> {
            let (node, home) = open_node(
                home.as_deref(),
                config_json.as_deref(),
                config_path.as_deref(),
            )?;
            let node = Arc::new(node);
            node.start()?;
            Ok((node, home))
        })?;
        Ok(Self {
            node: RwLock::new(Some(node)),
            home,
        })
    }

    /// The home's root directory.
    #[getter]
    fn home(&self) -> PathBuf {
        self.home.clone()
    }

    /// Whether `close` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.node.read().is_none()
    }

    /// Stores the bytes of `data` (C-contiguous unsigned bytes) under `key` with `kind`; returns
    /// the new version.
    fn put(&self, py: Python<'_>, key: &str, data: PyBuffer<u8>, kind: u8) -> PyResult<u64> {
        let node = self.node()?;
        let key = parse_key(key)?;
        let bytes = contiguous(&data)?;
        let put = py.detach(|| node.put_kind(&key, bytes, kind).map_err(BindError::from))?;
        Ok(put.version)
    }

    /// Stores `head` followed by the bytes of `data` under `key` with `kind` (a safetensors
    /// header and its tensor's bytes); returns the new version.
    fn put_parts(
        &self,
        py: Python<'_>,
        key: &str,
        head: &[u8],
        data: PyBuffer<u8>,
        kind: u8,
    ) -> PyResult<u64> {
        let node = self.node()?;
        let key = parse_key(key)?;
        let bytes = contiguous(&data)?;
        let put = py.detach(|| {
            let mut whole = Vec::with_capacity(head.len() + bytes.len());
            whole.extend_from_slice(head);
            whole.extend_from_slice(bytes);
            node.put_kind(&key, &whole, kind).map_err(BindError::from)
        })?;
        Ok(put.version)
    }

    /// `(value, kind)` for `key`, or `None`. A plain-bytes value (kind 0) with `copy` is a new
    /// `bytes`; otherwise the value is a read-only `ValueView` on the cache's memory.
    fn get(&self, py: Python<'_>, key: &str, copy: bool) -> PyResult<Option<(Py<PyAny>, u8)>> {
        let node = self.node()?;
        let key = parse_key(key)?;
        let found = py.detach(|| -> BindResult<Option<(Held, u8)>> {
            Ok(match node.open_object(&key)? {
                None => None,
                Some(Found::Memory(value)) => {
                    let kind = value.kind();
                    Some((Held::Cached(value), kind))
                }
                Some(Found::File(mut reader)) => {
                    let kind = reader.meta().kind;
                    let mut bytes = Vec::new();
                    reader
                        .read_to_end(&mut bytes)
                        .map_err(|err| BindError::Io(err, format!("cannot read {key} from L3")))?;
                    Some((Held::Owned(bytes), kind))
                }
            })
        })?;
        let Some((held, kind)) = found else {
            return Ok(None);
        };
        if kind != 0 || !copy {
            return Ok(Some((Py::new(py, ValueView::new(held))?.into_any(), kind)));
        }
        let source = held.bytes();
        let bytes = if source.len() < COPY_DETACHED_MIN_BYTES {
            PyBytes::new(py, source)
        } else {
            PyBytes::new_with(py, source.len(), |target| {
                py.detach(|| target.copy_from_slice(source));
                Ok(())
            })?
        };
        Ok(Some((bytes.into_any().unbind(), kind)))
    }

    /// Whether a tier holds `key` (the source is not asked).
    fn contains(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        let node = self.node()?;
        let key = parse_key(key)?;
        Ok(py.detach(|| node.cache().contains(key)))
    }

    /// Removes `key` from every tier; whether it was there.
    fn delete(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        let node = self.node()?;
        let key = parse_key(key)?;
        Ok(py.detach(|| node.remove(&key).map_err(BindError::from))?)
    }

    /// The keys of `dataset`, or of every dataset (flat names for the default one).
    #[pyo3(signature = (dataset=None))]
    fn keys(&self, py: Python<'_>, dataset: Option<String>) -> PyResult<Vec<String>> {
        let node = self.node()?;
        if let Some(dataset) = &dataset {
            vbus_store::validate_dataset(dataset)
                .map_err(|err| BindError::InvalidKey(format!("bad dataset {dataset:?}: {err}")))?;
        }
        Ok(py.detach(|| -> BindResult<Vec<String>> {
            let datasets = match dataset {
                Some(dataset) => vec![dataset],
                None => node.datasets(),
            };
            let mut keys = Vec::new();
            for dataset in datasets {
                for listed in node.list(&dataset)? {
                    keys.push(key_name(&dataset, &listed.path));
                }
            }
            Ok(keys)
        })?)
    }

    /// Pins `key` (never evicted from L2 or L3); whether it exists.
    fn pin(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        let node = self.node()?;
        let key = parse_key(key)?;
        Ok(py.detach(|| node.cache().pin(key).map_err(BindError::from_cache))?)
    }

    /// Unpins `key`; whether it exists.
    fn unpin(&self, py: Python<'_>, key: &str) -> PyResult<bool> {
        let node = self.node()?;
        let key = parse_key(key)?;
        Ok(py.detach(|| node.cache().unpin(key).map_err(BindError::from_cache))?)
    }

    /// Queues `keys` to be loaded into L2 in the background; how many were queued (the rest are
    /// dropped when the bounded queue is full).
    fn prefetch(&self, py: Python<'_>, keys: Vec<String>) -> PyResult<usize> {
        let node = self.node()?;
        let keys = keys
            .iter()
            .map(|key| parse_key(key))
            .collect::<BindResult<Vec<_>>>()?;
        Ok(py.detach(|| node.cache().prefetch(keys)))
    }

    /// Writes every write-back value to L3.
    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let node = self.node()?;
        Ok(py.detach(|| node.cache().flush().map_err(BindError::from_cache))?)
    }

    /// The `/v1/stats` document, as JSON.
    fn stats_json(&self, py: Python<'_>) -> PyResult<String> {
        let node = self.node()?;
        Ok(py.detach(|| node.stats().to_string()))
    }

    /// Checkpoints the state bus, writes the write-back values to L3 and releases the home. A
    /// second call does nothing. Views handed out stay valid.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let Some(node) = self.node.write().take() else {
            return Ok(());
        };
        py.detach(|| node.shutdown().map(drop).map_err(BindError::from))?;
        Ok(())
    }
}

impl BindError {
    fn from_cache(err: vbus_cache::Error) -> Self {
        Self::Node(err.into())
    }
}
