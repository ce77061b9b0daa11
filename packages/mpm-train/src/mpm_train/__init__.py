"""mpm-train: Staged training on webdataset shards, single process or torchrun (DDP/FSDP), exact resume"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mpm-train")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
