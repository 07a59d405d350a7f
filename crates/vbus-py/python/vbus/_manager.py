"""``CacheManager``: the tiers of one VBUS home (L1 VRAM, L2 RAM, L3 disk), in this process."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from . import _tensors, _vbus
from .errors import ClosedError, KeyNotFoundError

_MISSING: Any = object()


def _encode(value: Any) -> tuple[int, bytes | None, Any]:
    """(kind, header or None, bytes-like) of a value to store."""
    if isinstance(value, bytes):
        return _tensors.KIND_BYTES, None, value
    if _tensors.is_numpy(value):
        head, data = _tensors.encode_numpy(value)
        return _tensors.KIND_NUMPY, head, data
    if _tensors.is_torch(value):
        head, data = _tensors.encode_torch(value)
        return _tensors.KIND_TORCH, head, data
    try:
        view = memoryview(value)
    except TypeError:
        view = None
    if view is not None:
        if view.contiguous and view.c_contiguous:
            return _tensors.KIND_BYTES, None, view.cast("B") if view.format != "B" or view.ndim != 1 else view
        return _tensors.KIND_BYTES, None, view.tobytes()
    if hasattr(value, "__dlpack__"):
        import numpy

        head, data = _tensors.encode_numpy(numpy.from_dlpack(value))
        return _tensors.KIND_NUMPY, head, data
    raise TypeError(
        f"cannot store a value of type {type(value).__module__}.{type(value).__qualname__}: "
        "give bytes, a buffer, a numpy array, a torch tensor or an object with __dlpack__"
    )


def _check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"a key is a str, not {type(key).__qualname__}")
    return key


class CacheManager:
    """The tiered cache of one VBUS home, open in this process.

    ``config`` is the config as a dict (the keys of ``CONFIG/vbus_config.json``:
    ``cache_hierarchy``, ``bus_config``, ...), a path to a config file, or ``None`` for the
    home's own. The home is ``home``, else ``$VBUS_HOME``, else ``./VBUS``; it is created the
    first time as ``vbus init`` creates it. One process owns a home at a time.

    Values are ``bytes`` (and any buffer), numpy arrays and torch tensors; each comes back as the
    kind it was put as (buffers as ``bytes``). Keys are ``"name"`` or ``"dataset/path"``.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | str | os.PathLike[str] | None = None,
        *,
        home: str | os.PathLike[str] | None = None,
    ) -> None:
        home_arg = None if home is None else os.fspath(home)
        if config is None:
            node = _vbus.Node(home_arg)
        elif isinstance(config, Mapping):
            node = _vbus.Node(home_arg, config_json=json.dumps(config))
        elif isinstance(config, (str, os.PathLike)):
            node = _vbus.Node(home_arg, config_path=os.fspath(config))
        else:
            raise TypeError(
                f"config is a dict, a path or None, not {type(config).__qualname__}"
            )
        self._node = node
        self._pid = os.getpid()

    def _n(self) -> Any:
        if self._pid != os.getpid():
            raise ClosedError(
                f"this CacheManager was opened in process {self._pid}; after fork, the child "
                "opens its own (on another home) rather than touching the parent's threads"
            )
        return self._node

    @property
    def home(self) -> str:
        """The home's root directory."""
        return os.fspath(self._node.home)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return bool(self._node.closed)

    def put(self, key: str, value: Any) -> int:
        """Stores ``value`` under ``key``; returns its version (it rises with every put).

        The bytes are read with the GIL released: do not change the object from another
        thread during the call.
        """
        kind, head, data = _encode(value)
        node = self._n()
        if head is None:
            return node.put(_check_key(key), data, kind)
        return node.put_parts(_check_key(key), head, data, kind)

    def get(
        self,
        key: str,
        default: Any = None,
        *,
        device: Any = None,
        copy: bool = True,
    ) -> Any:
        """The value of ``key`` from the fastest tier that holds it (L1, L2, then L3), or
        ``default``.

        With ``copy=False`` the value shares the cache's memory: a read-only ``memoryview``
        for bytes, a numpy array with ``writeable=False``; a torch tensor then shares it too,
        and the caller must not write to it. ``device`` (``"cuda"``, a ``torch.device``) gives
        a torch tensor on that device.
        """
        found = self._n().get(_check_key(key), copy)
        if found is None:
            return default
        value, kind = found
        if kind == _tensors.KIND_BYTES:
            result = value if copy else memoryview(value)
        elif kind in (_tensors.KIND_NUMPY, _tensors.KIND_TORCH):
            result = _tensors.decode(value, kind, key, copy)
        else:
            raise ValueError(
                f"the value of {key!r} has kind {kind}, which this version of vbus does not know"
            )
        if device is not None and str(device) != "cpu":
            import torch

            if not isinstance(result, torch.Tensor):
                result = torch.as_tensor(
                    result if kind != _tensors.KIND_BYTES else bytearray(result)
                )
            result = result.to(device)
        return result

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _MISSING)
        if value is _MISSING:
            raise KeyNotFoundError(f"no tier holds {key!r}")
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self.put(key, value)

    def __delitem__(self, key: str) -> None:
        if not self.delete(key):
            raise KeyNotFoundError(f"no tier holds {key!r}")

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(self._n().contains(key))

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def delete(self, key: str) -> bool:
        """Removes ``key`` from every tier; whether it was there."""
        return bool(self._n().delete(_check_key(key)))

    def keys(self, dataset: str | None = None) -> list[str]:
        """The keys of ``dataset``, or of every dataset (flat names for the default one)."""
        return list(self._n().keys(dataset))

    def pin(self, key: str) -> bool:
        """Keeps ``key`` in L2 and L3 (never evicted); whether it exists."""
        return bool(self._n().pin(_check_key(key)))

    def unpin(self, key: str) -> bool:
        """Lets ``key`` be evicted again; whether it exists."""
        return bool(self._n().unpin(_check_key(key)))

    def prefetch(self, keys: Iterable[str]) -> int:
        """Loads ``keys`` into L2 in the background, in this order; how many were queued (the
        bounded queue drops the rest)."""
        return int(self._n().prefetch([_check_key(key) for key in keys]))

    def flush(self) -> None:
        """Writes every write-back value to L3 (durable when this returns)."""
        self._n().flush()

    def get_stats(self) -> dict[str, Any]:
        """The figures of ``/v1/stats``: ``l1_hit_rate``, ``l2_hit_rate``, ``l3_hit_rate`` (in
        percent), and per tier (``tiers``), moves between tiers (``moves``) and more."""
        return json.loads(self._n().stats_json())

    def close(self) -> None:
        """Writes the write-back values to L3, checkpoints the state bus and releases the home.
        Values handed out stay valid. A second call does nothing."""
        self._node.close()

    def __enter__(self) -> CacheManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<vbus.CacheManager {state} home={self.home!r}>"
