"""The embedding-regression warm start: targets are the LM's own input embeddings, only the bridge trains
and its visual tokens approach those targets; seeded runs are identical."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from mpm_vision import name_embedding_targets, regress_bridge


def test_targets_are_the_lm_embeddings_padded_with_their_mean(make_vlm: Callable[..., Any]) -> None:
    vlm = make_vlm(num_queries=4, bridge="query")
    texts = ["dog", "red apple face with a very long name indeed"]
    targets, mask = name_embedding_targets(vlm, texts)
    assert targets.shape == (2, 4, vlm.bridge.config.out_dim) and mask.shape == (2, 4)
    emb = vlm.language_model.get_input_embeddings()
    ids = vlm.tokenizer("dog", add_special_tokens=False)["input_ids"]
    n = min(len(ids), 4)
    want = emb(torch.tensor([ids[:n]]))[0]
    assert torch.allclose(targets[0, :n], want) and mask[0].sum() == n
    if n < 4:
        assert torch.allclose(targets[0, n], want.mean(0))
    assert bool(mask[1].all())  # the long name fills all K positions
    with pytest.raises(ValueError, match="no tokens"):
        name_embedding_targets(vlm, [""])


def test_regression_trains_only_the_bridge_and_lowers_the_name_loss(
    make_vlm: Callable[..., Any], images: Any
) -> None:
    vlm = make_vlm(num_queries=4, bridge="query")
    names = ["dog", "cat", "red apple", "rocket"]
    with torch.no_grad():
        feats = vlm.encoder(vlm.preprocess(images))
    frozen = {n: p.clone() for n, p in vlm.named_parameters() if not n.startswith("bridge.")}

    targets, _ = name_embedding_targets(vlm, names)

    def error() -> float:
        with torch.no_grad():
            return float((vlm.bridge(feats) - targets).pow(2).sum(-1).mean() / targets.pow(2).sum(-1).mean())

    err0 = error()
    losses = regress_bridge(vlm, feats, names, steps=150, lr=3e-3, batch_size=4, seed=0)
    assert len(losses) == 150 and losses[-1] < 0.5 * losses[0]
    assert error() < 0.5 * err0
    for n, p in vlm.named_parameters():
        if not n.startswith("bridge."):
            assert torch.equal(p, frozen[n]), n
    assert all(p.grad is None for p in vlm.bridge.parameters())
    assert regress_bridge(vlm, feats, names, steps=0) == []


def test_regression_is_deterministic_and_checks_its_inputs(make_vlm: Callable[..., Any], images: Any) -> None:
    names = ["dog", "cat", "red apple", "rocket"]
    runs = []
    for _ in range(2):
        vlm = make_vlm(num_queries=4, bridge="query")
        with torch.no_grad():
            feats = vlm.encoder(vlm.preprocess(images))
        regress_bridge(vlm, feats, names, steps=5, seed=3)
        runs.append({k: v.clone() for k, v in vlm.bridge.state_dict().items()})
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    with pytest.raises(ValueError, match="one name per image"):
        regress_bridge(vlm, feats, names[:2], steps=1)
    with pytest.raises(ValueError, match=r"\[num_images, N, C\]"):
        regress_bridge(vlm, feats[0], names, steps=1)
