//! [`ValueView`]: bytes handed to Python without a copy, read-only through the buffer protocol.

use std::ffi::c_int;

use pyo3::exceptions::PyBufferError;
use pyo3::ffi;
use pyo3::prelude::*;

/// The bytes a view holds.
#[derive(Debug)]
pub(crate) enum Held {
    /// A cache value, shared with the tiers (the view keeps it alive after it leaves them, after
    /// a newer put and after the manager closes).
    Cached(vbus_cache::Value),
    /// Bytes read for this call (a value streamed from L3, a file).
    Owned(Vec<u8>),
}

impl Held {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Self::Cached(value) => value.bytes(),
            Self::Owned(bytes) => bytes,
        }
    }
}

/// Bytes for Python: `memoryview(view)`, `numpy.frombuffer(view, ...)` and `bytes(view)` read
/// them in place. A view of the cache's memory is read-only; a view of bytes read for one call
/// alone (a file `load_file` read) may be writable.
#[pyclass(frozen, name = "ValueView", module = "vbus._vbus")]
#[derive(Debug)]
pub(crate) struct ValueView {
    held: Held,
    /// For a writable view: the address of the owned bytes, taken from the `Vec` with write
    /// permission when the view was made (the heap buffer never moves while `held` owns it).
    writable: Option<usize>,
}

impl ValueView {
    /// A read-only view.
    pub(crate) fn new(held: Held) -> Self {
        Self {
            held,
            writable: None,
        }
    }

    /// A writable view of bytes nothing else sees.
    pub(crate) fn exclusive(mut bytes: Vec<u8>) -> Self {
        let address = bytes.as_mut_ptr() as usize;
        Self {
            held: Held::Owned(bytes),
            writable: Some(address),
        }
    }
}

#[pymethods]
impl ValueView {
    fn __len__(&self) -> usize {
        self.held.bytes().len()
    }

    fn __repr__(&self) -> String {
        format!("<vbus ValueView of {} bytes>", self.held.bytes().len())
    }

    /// Fills `view` with this object's bytes, read-only, one dimension of unsigned bytes.
    ///
    /// # Safety
    /// Called by the interpreter with `view` a valid `Py_buffer` to fill (or null).
    unsafe fn __getbuffer__(
        slf: Bound<'_, Self>,
        view: *mut ffi::Py_buffer,
        flags: c_int,
    ) -> PyResult<()> {
        if view.is_null() {
            return Err(PyBufferError::new_err("the buffer view is null"));
        }
        let writable = slf.get().writable;
        if flags & ffi::PyBUF_WRITABLE == ffi::PyBUF_WRITABLE && writable.is_none() {
            return Err(PyBufferError::new_err(
                "a vbus value is read-only (get it with copy=True for a writable copy)",
            ));
        }
        let bytes = slf.get().held.bytes();
        let len = bytes.len();
        let ptr = writable.map_or(bytes.as_ptr().cast_mut(), |address| address as *mut u8);
        // SAFETY: `view` is non-null and the interpreter's to fill. `obj` takes a strong
        // reference to this object, which is frozen and owns the bytes (a `Value`'s bytes are
        // behind an `Arc` and never move or change; an owned `Vec` is never resized), so `buf`
        // stays valid until the consumer releases the view. Only a view made by
        // `ValueView::exclusive` (bytes no other object reads) is offered writable, through the
        // pointer taken with write permission when it was made; Rust never reads those bytes
        // again. `format` points at a static C
        // string the interpreter never frees; `shape` and `strides` point into the view itself,
        // as the protocol allows for one dimension.
        unsafe {
            (*view).obj = slf.into_any().into_ptr();
            (*view).buf = ptr.cast();
            (*view).len = len as isize;
            (*view).readonly = c_int::from(writable.is_none());
            (*view).itemsize = 1;
            (*view).format = if flags & ffi::PyBUF_FORMAT == ffi::PyBUF_FORMAT {
                c"B".as_ptr().cast_mut()
            } else {
                std::ptr::null_mut()
            };
            (*view).ndim = 1;
            (*view).shape = if flags & ffi::PyBUF_ND == ffi::PyBUF_ND {
                &raw mut (*view).len
            } else {
                std::ptr::null_mut()
            };
            (*view).strides = if flags & ffi::PyBUF_STRIDES == ffi::PyBUF_STRIDES {
                &raw mut (*view).itemsize
            } else {
                std::ptr::null_mut()
            };
            (*view).suboffsets = std::ptr::null_mut();
            (*view).internal = std::ptr::null_mut();
        }
        Ok(())
    }
}
