"""Adapters from package outputs to mpm-bench's protocols.

mpm-bench evaluates through three small protocols (``Captioner``, ``Scorer``, ``Painter``) and
imports no model package; mpm-vision and mpm-paint know nothing of mpm-bench. These classes are the
only place where the two sides meet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from mpm_paint import MPMPaintPipeline
from mpm_vision import VisionLanguageModel

DEFAULT_PROMPT = "<image>\nWhat is this?"


class VLMScorer:
    """``mpm_bench.Scorer`` (and ``CandidateScorer``): the mean log-probability per token of each text as
    the model's answer to ``prompt``, from :meth:`mpm_vision.VisionLanguageModel.answer_logprobs`
    (each image encoded once; its prefix cached and reused for every text unless
    ``use_prefix_cache=False``).

    Args:
        model: a :class:`mpm_vision.VisionLanguageModel`.
        prompt: the question every text answers (must hold the model's image token once).
        batch_size: (image, text) rows per forward pass.
        use_prefix_cache: share the prefix's key/value cache between the texts of an image.
    """

    def __init__(
        self,
        model: VisionLanguageModel,
        *,
        prompt: str = DEFAULT_PROMPT,
        batch_size: int = 32,
        use_prefix_cache: bool = True,
    ) -> None:
        if prompt.count(model.config.image_token) != 1:
            raise ValueError(
                f"prompt must contain the image token {model.config.image_token!r} exactly once: {prompt!r}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.prompt = prompt
        self.batch_size = batch_size
        self.use_prefix_cache = use_prefix_cache

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """A ``[len(images), len(texts)]`` matrix; higher means the text is a likelier answer."""
        if not texts:
            raise ValueError("score() needs at least one text")
        if not images:
            raise ValueError("score() needs at least one image")
        out = self.model.answer_logprobs(
            list(images),
            self.prompt,
            list(texts),
            batch_size=self.batch_size,
            use_prefix_cache=self.use_prefix_cache,
        )
        return out.mean.cpu().numpy()

    def score_candidates(
        self, images: Sequence[Image.Image], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        """Each image against its own candidate texts (``mpm_bench.CandidateScorer``): one vector per
        image, batched across images, each distinct text tokenized once."""
        if len(candidates) != len(images):
            raise ValueError(f"{len(images)} images but {len(candidates)} candidate lists")
        if not images:
            raise ValueError("score_candidates() needs at least one image")
        if any(len(c) == 0 for c in candidates):
            raise ValueError("every image needs at least one candidate text")
        texts = list(dict.fromkeys(t for c in candidates for t in c))
        index = {t: k for k, t in enumerate(texts)}
        pairs = [(i, index[t]) for i, c in enumerate(candidates) for t in c]
        flat = (
            self.model.answer_logprobs(
                list(images),
                self.prompt,
                texts,
                pairs=pairs,
                batch_size=self.batch_size,
                use_prefix_cache=self.use_prefix_cache,
            )
            .mean.cpu()
            .numpy()
        )
        ends = np.cumsum([len(c) for c in candidates])
        return [flat[e - len(c) : e] for e, c in zip(ends, candidates, strict=True)]


class CachedScorer:
    """A ``mpm_bench.Scorer`` (and ``CandidateScorer``) that scores each (image, text) pair once.

    ``run_classification`` asks the first ``all_candidates`` images about the whole gallery after it
    asked every image about its own candidates, and most gallery pairs were among those candidates
    (44 of 64 per language in the default reproduction). Wrapping a costly scorer for the length of
    one evaluation call scores only the pairs it has not seen; the numbers are the wrapped scorer's
    (up to the last float bits that another batch composition may give).

    Images are recognised by their pixels, mode and size (a hash), texts by their string. The model
    behind ``scorer`` must not change while the wrapper lives: make a new one after training.

    Args:
        scorer: any ``Scorer``; ``score_candidates`` is used when it has one (else ``score`` per image).
    """

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.name = getattr(scorer, "name", type(scorer).__name__)
        self._memo: dict[tuple[bytes, str], float] = {}
        self.scored = 0
        """How many pairs the wrapped scorer was asked for (the rest came from the memo)."""

    @staticmethod
    def _key(image: Image.Image) -> bytes:
        h = hashlib.blake2b(image.tobytes(), digest_size=16)
        h.update(f"{image.mode}{image.size}".encode())
        return h.digest()

    def score_candidates(
        self, images: Sequence[Image.Image], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        """Each image against its own candidate texts; only pairs not scored before reach the scorer."""
        if len(candidates) != len(images):
            raise ValueError(f"{len(images)} images but {len(candidates)} candidate lists")
        keys = [self._key(im) for im in images]
        missing = [
            [t for t in dict.fromkeys(c) if (k, t) not in self._memo] for k, c in zip(keys, candidates)
        ]
        todo = [i for i, m in enumerate(missing) if m]
        if todo:
            fn = getattr(self.scorer, "score_candidates", None)
            if callable(fn):
                got = list(fn([images[i] for i in todo], [missing[i] for i in todo]))
            else:
                got = [np.asarray(self.scorer.score([images[i]], missing[i]))[0] for i in todo]
            for i, row in zip(todo, got, strict=True):
                row = np.asarray(row, dtype=np.float64).reshape(-1)
                if row.shape != (len(missing[i]),):
                    raise ValueError(f"the scorer returned {row.shape[0]} scores for {len(missing[i])} texts")
                self._memo.update({(keys[i], t): float(v) for t, v in zip(missing[i], row, strict=True)})
                self.scored += len(missing[i])
        return [np.array([self._memo[(k, t)] for t in c], dtype=np.float64) for k, c in zip(keys, candidates)]

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """A ``[len(images), len(texts)]`` matrix, from the memo where it can."""
        if not texts:
            raise ValueError("score() needs at least one text")
        rows = self.score_candidates(images, [list(texts)] * len(images))
        return np.stack(rows) if rows else np.zeros((0, len(texts)))


class VLMCaptioner:
    """``mpm_bench.Captioner``: greedy answers of a :class:`~mpm_vision.VisionLanguageModel`.

    The bench prompt is prefixed with the image token when it has none.
    """

    def __init__(
        self, model: VisionLanguageModel, *, max_new_tokens: int = 12, **generation_kwargs: Any
    ) -> None:
        self.model = model
        self.generation_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False, **generation_kwargs}

    @torch.no_grad()
    def caption(self, images: Sequence[Image.Image], prompt: str, lang: str) -> list[str]:
        token = self.model.config.image_token
        text = prompt if token in prompt else f"{token}\n{prompt}"
        out = self.model.generate([[im] for im in images], [text] * len(images), **self.generation_kwargs)
        return [t.strip() for t in out.texts]


class PipelinePainter:
    """``mpm_bench.Painter``: an :class:`~mpm_paint.MPMPaintPipeline` with fixed sampling settings."""

    def __init__(
        self,
        pipeline: MPMPaintPipeline,
        *,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        height: int | None = None,
        width: int | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.kwargs: dict[str, Any] = {
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "height": height,
            "width": width,
        }

    @torch.no_grad()
    def paint(self, prompts: Sequence[str], lang: str, seed: int) -> list[Image.Image]:
        generator = torch.Generator().manual_seed(seed)
        out = self.pipeline(list(prompts), generator=generator, output_type="pil", **self.kwargs)
        return list(out.images)  # type: ignore[union-attr]
