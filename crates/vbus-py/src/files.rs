//! safetensors files: [`read_safetensors`] reads one whole and checks its header before Python
//! makes arrays over it; [`write_file_parts`] writes one atomically.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;

use pyo3::buffer::PyBuffer;
use pyo3::prelude::*;

use crate::errors::{BindError, BindResult};
use crate::value::ValueView;

/// The largest header read (as the safetensors library allows).
const HEADER_BYTES_MAX: u64 = 100 << 20;

/// Bytes per element of a safetensors dtype.
fn dtype_bytes(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E4M3" | "F8_E5M2" | "F8_E8M0" => 1,
        "U16" | "I16" | "F16" | "BF16" => 2,
        "U32" | "I32" | "F32" => 4,
        "U64" | "I64" | "F64" | "C64" => 8,
        _ => return None,
    })
}

/// Checks a header against the `data_len` bytes after it: every tensor's dtype is known, its
/// offsets hold exactly its shape's bytes, and the tensors cover the data without overlap.
fn check_header(header: &[u8], data_len: u64) -> Result<(), String> {
    let header: BTreeMap<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|err| format!("the header is not a JSON object: {err}"))?;
    let mut ranges = Vec::with_capacity(header.len());
    for (name, entry) in &header {
        if name == "__metadata__" {
            continue;
        }
        let field = |key: &str| {
            entry
                .get(key)
                .ok_or_else(|| format!("tensor {name:?} has no {key:?}"))
        };
        let dtype = field("dtype")?
            .as_str()
            .ok_or_else(|| format!("tensor {name:?}: dtype is not a string"))?;
        let element = dtype_bytes(dtype)
            .ok_or_else(|| format!("tensor {name:?}: unknown dtype {dtype:?}"))?;
        let dims = field("shape")?
            .as_array()
            .ok_or_else(|| format!("tensor {name:?}: shape is not a list"))?;
        let mut n_bytes = Some(element);
        for dim in dims {
            let dim = dim
                .as_u64()
                .ok_or_else(|| format!("tensor {name:?}: shape {dims:?} is not of integers"))?;
            n_bytes = n_bytes.and_then(|n| n.checked_mul(dim));
        }
        let n_bytes = n_bytes.ok_or_else(|| format!("tensor {name:?}: shape overflows"))?;
        let offsets = field("data_offsets")?
            .as_array()
            .and_then(|pair| Some((pair.first()?.as_u64()?, pair.get(1)?.as_u64()?)))
            .ok_or_else(|| format!("tensor {name:?}: data_offsets is not [begin, end]"))?;
        let (begin, end) = offsets;
        if begin > end || end > data_len {
            return Err(format!(
                "tensor {name:?}: data_offsets [{begin}, {end}] lie outside the {data_len} \
                 data bytes"
            ));
        }
        if end - begin != n_bytes {
            return Err(format!(
                "tensor {name:?}: data_offsets [{begin}, {end}] hold {} bytes, its dtype {dtype} \
                 and shape {dims:?} need {n_bytes}",
                end - begin
            ));
        }
        ranges.push((begin, end, name));
    }
    ranges.sort();
    let mut at = 0;
    for (begin, end, name) in ranges {
        if begin != at {
            return Err(format!(
                "tensor {name:?} starts at data byte {begin}, where {at} was expected (tensors \
                 overlap or leave a gap)"
            ));
        }
        at = end;
    }
    if at != data_len {
        return Err(format!(
            "the tensors end at data byte {at} but the file holds {data_len} data bytes"
        ));
    }
    Ok(())
}

/// Reads the safetensors file at `path` whole (GIL released) and checks its header. Returns the
/// header (JSON text), the file's bytes and where the data starts.
#[pyfunction]
pub(crate) fn read_safetensors(
    py: Python<'_>,
    path: PathBuf,
) -> PyResult<(String, ValueView, usize)> {
    let (header, bytes, start) = py.detach(|| -> BindResult<_> {
        let shown = path.display().to_string();
        let mut file = std::fs::File::open(&path)
            .map_err(|err| BindError::Io(err, format!("cannot open {shown}")))?;
        let len = file
            .metadata()
            .map_err(|err| BindError::Io(err, format!("cannot stat {shown}")))?
            .len();
        let bad = |why: String| {
            BindError::Safetensors(format!(
                "{shown} is not a safetensors file we can read: {why}"
            ))
        };
        if len < 8 {
            return Err(bad(format!(
                "it holds {len} bytes, and a safetensors file starts with an 8-byte header length"
            )));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(usize::MAX));
        file.read_to_end(&mut bytes)
            .map_err(|err| BindError::Io(err, format!("cannot read {shown}")))?;
        let mut head = [0u8; 8];
        head.copy_from_slice(&bytes[..8]);
        let header_len = u64::from_le_bytes(head);
        let total = bytes.len() as u64;
        if header_len > HEADER_BYTES_MAX || header_len > total - 8 {
            return Err(bad(format!(
                "its header length {header_len} runs past the end of the file ({total} bytes) \
                 or past the {HEADER_BYTES_MAX}-byte limit (truncated?)"
            )));
        }
        let start = 8 + header_len as usize;
        let header = &bytes[8..start];
        check_header(header, total - start as u64).map_err(bad)?;
        let header = String::from_utf8(header.to_vec())
            .map_err(|_| bad("its header is not UTF-8".to_owned()))?;
        Ok((header, bytes, start))
    })?;
    Ok((header, ValueView::exclusive(bytes), start))
}

/// Writes the bytes of `parts`, in order, as the file `path`, atomically (a temporary file beside
/// it, synced, renamed over it), with the GIL released.
#[pyfunction]
pub(crate) fn write_file_parts(
    py: Python<'_>,
    path: PathBuf,
    parts: Vec<PyBuffer<u8>>,
) -> PyResult<()> {
    let slices = parts
        .iter()
        .map(crate::manager::contiguous)
        .collect::<PyResult<Vec<&[u8]>>>()?;
    py.detach(|| {
        let options = vbus_store::atomic::WholeWrite {
            temp: vbus_store::atomic::TempName::Hidden,
            ..Default::default()
        };
        vbus_store::atomic::replace_with(&path, options, |file| {
            let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
            for slice in &slices {
                writer.write_all(slice)?;
            }
            writer.flush()
        })
        .map(drop)
        .map_err(|err| {
            let context = format!("cannot {} {}", err.op, err.path.display());
            BindError::Io(err.source, context)
        })
    })?;
    Ok(())
}
