"""Frozen-encoder feature cache: compute a frozen encoder's features once, train on the stored ones.

When a training stage keeps the vision encoder frozen, its output for a given image (and a given
augmented view of it) never changes, so running it at every step is wasted work. A
:class:`FeatureCache` stores the features on disk, keyed by a content hash of

- the image's pixels (mode, size and raw bytes, so re-encoding a PNG does not change the key),
- the view: ``None`` for the image itself, or an :class:`ImageView`'s ``cache_id`` and the view seed,
- the encoder: its configuration, preprocessing, output kind (tokens or pooled) and every weight.

>>> cache = FeatureCache("cache/features", encoder)                        # doctest: +SKIP
>>> feats = cache.features(images, view=augment, seeds=[3, 3, 7])           # [B, N, C]  # doctest: +SKIP
>>> batch = vlm.collate([{"image_features": f, "prompt": p, "answer": a} for f, ... in ...])  # doctest: +SKIP
>>> loss = vlm.training_step(batch)        # the bridge and LM run; the encoder does not  # doctest: +SKIP

The first ``features`` call computes what is missing (one encoder forward per ``batch_size`` missing
images, in eval mode, without gradients) and stores it; later calls only read. Results equal the
uncached path (the tests check 1e-5). Storage is a folder per encoder fingerprint holding
safetensors chunks written atomically (temporary file, then rename); the keys of a chunk are in its
safetensors metadata, so there is no separate index to get out of step, and two processes filling
the same cache never overwrite each other's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from .encoders import VisionEncoder
from .processing import as_image_list

__all__ = ["FeatureCache", "ImageView", "encoder_fingerprint", "image_digest"]

_FORMAT = "mpm-vision/feature-cache/v1"


@runtime_checkable
class ImageView(Protocol):
    """A deterministic image transform, e.g. one augmentation: the same ``(image, seed)`` always gives
    the same image. ``cache_id`` names the transform and its settings (two views with different
    settings must have different ids); it is part of every cache key.

    mpm-bench's ``Augmentation`` satisfies this protocol.
    """

    cache_id: str

    def __call__(self, image: Image.Image, seed: int) -> Image.Image: ...


def image_digest(image: Any) -> str:
    """SHA-256 (hex) of an image's decoded pixels: mode, size and raw bytes.

    Accepts a PIL image or a uint8 array ``[H, W]`` / ``[H, W, C]``.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8, got dtype {image.dtype}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a uint8 array, got {type(image).__name__}")
    h = hashlib.sha256()
    h.update(f"{image.mode}:{image.size[0]}x{image.size[1]}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def encoder_fingerprint(encoder: VisionEncoder, *, pooled: bool = False) -> str:
    """SHA-256 (hex) of everything that decides an encoder's features: its config, its preprocessing,
    tokens vs pooled output, and every tensor of its state dict (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    h.update(encoder.config.to_json().encode())
    h.update(encoder.preprocessing.to_json().encode())
    h.update(b"pooled" if pooled else b"tokens")
    for name, tensor in sorted(encoder.model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{list(t.shape)}:".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """A disk cache of a frozen encoder's features (``[N, C]`` tokens, or ``[C]`` with ``pooled=True``).

    Args:
        directory: the cache root; features live in ``directory/<fingerprint[:16]>/``.
        encoder: the frozen encoder. Changing any of its weights afterwards changes nothing in an
            open cache; build a new ``FeatureCache`` (the fingerprint is taken here).
        pooled: store :meth:`VisionEncoder.pooled` vectors instead of the token features.
        batch_size: images per encoder forward when filling the cache.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        encoder: VisionEncoder,
        *,
        pooled: bool = False,
        batch_size: int = 64,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.encoder = encoder
        self.pooled = bool(pooled)
        self.batch_size = int(batch_size)
        self.fingerprint = encoder_fingerprint(encoder, pooled=self.pooled)
        self.directory = Path(directory) / self.fingerprint[:16]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.feature_shape: tuple[int, ...] = (
            (encoder.pooled_dim,) if self.pooled else (encoder.num_tokens, encoder.feature_dim)
        )
        self.hits = 0
        """Features served from the cache since it was opened."""
        self.misses = 0
        """Features computed by the encoder since it was opened."""
        self._index: dict[str, tuple[Path, int]] = {}
        self._chunks: dict[Path, torch.Tensor] = {}
        self._scan()

    # ------------------------------------------------------------------------------------------
    def _scan(self) -> None:
        from safetensors import safe_open

        for path in sorted(self.directory.glob("chunk-*.safetensors")):
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            if meta.get("format") != _FORMAT or meta.get("fingerprint") != self.fingerprint:
                continue  # not ours (another format or a hash-prefix collision): ignore it
            for row, key in enumerate(json.loads(meta["keys"])):
                self._index.setdefault(key, (path, row))

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def key(self, image: Any, *, seed: int | None = None, view: ImageView | None = None) -> str:
        """The cache key of ``image`` (or of its ``view`` with ``seed``) under this encoder."""
        if (view is None) != (seed is None):
            raise ValueError("pass both view and seed (an augmented view) or neither (the image itself)")
        view_part = "" if view is None else f"{view.cache_id}:{int(seed)}"  # type: ignore[arg-type]
        text = f"{self.fingerprint}|{image_digest(image)}|{view_part}"
        return hashlib.sha256(text.encode()).hexdigest()

    def lookup(self, keys: Sequence[str]) -> torch.Tensor:
        """Stored features for ``keys`` (``[len(keys), *feature_shape]``); a missing key raises
        ``KeyError`` naming how many are missing."""
        missing = [k for k in keys if k not in self._index]
        if missing:
            raise KeyError(
                f"{len(missing)} of {len(keys)} keys are not in the feature cache, e.g. {missing[0]}"
            )
        rows = [self._row(k) for k in keys]
        self.hits += len(keys)
        if not rows:
            return torch.empty(0, *self.feature_shape)
        return torch.stack(rows)

    def _row(self, key: str) -> torch.Tensor:
        path, row = self._index[key]
        chunk = self._chunks.get(path)
        if chunk is None:
            from safetensors.torch import load_file

            chunk = load_file(str(path))["features"]
            self._chunks[path] = chunk
        return chunk[row]

    # ------------------------------------------------------------------------------------------
    def features(
        self,
        images: Any,
        *,
        seeds: Sequence[int] | None = None,
        view: ImageView | None = None,
    ) -> torch.Tensor:
        """Features of ``images`` (or of their ``view`` under ``seeds``, one seed per image), computing
        and storing whatever is not cached yet. Returns ``[B, *feature_shape]`` on the CPU."""
        items = as_image_list(images)
        if (view is None) != (seeds is None):
            raise ValueError("pass both view and seeds (augmented views) or neither (the images themselves)")
        if seeds is not None and len(seeds) != len(items):
            raise ValueError(f"got {len(seeds)} seeds for {len(items)} images (one seed per image)")
        seed_list: list[int | None] = [int(s) for s in seeds] if seeds is not None else [None] * len(items)
        return self.lookup(self._ensure(items, seed_list, view))

    def fill(
        self,
        images: Iterable[Any],
        *,
        views: int = 0,
        seed_fn: Callable[[int, int], int] | None = None,
        view: ImageView | None = None,
        include_original: bool = True,
    ) -> int:
        """Precompute a dataset: every image (``include_original``) and ``views`` augmented views of it.

        ``seed_fn(index, view_number) -> seed`` gives the seed of view ``v`` of the ``index``-th
        image (e.g. built on mpm-bench's ``train_seed``); required with ``views > 0``. Returns the
        number of features computed (0 when everything was cached already).
        """
        if views and (view is None or seed_fn is None):
            raise ValueError("views > 0 needs view= (the augmentation) and seed_fn=(index, view) -> seed")
        before = self.misses
        items: list[Any] = []
        item_seeds: list[int | None] = []
        for i, img in enumerate(images):
            if include_original:
                items.append(img)
                item_seeds.append(None)
            for v in range(views):
                assert seed_fn is not None
                items.append(img)
                item_seeds.append(int(seed_fn(i, v)))
            if len(items) >= self.batch_size:
                self._ensure(items, item_seeds, view)
                items, item_seeds = [], []
        if items:
            self._ensure(items, item_seeds, view)
        return self.misses - before

    def _ensure(self, items: list[Any], seeds: list[int | None], view: ImageView | None) -> list[str]:
        """Keys of ``items`` (their ``view`` where a seed is given), computing the missing ones."""
        keys = [self.key(img, seed=s, view=view if s is not None else None) for img, s in zip(items, seeds)]
        todo: dict[str, tuple[Any, int | None]] = {}
        for k, img, s in zip(keys, items, seeds):
            if k not in self._index and k not in todo:
                todo[k] = (img, s)
        if todo:
            self._compute(list(todo.items()), view)
        return keys

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _compute(self, todo: list[tuple[str, tuple[Any, int | None]]], view: ImageView | None) -> None:
        enc = self.encoder
        was_training = enc.training
        enc.eval()
        param = next(enc.parameters(), None)
        try:
            for start in range(0, len(todo), self.batch_size):
                part = todo[start : start + self.batch_size]
                pil = []
                for _, (img, seed) in part:
                    if seed is not None and view is not None:
                        img = view(img if isinstance(img, Image.Image) else Image.fromarray(img), seed)
                    pil.append(img)
                pixels = enc.preprocess(pil)
                if param is not None:
                    pixels = pixels.to(device=param.device, dtype=param.dtype)
                out = enc.pooled(pixels) if self.pooled else enc(pixels)
                self._write([k for k, _ in part], out.float().cpu().contiguous())
                self.misses += len(part)
        finally:
            enc.train(was_training)

    def _write(self, keys: list[str], feats: torch.Tensor) -> None:
        from safetensors.torch import save_file

        if tuple(feats.shape[1:]) != self.feature_shape:
            raise RuntimeError(
                f"encoder gave features {list(feats.shape[1:])}, expected {list(self.feature_shape)}"
            )
        path = self.directory / f"chunk-{uuid.uuid4().hex}.safetensors"
        fd, tmp = tempfile.mkstemp(prefix=".chunk-", suffix=".tmp", dir=self.directory)
        os.close(fd)
        try:
            meta = {"format": _FORMAT, "fingerprint": self.fingerprint, "keys": json.dumps(keys)}
            save_file({"features": feats}, tmp, metadata=meta)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._chunks[path] = feats
        for row, key in enumerate(keys):
            self._index.setdefault(key, (path, row))
