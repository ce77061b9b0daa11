"""Image feature extractors for the Fréchet distance, and offline language identification.

No pretrained vision network is available offline here, so the built-in extractors are
deterministic image statistics; any callable ``images -> [n, d]`` (e.g. an Inception or CLIP
adapter written in ``integration/``) plugs into :func:`mpm_bench.tasks.run_text_to_image` instead.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from mpm_bench.langs import normalize_lang

__all__ = ["ColorHistogramFeatures", "LangidIdentifier", "PixelFeatures"]


class PixelFeatures:
    """Downsampled RGB pixels in ``[0, 1]`` (``side * side * 3`` features).

    Args:
        side: the images are resized (box filter) to ``side x side`` first.
    """

    def __init__(self, *, side: int = 8) -> None:
        if side < 1:
            raise ValueError(f"side must be >= 1, got {side}")
        self.side = int(side)
        self.name = f"pixels{self.side}"

    def __call__(self, images: Sequence[Image.Image]) -> NDArray[np.float64]:
        if len(images) == 0:
            raise ValueError("no images to featurize")
        rows = [
            np.asarray(
                im.convert("RGB").resize((self.side, self.side), Image.Resampling.BOX), dtype=np.float64
            )
            for im in images
        ]
        return np.stack(rows).reshape(len(rows), -1) / 255.0


class ColorHistogramFeatures:
    """Joint RGB colour histogram (``bins**3`` features, each row sums to 1)."""

    def __init__(self, *, bins: int = 4) -> None:
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.bins = int(bins)
        self.name = f"colorhist{self.bins}"

    def __call__(self, images: Sequence[Image.Image]) -> NDArray[np.float64]:
        if len(images) == 0:
            raise ValueError("no images to featurize")
        out = np.zeros((len(images), self.bins**3))
        for i, im in enumerate(images):
            q = (np.asarray(im.convert("RGB"), dtype=np.int64) * self.bins) // 256
            idx = (q[..., 0] * self.bins + q[..., 1]) * self.bins + q[..., 2]
            out[i] = np.bincount(idx.ravel(), minlength=self.bins**3) / idx.size
        return out


@functools.lru_cache(maxsize=1)
def _langid_base() -> Any:
    # Loading langid's bundled model takes seconds: do it once per process.
    from langid.langid import LanguageIdentifier, model

    return LanguageIdentifier.from_modelstring(model, norm_probs=False)


@functools.lru_cache(maxsize=16)
def _langid_model(candidates: tuple[str, ...] | None) -> Any:
    base = _langid_base()
    if not candidates:
        return base
    unsupported = sorted(set(candidates) - set(base.nb_classes))
    if unsupported:
        raise ValueError(f"langid cannot identify {unsupported}; it knows {sorted(base.nb_classes)}")
    ident = copy.copy(base)  # set_languages rebinds (never mutates) the arrays, so a shallow copy is safe
    ident.set_languages(list(candidates))
    return ident


class LangidIdentifier:
    """Offline language identification with ``langid`` (ships its own model; 97 languages).

    Args:
        candidates: restrict the decision to these languages (recommended: the evaluated ones plus
            English, which makes short answers far less ambiguous). ``None`` keeps all 97.
    """

    def __init__(self, candidates: Sequence[str] | None = None) -> None:
        self.candidates = tuple(sorted({normalize_lang(c) for c in candidates})) if candidates else None
        self.name = "langid" + (f"[{','.join(self.candidates)}]" if self.candidates else "")

    def identify(self, text: str) -> str:
        """The ISO 639-1 code langid assigns to ``text`` (``"und"`` for text without letters)."""
        if not any(ch.isalpha() for ch in text):
            return "und"
        lang, _ = _langid_model(self.candidates).classify(text)
        return str(lang)
