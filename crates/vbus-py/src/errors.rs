//! The module's errors: one enum, one conversion to the exceptions of `vbus.errors` (each a
//! `VBusError` that also derives from the matching built-in), keeping the engine's message.

use pyo3::prelude::*;
use pyo3::types::PyType;

/// What a call into the engine can fail with.
#[derive(Debug)]
pub(crate) enum BindError {
    /// The engine refused or failed.
    Node(vbus_node::NodeError),
    /// The engine could not open (the config, the home or a tier).
    Open(anyhow::Error),
    /// Another process holds the home.
    Locked(String),
    /// The manager was closed.
    Closed,
    /// A key was refused before it reached the engine.
    InvalidKey(String),
    /// A file given to `load_file` is not a safetensors file we can read.
    Safetensors(String),
    /// A file could not be read.
    Io(std::io::Error, String),
    /// A Python error, passed through.
    Py(PyErr),
}

impl From<vbus_node::NodeError> for BindError {
    fn from(err: vbus_node::NodeError) -> Self {
        Self::Node(err)
    }
}

impl From<PyErr> for BindError {
    fn from(err: PyErr) -> Self {
        Self::Py(err)
    }
}

/// The class of `vbus.errors` for a store error.
fn store_class(err: &vbus_store::Error) -> &'static str {
    use vbus_store::Error as E;
    match err {
        E::InvalidName { .. } => "InvalidKeyError",
        E::TooLarge { .. } | E::CapacityExhausted { .. } => "TooLargeError",
        E::ChecksumMismatch { .. } | E::Damaged { .. } => "IntegrityError",
        E::Io { source, .. } => io_class(source.kind()),
        _ => "VBusError",
    }
}

fn io_class(kind: std::io::ErrorKind) -> &'static str {
    match kind {
        std::io::ErrorKind::NotFound => "VBusFileNotFoundError",
        std::io::ErrorKind::PermissionDenied => "VBusPermissionError",
        _ => "VBusOSError",
    }
}

fn node_class(err: &vbus_node::NodeError) -> &'static str {
    use vbus_node::NodeError as N;
    match err {
        N::Invalid(_) => "InvalidKeyError",
        N::Store(err) | N::Cache(vbus_cache::Error::Store(err)) => store_class(err),
        N::Cache(vbus_cache::Error::Device(_)) => "DeviceError",
        N::Open(err) => open_class(err),
        _ => "VBusError",
    }
}

fn open_class(err: &anyhow::Error) -> &'static str {
    if err.chain().any(|cause| {
        cause
            .downcast_ref::<vbus_node::config::ConfigError>()
            .is_some()
    }) {
        return "ConfigError";
    }
    match err
        .chain()
        .find_map(|cause| cause.downcast_ref::<vbus_store::Error>())
    {
        Some(store) => store_class(store),
        None => "VBusError",
    }
}

impl From<BindError> for PyErr {
    fn from(err: BindError) -> Self {
        let (class, message) = match err {
            BindError::Py(err) => return err,
            BindError::Node(err) => (node_class(&err), err.to_string()),
            BindError::Open(err) => (open_class(&err), format!("{err:#}")),
            BindError::Locked(message) => ("HomeLockedError", message),
            BindError::Closed => ("ClosedError", "the CacheManager is closed".to_owned()),
            BindError::InvalidKey(message) => ("InvalidKeyError", message),
            BindError::Safetensors(message) => ("SafetensorsError", message),
            BindError::Io(err, context) => (io_class(err.kind()), format!("{context}: {err}")),
        };
        Python::attach(|py| raise(py, class, message))
    }
}

/// An instance of `vbus.errors.<class>` with `message`.
fn raise(py: Python<'_>, class: &str, message: String) -> PyErr {
    let class = py
        .import("vbus.errors")
        .and_then(|module| module.getattr(class))
        .and_then(|class| class.cast_into::<PyType>().map_err(PyErr::from));
    match class {
        Ok(class) => PyErr::from_type(class, message),
        // The package is broken (the module is not beside the extension): say so, with the
        // message it was to carry.
        Err(err) => pyo3::exceptions::PyRuntimeError::new_err(format!(
            "{message} (and vbus.errors cannot be imported: {err})"
        )),
    }
}

/// `Result` with [`BindError`].
pub(crate) type BindResult<T> = Result<T, BindError>;
