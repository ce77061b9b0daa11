"""mpm: the integration layer of the mpm toolkit.

The only code that imports several mpm packages: builders from config files, the offline model zoo,
the MPM reproduction recipe and the ``mpm`` command line.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mpm-integration")
except PackageNotFoundError:  # source tree, not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
