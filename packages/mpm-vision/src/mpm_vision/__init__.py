"""mpm-vision: Vision encoders (timm), bridges into an LLM and a vision-language model over any causal LM"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mpm-vision")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
