"""Warm-starting a bridge without running the LM: regress its visual tokens onto the LM's input
embeddings of the image's name.

A bridge trained from scratch through the frozen LM (the VisCPM-Chat loss) costs a full LM forward and
backward pass per step and moves slowly. A much cheaper start: make the ``K`` visual tokens of an image
*be* (approximately) the LM's own input embeddings of the image's English name, so that to the LM the
image reads like the word. That needs only the bridge, the stored encoder features and the LM's
embedding table::

    targets, mask = name_embedding_targets(vlm, ["red apple", "dog face"])   # [B, K, H], [B, K]
    losses = regress_bridge(vlm, features, names, steps=300)                # trains vlm.bridge in place

``features`` are encoder outputs ``[num_images, N, C]`` (e.g. from a :class:`~mpm_vision.FeatureCache`
of the frozen encoder). Position ``k < len(tokens)`` targets the name's ``k``-th token embedding;
positions past the name target the mean of its token embeddings (so no visual token is left free to
take a value the LM never saw); names longer than ``K`` tokens keep their first ``K``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["name_embedding_targets", "regress_bridge"]


@torch.no_grad()
def name_embedding_targets(
    model: Any, texts: Sequence[str], *, num_tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The LM's input embeddings of each text's first ``K`` tokens, as bridge regression targets.

    Args:
        model: a :class:`~mpm_vision.VisionLanguageModel` (its tokenizer, LM and ``num_image_tokens``).
        texts: one text (name) per image.
        num_tokens: ``K``; default the model's visual tokens per image.

    Returns:
        ``(targets [B, K, H], mask [B, K])``: the embeddings exactly as the LM's embedding module
        returns them (Gemma's scaling included), and ``True`` where the target is a real token (past
        the text's end the target is the mean of its token embeddings).
    """
    if not texts:
        raise ValueError("name_embedding_targets() needs at least one text")
    k = int(num_tokens or model.num_image_tokens)
    if k < 1:
        raise ValueError(f"num_tokens must be >= 1, got {k}")
    embedding = model.language_model.get_input_embeddings()
    device = embedding.weight.device
    targets, masks = [], []
    for text in texts:
        ids = list(model.tokenizer(str(text), add_special_tokens=False)["input_ids"])[:k]
        if not ids:
            raise ValueError(f"text {text!r} has no tokens; every image needs a non-empty name")
        emb = embedding(torch.tensor([ids], device=device))[0].float()  # [n, H]
        pad = emb.mean(0, keepdim=True).expand(k - len(ids), -1)
        targets.append(torch.cat([emb, pad], 0))
        masks.append(torch.arange(k) < len(ids))
    return torch.stack(targets), torch.stack(masks)


def regress_bridge(
    model: Any,
    features: torch.Tensor,
    texts: Sequence[str],
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 32,
    weight_decay: float = 0.0,
    seed: int = 0,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model.bridge`` (in place) so that its visual tokens of ``features[i]`` approach the LM's
    input embeddings of ``texts[i]`` (:func:`name_embedding_targets`). The LM never runs.

    The loss is the squared error relative to the targets' mean squared norm (scale-free: 1.0 is
    "as far as zero vectors", 0 is exact), averaged over the ``K`` positions. AdamW with a cosine
    decay, ``batch_size`` random rows per step (seeded by ``seed``).

    Args:
        model: a :class:`~mpm_vision.VisionLanguageModel`; only its bridge's parameters change.
        features: encoder outputs ``[num_images, N, C]`` (what ``model.encoder`` gives, e.g. cached).
        texts: the name of each image (``len(texts) == num_images``).
        steps: optimizer steps (0: nothing trains).
        callback: called as ``callback(step, loss)`` after every step (progress).

    Returns:
        the loss of every step.
    """
    if features.ndim != 3:
        raise ValueError(f"features must be [num_images, N, C], got {list(features.shape)}")
    if len(texts) != features.shape[0]:
        raise ValueError(f"{features.shape[0]} feature rows but {len(texts)} texts (one name per image)")
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1, got {steps} and {batch_size}")
    if steps == 0:
        return []
    targets, _ = name_embedding_targets(model, texts)
    bridge = model.bridge
    param = next(bridge.parameters())
    feats = features.to(device=param.device, dtype=param.dtype)
    targets = targets.to(device=param.device)
    scale = targets.pow(2).sum(-1).mean().clamp_min(1e-12)
    params = [p for p in bridge.parameters()]
    before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + torch.cos(torch.tensor(torch.pi * s / steps)).item())
    )
    gen = torch.Generator().manual_seed(int(seed))
    was_training = bridge.training
    bridge.train()
    losses: list[float] = []
    n = feats.shape[0]
    order = torch.empty(0, dtype=torch.long)
    try:
        for step in range(steps):
            while order.numel() < min(batch_size, n):  # epochs of seeded permutations
                order = torch.cat([order, torch.randperm(n, generator=gen)])
            idx, order = order[: min(batch_size, n)].to(feats.device), order[min(batch_size, n) :]
            out = bridge(feats[idx]).float()
            loss = F.mse_loss(out, targets[idx], reduction="none").sum(-1).mean() / scale
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if callback is not None:
                callback(step + 1, losses[-1])
    finally:
        bridge.train(was_training)
        for p, flag in zip(params, before, strict=True):
            p.requires_grad_(flag)
            p.grad = None
    return losses
