"""Reference models that need no weights: a seeded random baseline and an oracle upper bound.

They implement all three protocols, so every task and the whole CLI can be exercised without a
trained model, and they bracket a real model on the leaderboard (chance level and ceiling).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from mpm_bench.interfaces import Example

__all__ = ["OracleBaseline", "RandomBaseline", "image_digest"]


def image_digest(image: Image.Image) -> str:
    """SHA-1 of an image's mode, size and pixels (identifies a dataset image)."""
    h = hashlib.sha1(f"{image.mode}{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def _unit(*parts: str) -> float:
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class RandomBaseline:
    """Chance level: deterministic pseudo-random answers, scores and images.

    Args:
        vocabulary: ``{lang: [texts]}`` to draw captions from (default: echo nothing useful, the
            answer is the English word ``"emoji"``).
        seed: changes every draw.
    """

    def __init__(self, *, vocabulary: dict[str, list[str]] | None = None, seed: int = 0) -> None:
        self.vocabulary = vocabulary or {}
        self.seed = seed
        self.name = f"random(seed={seed})"

    def caption(self, images: Sequence[Image.Image], prompt: str, lang: str) -> list[str]:
        words = self.vocabulary.get(lang) or ["emoji"]
        return [words[int(_unit(str(self.seed), image_digest(im), prompt) * len(words))] for im in images]

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> NDArray[np.float64]:
        digests = [image_digest(im) for im in images]
        return np.array([[_unit(str(self.seed), d, t) for t in texts] for d in digests])

    def paint(self, prompts: Sequence[str], lang: str, seed: int) -> list[Image.Image]:
        out = []
        for i, prompt in enumerate(prompts):
            rng = np.random.default_rng([self.seed, seed, i, int(_unit(prompt) * 2**31)])
            out.append(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB"))
        return out


class OracleBaseline:
    """Ceiling: knows the dataset, so it answers with the true name, scores the true pairing 1 and
    paints the dataset image. Unknown images get an empty answer and score 0.
    """

    def __init__(self, dataset: Sequence[Example]) -> None:
        self._names = {image_digest(ex.image): dict(ex.names) for ex in dataset}
        self._images: dict[tuple[str, str], Image.Image] = {}
        for ex in dataset:
            for lang, name in ex.names.items():
                self._images.setdefault((lang, name), ex.image)
        self.name = "oracle"

    def caption(self, images: Sequence[Image.Image], prompt: str, lang: str) -> list[str]:
        return [self._names.get(image_digest(im), {}).get(lang, "") for im in images]

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> NDArray[np.float64]:
        known = [set(self._names.get(image_digest(im), {}).values()) for im in images]
        return np.array([[1.0 if t in names else 0.0 for t in texts] for names in known])

    def paint(self, prompts: Sequence[str], lang: str, seed: int) -> list[Image.Image]:
        blank = Image.new("RGB", (64, 64), "white")
        return [self._images.get((lang, p), blank) for p in prompts]
