"""Log-probabilities of answers: the engine of :meth:`VisionLanguageModel.answer_logprobs`.

Zero-shot classification and judging score many (image, answer) pairs that share an image and a
prompt. Each image is encoded once. By default the shared prefix (the image tokens and the prompt)
also runs through the LM once per image, and its key/value cache is reused for every answer, so only
the answer tokens are computed per pair, in length-sorted batches, with logits and log-softmax only
where a token is scored. Without the cache (``use_prefix_cache=False``, or an LM whose forward returns
no cache) each pair runs its whole sequence; both paths give the same numbers up to float rounding.

Written here rather than taken from transformers: its generation utilities score one continuation
per prompt, not many answers against one cached prefix per image.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .interfaces import IGNORE_INDEX, AnswerLogprobs
from .processing import pad_rows

if TYPE_CHECKING:
    from .model import VisionLanguageModel


def answer_logprobs(
    model: VisionLanguageModel,
    images: Sequence[Any],
    prompts: str | Sequence[str],
    answers: Sequence[str],
    *,
    pairs: Sequence[tuple[int, int]] | None = None,
    batch_size: int = 32,
    use_prefix_cache: bool = True,
) -> AnswerLogprobs:
    """See :meth:`VisionLanguageModel.answer_logprobs`."""
    images = list(images)
    if not images:
        raise ValueError("answer_logprobs() needs at least one image")
    if any(im is None for im in images):
        raise ValueError("answer_logprobs() needs one image per entry (got None)")
    prompt_list = [prompts] * len(images) if isinstance(prompts, str) else list(prompts)
    if len(prompt_list) != len(images):
        raise ValueError(
            f"got {len(images)} images but {len(prompt_list)} prompts; pass one prompt or one per image"
        )
    token = model.config.image_token
    for p in prompt_list:
        if p.count(token) > 1:
            raise ValueError(f"each prompt may hold the image token {token!r} at most once: {p!r}")
    answers = list(answers)
    if not answers:
        raise ValueError("answer_logprobs() needs at least one answer")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shape: tuple[int, ...]
    if pairs is None:
        pairs = [(i, j) for i in range(len(images)) for j in range(len(answers))]
        shape = (len(images), len(answers))
    else:
        pairs = [(int(i), int(j)) for i, j in pairs]
        bad = [(i, j) for i, j in pairs if not (0 <= i < len(images) and 0 <= j < len(answers))]
        if bad:
            raise ValueError(
                f"pairs {bad[:3]} are out of range for {len(images)} images and {len(answers)} answers"
            )
        shape = (len(pairs),)

    was_training = model.training
    model.eval()
    total = torch.zeros(len(pairs), dtype=torch.float64)
    count = torch.zeros(len(pairs), dtype=torch.long)
    try:
        with torch.no_grad():
            embeds = model.encode_images(model.preprocess(images))  # [I, K, D], each image once
            by_prompt: dict[str, list[int]] = {}
            for k, (i, _) in enumerate(pairs):
                by_prompt.setdefault(prompt_list[i], []).append(k)
            for prompt, members in by_prompt.items():
                group = [pairs[k] for k in members]
                used = sorted({j for _, j in group})
                # each answer tokenized once, as the answer to this prompt (right-padded rows)
                ids, mask, labels = _answer_rows(model, prompt, [answers[j] for j in used])
                local = {j: r for r, j in enumerate(used)}
                rows = [(i, local[j]) for i, j in group]
                out = (
                    _with_prefix_cache(model, embeds, ids, mask, labels, rows, batch_size)
                    if use_prefix_cache
                    else None
                )
                sums, n = (
                    out
                    if out is not None
                    else _whole_rows(model, embeds, ids, mask, labels, rows, batch_size)
                )
                total[members] = sums.cpu()
                count[members] = n.cpu()
    finally:
        model.train(was_training)
    return AnswerLogprobs(total=total.reshape(shape), num_tokens=count.reshape(shape))


def _answer_rows(
    model: VisionLanguageModel, prompt: str, answers: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, labels)`` of ``prompt`` + each answer, one image, no pixels processed."""
    collator = model.collator
    rows = [
        collator.tokenize(
            collator.render({"prompt": prompt, "answer": a}, 1, for_generation=False), num_images=1
        )
        for a in answers
    ]
    batch = pad_rows(rows, [1] * len(rows), None, pad_token_id=model.pad_token_id, padding_side="right")
    labels = batch.labels
    if labels is None:  # every answer tokenized to nothing and no EOS is appended
        labels = torch.full_like(batch.input_ids, IGNORE_INDEX)
    return batch.input_ids, batch.attention_mask, labels


def _whole_rows(
    model: VisionLanguageModel,
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    pairs: Sequence[tuple[int, int]],
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (image, answer) pair as one whole row; rows batched across images."""
    sums = torch.zeros(len(pairs), dtype=torch.float64, device=model.device)
    counts = torch.zeros(len(pairs), dtype=torch.long, device=model.device)
    for start in range(0, len(pairs), batch_size):
        rows = pairs[start : start + batch_size]
        img_idx = torch.tensor([i for i, _ in rows])
        txt_idx = torch.tensor([j for _, j in rows])
        mask = attention_mask[txt_idx]
        width = int(mask.sum(1).max())  # right padding: trim to the longest row of this chunk
        ids = input_ids[txt_idx, :width].to(model.device)
        lab = labels[txt_idx, :width].to(model.device)
        mask = mask[:, :width].to(model.device)
        valid = lab[:, 1:] != IGNORE_INDEX
        sl = slice(start, start + len(rows))
        counts[sl] = valid.sum(1)
        if not bool(valid.any()):
            continue
        res = model(
            input_ids=ids, attention_mask=mask, labels=lab, image_embeds=embeds[img_idx.to(embeds.device)]
        )
        assert res.logits is not None
        logp = F.log_softmax(res.logits.float(), dim=-1).gather(1, lab[:, 1:][valid][:, None]).squeeze(1)
        row_sums = torch.zeros(len(rows), dtype=torch.float64, device=logp.device)
        row_sums.index_add_(0, valid.nonzero()[:, 0], logp.double())
        sums[sl] = row_sums
    return sums, counts


def _with_prefix_cache(
    model: VisionLanguageModel,
    embeds: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    labels: torch.Tensor,
    pairs: Sequence[tuple[int, int]],
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The prefix once per image, then only the answer tokens per pair. ``None`` if the rows share no
    prefix that holds the image, or the LM returns no reusable cache (the caller scores whole rows)."""
    lm = model.language_model
    device = model.device
    # The shared prefix: the longest run of positions where every row has the same real token and
    # no label. The first scored token must come after it (its logit is the prefix's last one).
    same = (
        (input_ids == input_ids[:1]).all(0) & (attention_mask == 1).all(0) & (labels == IGNORE_INDEX).all(0)
    )
    p = int(same.long().cumprod(0).sum())
    if p < 1 or not bool((input_ids[0, :p] == model.image_token_id).any()):
        return None
    images_used = sorted({i for i, _ in pairs})
    local = {i: r for r, i in enumerate(images_used)}
    n_img = len(images_used)
    width = int(attention_mask.sum(1).max())
    prefix_ids = input_ids[:1, :p].expand(n_img, p).to(device)
    prefix_embeds = model.embed_inputs(prefix_ids, embeds[torch.tensor(images_used, device=embeds.device)])
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

    def keep_kwargs(keep: torch.Tensor) -> dict[str, Any]:
        # a boolean [B, T] logits_to_keep gives [n_true, V] logits (transformers >= 5); an LM without
        # the argument returns every position and the caller selects afterwards
        return {"logits_to_keep": keep} if model._supports_logits_to_keep() else {}

    suffix_ids = input_ids[:, p:width].to(device)
    suffix_mask = attention_mask[:, p:width].to(device)
    targets = labels[:, p:width].to(device)  # the token at each suffix position
    suffix_embeds = lm.get_input_embeddings()(suffix_ids)
    # Pairs sorted by answer length, so that a batch carries little padding.
    lengths = suffix_mask.sum(1).tolist()
    order = sorted(range(len(pairs)), key=lambda r: (lengths[pairs[r][1]], r))
    sums = torch.zeros(len(pairs), dtype=torch.float64, device=device)
    counts = torch.zeros(len(pairs), dtype=torch.long, device=device)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        rows = [pairs[r] for r in chunk]
        img_idx = torch.tensor([local[i] for i, _ in rows], device=device)
        txt_idx = torch.tensor([j for _, j in rows], device=device)
        b = len(rows)
        mask = suffix_mask[txt_idx]
        w = int(mask.sum(1).max())
        tgt = targets[txt_idx, :w]
        valid = tgt != IGNORE_INDEX
        row_sums = torch.where(
            valid[:, 0], first_logp[img_idx].gather(1, tgt[:, :1].clamp(min=0)).squeeze(1), 0.0
        ).double()
        if w > 1:
            c = copy.deepcopy(cache)
            c.batch_select_indices(img_idx)  # each row gets its image's prefix
            keep = valid[:, 1:]  # logits at positions p..p+w-2 predict the tokens at p+1..p+w-1
            res = lm(
                inputs_embeds=suffix_embeds[txt_idx, : w - 1],
                attention_mask=torch.cat(
                    [torch.ones(b, p, dtype=mask.dtype, device=device), mask[:, : w - 1]], 1
                ),
                position_ids=(p + torch.arange(w - 1, device=device)).expand(b, w - 1),
                use_cache=True,
                **{cache_arg: c},
                **keep_kwargs(keep),
            )
            # The LM head (262k columns for Gemma) runs only where a token is scored, not on the
            # padding of shorter answers; log p = logit - logsumexp (no [n, V] log-softmax written).
            logits = res.logits if res.logits.ndim == 2 else res.logits[keep]
            logits = logits.float()
            picked = logits.gather(1, tgt[:, 1:][keep][:, None]).squeeze(1)
            logp = picked - torch.logsumexp(logits, dim=-1)
            row_sums.index_add_(0, keep.nonzero()[:, 0], logp.double())
        index = torch.tensor(chunk, device=device)
        sums[index] = row_sums
        counts[index] = valid.sum(1)
    return sums, counts
