"""VBUS's exceptions.

Every one is a :class:`VBusError`; each also derives from the built-in that fits, so code that
catches ``KeyError``, ``ValueError``, ``MemoryError`` or ``OSError`` keeps working.
"""

from __future__ import annotations


class VBusError(Exception):
    """Base of every VBUS error."""


class ConfigError(VBusError, ValueError):
    """The config was refused; the message names the key and the allowed values."""


class InvalidKeyError(VBusError, ValueError):
    """A key or dataset name was refused (empty, ``..``, absolute, NUL, too long, ...)."""


class KeyNotFoundError(VBusError, KeyError):
    """No tier holds the key (``cache[key]``, ``del cache[key]``)."""

    def __str__(self) -> str:  # KeyError quotes its argument; say it plainly
        return str(self.args[0]) if self.args else ""


class TooLargeError(VBusError, MemoryError):
    """The value is larger than a tier can ever hold."""


class IntegrityError(VBusError):
    """Stored bytes failed their checksum; they were not served (the file is quarantined)."""


class HomeLockedError(VBusError):
    """Another process owns the home; the message names its pid."""


class ClosedError(VBusError, ValueError):
    """The CacheManager was closed, or used in a child process after ``fork``."""


class SafetensorsError(VBusError, ValueError):
    """A file is not a safetensors file that can be read; the message says why."""


class DeviceError(VBusError):
    """Device memory or a copy to or from it failed."""


class VBusOSError(VBusError, OSError):
    """An I/O error; the message names the file."""


class VBusFileNotFoundError(VBusOSError, FileNotFoundError):
    """A file does not exist."""


class VBusPermissionError(VBusOSError, PermissionError):
    """A file may not be read or written."""


__all__ = [
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
    "VBusFileNotFoundError",
    "VBusOSError",
    "VBusPermissionError",
]
