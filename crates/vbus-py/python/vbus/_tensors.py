"""Arrays and tensors as one-tensor safetensors files, and safetensors files as arrays.

A value put as a numpy array or a torch tensor is stored as a safetensors file holding one tensor
named ``value`` (dtype and shape in its header), so ``vbus get``, the HTTP API and the
``safetensors`` library read the same bytes.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

from .errors import SafetensorsError

KIND_BYTES = 0
KIND_NUMPY = 1
KIND_TORCH = 2

TENSOR_NAME = "value"

# numpy dtype (kind, itemsize) -> safetensors dtype
_NP_TO_ST = {
    ("f", 8): "F64",
    ("f", 4): "F32",
    ("f", 2): "F16",
    ("i", 8): "I64",
    ("i", 4): "I32",
    ("i", 2): "I16",
    ("i", 1): "I8",
    ("u", 8): "U64",
    ("u", 4): "U32",
    ("u", 2): "U16",
    ("u", 1): "U8",
    ("b", 1): "BOOL",
}
_ST_TO_NP = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U64": "<u8",
    "U32": "<u4",
    "U16": "<u2",
    "U8": "u1",
    "BOOL": "?",
}
# dtypes numpy has only through ml_dtypes (as safetensors.numpy reads them)
_ML_DTYPES = {"BF16": "bfloat16", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
_TORCH_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
}


def numpy_dtype_name(dtype: Any) -> str:
    """The safetensors name of a numpy dtype; ``TypeError`` for one it cannot hold."""
    name = _NP_TO_ST.get((dtype.kind, dtype.itemsize))
    if name is None:
        for st_name, ml_name in _ML_DTYPES.items():
            if dtype.name == ml_name:
                return st_name
        raise TypeError(
            f"cannot store a numpy array of dtype {dtype}: safetensors holds bool, integers "
            "and floats (bfloat16 and float8 through ml_dtypes)"
        )
    return name


def torch_dtype_name(dtype: Any) -> str:
    """The safetensors name of a torch dtype; ``TypeError`` for one it cannot hold."""
    text = str(dtype).removeprefix("torch.")
    for st_name, torch_name in _TORCH_NAMES.items():
        if text == torch_name:
            return st_name
    raise TypeError(f"cannot store a torch tensor of dtype {dtype}")


def header(dtype: str, shape: tuple[int, ...], n_bytes: int, fmt: str) -> bytes:
    """The 8-byte length and JSON header of a one-tensor file (padded to 8 bytes, as the
    safetensors library writes it)."""
    text = json.dumps(
        {
            "__metadata__": {"format": fmt},
            TENSOR_NAME: {"dtype": dtype, "shape": list(shape), "data_offsets": [0, n_bytes]},
        },
        separators=(",", ":"),
    ).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text


def encode_numpy(array: Any) -> tuple[bytes, memoryview]:
    """(header, data) of a numpy array (copied only when it is not C-contiguous or not
    little-endian)."""
    import numpy

    dtype = numpy_dtype_name(array.dtype)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    shape = array.shape
    if not array.flags.c_contiguous:
        array = numpy.ascontiguousarray(array)  # (which makes a 0-d array 1-d: keep `shape`)
    data = memoryview(array.reshape(-1).view(numpy.uint8)) if array.size else memoryview(b"")
    return header(dtype, shape, array.nbytes, "np"), data


def encode_torch(tensor: Any) -> tuple[bytes, memoryview]:
    """(header, data) of a torch tensor (moved to the CPU and made contiguous when needed)."""
    import torch

    dtype = torch_dtype_name(tensor.dtype)
    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    tensor = tensor.contiguous()
    n_bytes = tensor.numel() * tensor.element_size()
    if n_bytes:
        data = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
    else:
        data = memoryview(b"")
    return header(dtype, tuple(tensor.shape), n_bytes, "pt"), data


def _one_tensor(view: Any, key: str) -> tuple[str, list[int], int, int]:
    """(dtype, shape, start, end) of the tensor of a stored one-tensor file."""
    raw = memoryview(view)
    try:
        n = int.from_bytes(raw[:8], "little")
        meta = json.loads(bytes(raw[8 : 8 + n]))
        entry = meta[TENSOR_NAME]
        begin, end = entry["data_offsets"]
        return entry["dtype"], list(entry["shape"]), 8 + n + begin, 8 + n + end
    except (ValueError, KeyError, TypeError) as err:
        raise SafetensorsError(f"the value of {key!r} is not a one-tensor safetensors file: {err}")


def numpy_array(view: Any, dtype: str, shape: list[int], start: int, end: int, copy: bool) -> Any:
    """A numpy array over ``view[start:end]`` (read-only unless ``copy``)."""
    import numpy

    if dtype in _ML_DTYPES:
        try:
            import ml_dtypes  # noqa: F401  (registers the dtypes)
        except ImportError:
            raise TypeError(f"a {dtype} array needs the ml_dtypes package") from None
        np_dtype = numpy.dtype(_ML_DTYPES[dtype])
    else:
        np_dtype = numpy.dtype(_ST_TO_NP[dtype])
    count = (end - start) // np_dtype.itemsize
    array = numpy.frombuffer(view, dtype=np_dtype, count=count, offset=start).reshape(shape)
    return array.copy() if copy else array


def torch_tensor(view: Any, dtype: str, shape: list[int], start: int, end: int, copy: bool) -> Any:
    """A torch tensor over ``view[start:end]`` (sharing it unless ``copy``)."""
    import torch

    torch_dtype = getattr(torch, _TORCH_NAMES[dtype])
    if end == start:
        return torch.empty(shape, dtype=torch_dtype)
    with warnings.catch_warnings():
        # torch has no read-only tensors and warns about read-only buffers; copy=False documents
        # the contract (the caller must not write).
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(view, dtype=torch.uint8, count=end - start, offset=start)
    tensor = flat.view(torch_dtype).reshape(shape)
    return tensor.clone() if copy else tensor


def decode(view: Any, kind: int, key: str, copy: bool) -> Any:
    """The array or tensor a stored value of ``kind`` holds."""
    dtype, shape, start, end = _one_tensor(view, key)
    if kind == KIND_NUMPY:
        return numpy_array(view, dtype, shape, start, end, copy)
    return torch_tensor(view, dtype, shape, start, end, copy)


def is_numpy(value: Any) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, numpy.ndarray)


def is_torch(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)
