"""Adapters from package outputs to mpm-bench's protocols.

mpm-bench evaluates through three small protocols (``Captioner``, ``Scorer``, ``Painter``) and
imports no model package; mpm-vision and mpm-paint know nothing of mpm-bench. These classes are the
only place where the two sides meet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mpm_paint import MPMPaintPipeline
from mpm_vision import IGNORE_INDEX, VisionLanguageModel

DEFAULT_PROMPT = "<image>\nWhat is this?"


class VLMScorer:
    """``mpm_bench.Scorer``: the mean log-probability per token of each text as the model's answer.

    Each image is encoded once; its bridge outputs are reused for every candidate text
    (``image_embeds=``), and logits are computed only at the answer positions.

    Args:
        model: a :class:`mpm_vision.VisionLanguageModel`.
        prompt: the question every text answers (must hold the model's image token once).
        batch_size: texts scored per forward pass.
    """

    def __init__(
        self, model: VisionLanguageModel, *, prompt: str = DEFAULT_PROMPT, batch_size: int = 32
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

    @torch.no_grad()
    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """A ``[len(images), len(texts)]`` matrix; higher means the text is a likelier answer.

        Every (image, text) pair is one row; rows are batched ``batch_size`` at a time across images,
        each row reading its image's precomputed bridge outputs.
        """
        if not texts:
            raise ValueError("score() needs at least one text")
        if not images:
            raise ValueError("score() needs at least one image")
        model = self.model
        was_training = model.training
        model.eval()
        try:
            embeds = model.encode_images(model.preprocess(list(images)))  # [I, K, D]
            # Tokenize each text once (as the answer to the prompt); rows reuse these tensors.
            batch = model.collate([{"image": images[0], "prompt": self.prompt, "answer": t} for t in texts])
            assert batch.labels is not None
            pairs = [(i, j) for i in range(len(images)) for j in range(len(texts))]
            flat = np.zeros(len(pairs), dtype=np.float64)
            for start in range(0, len(pairs), self.batch_size):
                rows = pairs[start : start + self.batch_size]
                img_idx = torch.tensor([i for i, _ in rows])
                txt_idx = torch.tensor([j for _, j in rows])
                mask = batch.attention_mask[txt_idx]
                width = int(mask.sum(1).max())  # right padding: trim to the longest row of this chunk
                ids = batch.input_ids[txt_idx, :width].to(model.device)
                labels = batch.labels[txt_idx, :width].to(model.device)
                mask = mask[:, :width].to(model.device)
                valid = labels[:, 1:] != IGNORE_INDEX
                res = model(input_ids=ids, attention_mask=mask, labels=labels, image_embeds=embeds[img_idx])
                assert res.logits is not None
                targets = labels[:, 1:][valid]
                logp = F.log_softmax(res.logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
                sums = torch.zeros(len(rows), dtype=torch.float64, device=logp.device)
                sums.index_add_(0, valid.nonzero()[:, 0], logp.double())
                flat[start : start + len(rows)] = (sums / valid.sum(1).clamp(min=1).double()).cpu().numpy()
            return flat.reshape(len(images), len(texts))
        finally:
            model.train(was_training)


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
