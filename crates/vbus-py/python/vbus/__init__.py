"""VBUS: a GPU machine's memory hierarchy for ML data (VRAM, RAM, disk), in this process.

>>> from vbus import CacheManager
>>> cache = CacheManager(home="VBUS")            # doctest: +SKIP
>>> cache.put("model_weights", weights)          # doctest: +SKIP
>>> data = cache.get("model_weights")            # L1, then L2, then L3  # doctest: +SKIP
"""

from __future__ import annotations

from . import errors
from ._files import load_file, save_file
from ._manager import CacheManager
from ._vbus import __version__
from .errors import (
    ClosedError,
    ConfigError,
    DeviceError,
    HomeLockedError,
    IntegrityError,
    InvalidKeyError,
    KeyNotFoundError,
    SafetensorsError,
    TooLargeError,
    VBusError,
)

__all__ = [
    "CacheManager",
    "ClosedError",
    "ConfigError",
    "DeviceError",
    "HomeLockedError",
    "IntegrityError",
    "InvalidKeyError",
    "KeyNotFoundError",
    "SafetensorsError",
    "TooLargeError",
    "VBusError",
    "__version__",
    "errors",
    "load_file",
    "save_file",
]
