//! `vbus._vbus`: the extension module of the `vbus` Python package. It opens the engine of
//! `vbus-node` in process ([`manager::PyNode`]), hands values out without a copy
//! ([`value::ValueView`]) and reads and writes safetensors files ([`files`]); the package's
//! Python code (`python/vbus/`) builds the public API on it.

mod errors;
mod files;
mod manager;
mod value;

use pyo3::prelude::*;

#[pymodule]
fn _vbus(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    module.add_class::<manager::PyNode>()?;
    module.add_class::<value::ValueView>()?;
    module.add_function(wrap_pyfunction!(files::read_safetensors, module)?)?;
    module.add_function(wrap_pyfunction!(files::write_file_parts, module)?)?;
    Ok(())
}
