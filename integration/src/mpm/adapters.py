"""Adapters from package outputs to mpm-bench's protocols.

mpm-bench evaluates through three small protocols (``Captioner``, ``Scorer``, ``Painter``) and
imports no model package; mpm-vision and mpm-paint know nothing of mpm-bench. These classes are the
only place where the two sides meet.
"""

from __future__ import annotations

import copy
import inspect
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
    """``mpm_bench.Scorer`` (and ``CandidateScorer``): the mean log-probability per token of each text as the model's answer.

    Each image is encoded once. By default the shared prefix (the image tokens and the prompt) also runs
    through the LLM once per image: its key/value cache is reused for every candidate text, so only the
    answer tokens are computed per (image, text) pair, and logits only where a token is scored. With
    ``use_prefix_cache=False`` (or an LM whose forward returns no cache) each pair runs the whole
    sequence instead; both give the same scores up to float rounding (tested).

    Args:
        model: a :class:`mpm_vision.VisionLanguageModel`.
        prompt: the question every text answers (must hold the model's image token once).
        batch_size: texts scored per forward pass.
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

    @torch.no_grad()
    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """A ``[len(images), len(texts)]`` matrix; higher means the text is a likelier answer."""
        if not texts:
            raise ValueError("score() needs at least one text")
        if not images:
            raise ValueError("score() needs at least one image")
        pairs = [(i, j) for i in range(len(images)) for j in range(len(texts))]
        return self._score_pairs(images, texts, pairs).reshape(len(images), len(texts))

    @torch.no_grad()
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
        flat = self._score_pairs(images, texts, pairs)
        ends = np.cumsum([len(c) for c in candidates])
        return [flat[e - len(c) : e] for e, c in zip(ends, candidates, strict=True)]

    def _score_pairs(
        self, images: Sequence[Image.Image], texts: Sequence[str], pairs: Sequence[tuple[int, int]]
    ) -> np.ndarray:
        """Scores of ``(image index, text index)`` pairs, in their order."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            embeds = model.encode_images(model.preprocess(list(images)))  # [I, K, D]
            # Tokenize each text once (as the answer to the prompt, right-padded); rows reuse these tensors.
            batch = model.collate([{"image": images[0], "prompt": self.prompt, "answer": t} for t in texts])
            assert batch.labels is not None
            args = (embeds, batch.input_ids, batch.attention_mask, batch.labels, pairs)
            if self.use_prefix_cache:
                out = self._pairs_with_prefix_cache(*args)
                if out is not None:
                    return out
            return self._pairs_full(*args)
        finally:
            model.train(was_training)

    def _pairs_full(
        self,
        embeds: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        pairs: Sequence[tuple[int, int]],
    ) -> np.ndarray:
        """Every (image, text) pair as one whole row; rows batched across images."""
        model = self.model
        flat = np.zeros(len(pairs), dtype=np.float64)
        for start in range(0, len(pairs), self.batch_size):
            rows = pairs[start : start + self.batch_size]
            img_idx = torch.tensor([i for i, _ in rows])
            txt_idx = torch.tensor([j for _, j in rows])
            mask = attention_mask[txt_idx]
            width = int(mask.sum(1).max())  # right padding: trim to the longest row of this chunk
            ids = input_ids[txt_idx, :width].to(model.device)
            lab = labels[txt_idx, :width].to(model.device)
            mask = mask[:, :width].to(model.device)
            valid = lab[:, 1:] != IGNORE_INDEX
            res = model(input_ids=ids, attention_mask=mask, labels=lab, image_embeds=embeds[img_idx])
            assert res.logits is not None
            logp = F.log_softmax(res.logits.float(), dim=-1).gather(1, lab[:, 1:][valid][:, None]).squeeze(1)
            flat[start : start + len(rows)] = _mean_per_row(logp, valid)
        return flat

    def _pairs_with_prefix_cache(
        self,
        embeds: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        pairs: Sequence[tuple[int, int]],
    ) -> np.ndarray | None:
        """Prefix once per image, then only the answer tokens per text. ``None`` if the rows share no
        prefix that holds the image (then the caller scores whole rows)."""
        model = self.model
        lm = model.language_model
        device = model.device
        n_img = embeds.shape[0]
        # The shared prefix: the longest run of positions where every row has the same real token and
        # no label. The first scored token must come after it (its logit is the prefix's last one).
        same = (
            (input_ids == input_ids[:1]).all(0)
            & (attention_mask == 1).all(0)
            & (labels == IGNORE_INDEX).all(0)
        )
        p = int(same.long().cumprod(0).sum())
        if p < 1 or not bool((input_ids[0, :p] == model.image_token_id).any()):
            return None
        width = int(attention_mask.sum(1).max())
        prefix_ids = input_ids[:1, :p].expand(n_img, p).to(device)
        prefix_embeds = model.embed_inputs(prefix_ids, embeds)
        kwargs: dict[str, Any] = {"logits_to_keep": 1} if model._supports_logits_to_keep() else {}
        pre = lm(
            inputs_embeds=prefix_embeds,
            attention_mask=torch.ones(n_img, p, dtype=attention_mask.dtype, device=device),
            position_ids=torch.arange(p, device=device).expand(n_img, p),
            use_cache=True,
            **kwargs,
        )
        cache = getattr(pre, "cache", None) or getattr(pre, "past_key_values", None)
        if cache is None or not hasattr(cache, "batch_select_indices"):
            return None
        # transformers >= 5.24 renames the forward argument past_key_values to cache
        base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
        cache_arg = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
        first_logp = F.log_softmax(pre.logits[:, -1].float(), dim=-1)  # [I, V]: predicts position p
        suffix_ids = input_ids[:, p:width].to(device)
        suffix_mask = attention_mask[:, p:width].to(device)
        targets = labels[:, p:width].to(device)  # the token at each suffix position
        suffix_embeds = lm.get_input_embeddings()(suffix_ids)
        # Pairs sorted by text length, so that a batch carries little padding.
        lengths = suffix_mask.sum(1).tolist()
        order = sorted(range(len(pairs)), key=lambda r: (lengths[pairs[r][1]], r))
        out = np.zeros(len(pairs), dtype=np.float64)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            rows = [pairs[r] for r in chunk]
            img_idx = torch.tensor([i for i, _ in rows], device=device)
            txt_idx = torch.tensor([j for _, j in rows], device=device)
            b = len(rows)
            mask = suffix_mask[txt_idx]
            w = int(mask.sum(1).max())
            tgt = targets[txt_idx, :w]
            valid = tgt != IGNORE_INDEX
            sums = torch.where(
                valid[:, 0], first_logp[img_idx].gather(1, tgt[:, :1].clamp(min=0)).squeeze(1), 0.0
            ).double()
            if w > 1:
                c = copy.deepcopy(cache)
                c.batch_select_indices(img_idx)  # each row gets its image's prefix
                res = lm(
                    inputs_embeds=suffix_embeds[txt_idx, : w - 1],
                    attention_mask=torch.cat(
                        [torch.ones(b, p, dtype=mask.dtype, device=device), mask[:, : w - 1]], 1
                    ),
                    position_ids=(p + torch.arange(w - 1, device=device)).expand(b, w - 1),
                    use_cache=True,
                    **{cache_arg: c},
                )
                keep = valid[:, 1:]  # logits at positions p..p+w-2 predict the tokens at p+1..p+w-1
                logp = F.log_softmax(res.logits[keep].float(), dim=-1)  # only where a token is scored
                logp = logp.gather(1, tgt[:, 1:][keep][:, None]).squeeze(1)
                sums.index_add_(0, keep.nonzero()[:, 0], logp.double())
            out[chunk] = (sums / valid.sum(1).clamp(min=1).double()).cpu().numpy()
        return out


def _mean_per_row(logp: torch.Tensor, valid: torch.Tensor) -> np.ndarray:
    """Mean of the flat ``logp`` (row-major over ``valid``'s True entries) per row of ``valid``."""
    sums = torch.zeros(valid.shape[0], dtype=torch.float64, device=logp.device)
    sums.index_add_(0, valid.nonzero()[:, 0], logp.double())
    return (sums / valid.sum(1).clamp(min=1).double()).cpu().numpy()


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
