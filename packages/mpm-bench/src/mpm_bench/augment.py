"""Deterministic augmentation of emoji images, with training and held-out seeds that never overlap.

One :class:`Augmentation` (scale, shift, rotation, background colour, blur) serves both training and
evaluation; what keeps them apart is the seed. :func:`train_seed` only returns seeds below 2**63 and
:func:`heldout_seed` only seeds at or above it, so a held-out view (the ``seen-aug`` evaluation set)
can never be a rendering the model was trained on, however many training views were drawn:

>>> aug = Augmentation()
>>> train_view = aug(image, train_seed("1F600", 3))          # doctest: +SKIP
>>> eval_view = aug(image, heldout_seed("1F600", 0))         # doctest: +SKIP

The same ``(image, seed)`` always gives the same pixels (numpy's PCG64 draws the parameters, Pillow
applies them), so augmented views can be cached: ``Augmentation`` has the ``cache_id`` that
mpm-vision's ``FeatureCache`` keys views by.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

__all__ = [
    "HELDOUT_SEED_BASE",
    "AugmentConfig",
    "Augmentation",
    "augment",
    "heldout_seed",
    "is_heldout_seed",
    "train_seed",
]

HELDOUT_SEED_BASE = 1 << 63
"""Held-out seeds are ``>= HELDOUT_SEED_BASE``; training seeds are below it."""
_MASK63 = HELDOUT_SEED_BASE - 1


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def train_seed(key: str, index: int) -> int:
    """The seed of training view ``index`` of item ``key`` (in ``[0, 2**63)``)."""
    return _digest(f"train:{key}:{int(index)}") & _MASK63


def heldout_seed(key: str, index: int) -> int:
    """The seed of held-out view ``index`` of item ``key`` (in ``[2**63, 2**64)``: never a training seed)."""
    return _digest(f"heldout:{key}:{int(index)}") | HELDOUT_SEED_BASE


def is_heldout_seed(seed: int) -> bool:
    """Whether ``seed`` lies in the held-out range."""
    return HELDOUT_SEED_BASE <= int(seed) < 2 * HELDOUT_SEED_BASE


@dataclass(frozen=True)
class AugmentConfig:
    """The range of each augmentation (round-trips to JSON).

    Attributes:
        scale: the drawing is resized by a factor drawn uniformly from this range.
        shift: maximum shift in each direction, as a fraction of the image side.
        rotation: maximum rotation in degrees (either way).
        background: probability that the white background becomes a random colour.
        blur: maximum Gaussian blur radius in pixels for a 64-pixel image (scaled with the side).
    """

    scale: tuple[float, float] = (0.7, 1.05)
    shift: float = 0.12
    rotation: float = 20.0
    background: float = 0.7
    blur: float = 1.0

    def __post_init__(self) -> None:
        lo, hi = (float(x) for x in self.scale)
        if not 0 < lo <= hi:
            raise ValueError(f"scale must be a range 0 < low <= high, got {self.scale}")
        object.__setattr__(self, "scale", (lo, hi))
        if not 0 <= self.shift < 0.5:
            raise ValueError(f"shift must be in [0, 0.5), got {self.shift}")
        if not 0 <= self.rotation <= 180:
            raise ValueError(f"rotation must be in [0, 180] degrees, got {self.rotation}")
        if not 0 <= self.background <= 1:
            raise ValueError(f"background must be a probability in [0, 1], got {self.background}")
        if self.blur < 0:
            raise ValueError(f"blur must be >= 0, got {self.blur}")

    def to_json(self) -> str:
        """JSON text of this config."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any]) -> AugmentConfig:
        """Inverse of :meth:`to_json` (the text or the parsed dict)."""
        data = dict(json.loads(text) if isinstance(text, str) else text)
        if "scale" in data:
            data["scale"] = tuple(data["scale"])
        return cls(**data)


def _background_weight(rgb: np.ndarray) -> np.ndarray:
    """How much of each pixel is white background: 1 on the white region connected to the border,
    fading over the anti-aliased rim next to it, 0 elsewhere (white inside a drawing stays white)."""
    from scipy import ndimage

    lo = rgb.min(axis=2).astype(np.float32)
    white = lo >= 250
    labels, _ = ndimage.label(white)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    region = np.isin(labels, border[border > 0])
    rim = ndimage.binary_dilation(region, iterations=2) & ~region
    weight = region.astype(np.float32)
    weight[rim] = np.clip((lo[rim] - 160.0) / 90.0, 0.0, 1.0)
    return weight


class Augmentation:
    """Scale, shift, rotation, background colour and blur of an RGB image on a white background,
    fully determined by ``seed`` (see :func:`train_seed` / :func:`heldout_seed`).

    ``cache_id`` names the augmentation and its config, for caches of augmented views.
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config or AugmentConfig()
        digest = hashlib.sha256(self.config.to_json().encode()).hexdigest()[:16]
        self.cache_id = f"mpm-bench/augment/v1/{digest}"

    def params(self, seed: int, size: int = 64) -> dict[str, Any]:
        """The parameters that ``seed`` draws for an image of side ``size`` (JSON-ready)."""
        seed = int(seed)
        if not 0 <= seed < 2**64:
            raise ValueError(f"seed must be in [0, 2**64), got {seed}")
        rng = np.random.Generator(np.random.PCG64(seed))
        cfg = self.config
        scale = float(rng.uniform(*cfg.scale))
        dx, dy = (float(v) for v in rng.uniform(-cfg.shift, cfg.shift, size=2) * size)
        angle = float(rng.uniform(-cfg.rotation, cfg.rotation))
        colour = [int(v) for v in rng.integers(0, 256, size=3)]
        recolour = bool(rng.random() < cfg.background)
        blur = float(rng.uniform(0.0, cfg.blur)) * size / 64.0
        return {
            "scale": scale,
            "shift": (round(dx), round(dy)),
            "rotation": angle,
            "background": tuple(colour) if recolour else (255, 255, 255),
            "blur": blur,
        }

    def __call__(self, image: Image.Image, seed: int) -> Image.Image:
        """The augmented RGB image (same size as ``image``)."""
        if image.width == 0 or image.height == 0:
            raise ValueError(f"cannot augment an empty image ({image.width}x{image.height} pixels)")
        rgb = image.convert("RGB")
        w, h = rgb.size
        p = self.params(seed, size=min(w, h))
        bg = p["background"]
        if bg != (255, 255, 255):
            arr = np.asarray(rgb).astype(np.float32)
            weight = _background_weight(arr.astype(np.uint8))[..., None]
            arr = arr + weight * (np.asarray(bg, dtype=np.float32) - 255.0)
            rgb = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
        sw, sh = max(1, round(w * p["scale"])), max(1, round(h * p["scale"]))
        scaled = rgb.resize((sw, sh), Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (w, h), bg)
        dx, dy = p["shift"]
        canvas.paste(scaled, ((w - sw) // 2 + dx, (h - sh) // 2 + dy))
        out = canvas.rotate(p["rotation"], resample=Image.Resampling.BICUBIC, fillcolor=bg)
        if p["blur"] > 0.05:
            out = out.filter(ImageFilter.GaussianBlur(p["blur"]))
        return out


def augment(image: Image.Image, seed: int, config: AugmentConfig | None = None) -> Image.Image:
    """``Augmentation(config)(image, seed)``."""
    return Augmentation(config)(image, seed)
