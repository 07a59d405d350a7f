"""``load_file`` and ``save_file``: drop-ins for ``safetensors.torch`` (and ``safetensors.numpy``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from . import _tensors, _vbus


def load_file(
    path: str | os.PathLike[str],
    device: Any = "cpu",
    *,
    framework: str = "pt",
) -> dict[str, Any]:
    """The tensors of the safetensors file at ``path``, by name.

    The file is read whole with the GIL released and its header checked (a file that is not
    safetensors, is truncated, or whose offsets lie is refused with the reason); the tensors share
    that one buffer, writable. ``framework`` is ``"pt"`` (torch tensors, moved to ``device``) or
    ``"np"`` (numpy arrays).
    """
    if framework not in ("pt", "np"):
        raise ValueError(f"framework is 'pt' or 'np', not {framework!r}")
    header_text, view, start = _vbus.read_safetensors(os.fspath(path))
    header = json.loads(header_text)
    header.pop("__metadata__", None)
    make = _tensors.numpy_array if framework == "np" else _tensors.torch_tensor
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        tensors[name] = make(view, entry["dtype"], entry["shape"], start + begin, start + end, False)
    if framework == "pt" and str(device) != "cpu":
        tensors = {name: tensor.to(device) for name, tensor in tensors.items()}
    return tensors


def save_file(
    tensors: Mapping[str, Any],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Writes ``tensors`` (torch tensors or numpy arrays, by name) as a safetensors file at
    ``path``, atomically: a reader sees the old file or the new one, never a part."""
    entries: dict[str, Any] = {}
    if metadata:
        entries["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    parts = []
    offset = 0
    for name in sorted(tensors):
        value = tensors[name]
        if _tensors.is_torch(value):
            head, data = _tensors.encode_torch(value)
        elif _tensors.is_numpy(value):
            head, data = _tensors.encode_numpy(value)
        else:
            raise TypeError(
                f"tensor {name!r} is a {type(value).__qualname__}, not a torch tensor or a "
                "numpy array"
            )
        one = json.loads(head[8:])[_tensors.TENSOR_NAME]
        entries[name] = {
            "dtype": one["dtype"],
            "shape": one["shape"],
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        parts.append(data)
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    _vbus.write_file_parts(os.fspath(path), [len(text).to_bytes(8, "little") + text, *parts])
