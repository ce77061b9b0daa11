"""mpm-paint: Diffusion decoder conditioned on multilingual LLM hidden states (diffusers)"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mpm-paint")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
