"""lifecycled: session lifetime and inactivity deadlines kept in Redis."""

from importlib import metadata

try:
    __version__ = metadata.version("lifecycled")
except metadata.PackageNotFoundError:  # pragma: no cover - source tree without install
    __version__ = "0.0.0"
