"""The contrastive head (stage 1a): learns a separable mapping, persists, and rejects bad shapes."""

from __future__ import annotations

import pytest
import torch

from mpm_vision.contrastive import (
    ContrastiveHead,
    ContrastiveHeadConfig,
    csls_penalty,
    fit_contrastive_head,
    normalize_states,
)


def _toy(n_concepts: int = 12, views: int = 4, dim_in: int = 32, dim_out: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    proto = torch.randn(n_concepts, dim_in, generator=g)
    feats = proto.repeat(views, 1) + 0.3 * torch.randn(n_concepts * views, dim_in, generator=g)
    targets = torch.arange(n_concepts).repeat(views)
    states = torch.randn(n_concepts, dim_out, generator=g)
    return feats, targets, states


@pytest.mark.parametrize("hidden", [0, 24])
def test_head_learns_to_pick_the_right_state(hidden: int) -> None:
    feats, targets, states = _toy()
    head = ContrastiveHead(ContrastiveHeadConfig(in_dim=32, out_dim=16, hidden=hidden))
    with torch.no_grad():
        before = (head.similarity(feats, states).argmax(1) == targets).float().mean().item()
    losses = fit_contrastive_head(head, feats, targets, states, steps=150, batch_size=32, lr=1e-2)
    assert losses[-1] < losses[0]
    with torch.no_grad():
        after = (head.similarity(feats, states).argmax(1) == targets).float().mean().item()
    assert after >= 0.95 > before


def test_save_and_load_give_the_same_embeddings(tmp_path) -> None:
    feats, targets, states = _toy()
    head = ContrastiveHead(ContrastiveHeadConfig(in_dim=32, out_dim=16))
    fit_contrastive_head(head, feats, targets, states, steps=5)
    head.save_pretrained(tmp_path / "h")
    assert sorted(p.name for p in (tmp_path / "h").iterdir()) == ["head.safetensors", "head_config.json"]
    again = ContrastiveHead.from_pretrained(tmp_path / "h")
    torch.testing.assert_close(again(feats), head.eval()(feats))
    with pytest.raises(FileNotFoundError, match="no contrastive head"):
        ContrastiveHead.from_pretrained(tmp_path)


def test_bad_inputs_are_named() -> None:
    feats, targets, states = _toy()
    head = ContrastiveHead(ContrastiveHeadConfig(in_dim=32, out_dim=16))
    with pytest.raises(ValueError, match=r"features must be \[B, 32\]"):
        head(torch.zeros(2, 31))
    with pytest.raises(ValueError, match="text_states must be"):
        fit_contrastive_head(head, feats, targets, torch.zeros(12, 15), steps=1)
    with pytest.raises(ValueError, match="outside text_states"):
        fit_contrastive_head(head, feats, targets + 100, states, steps=1)
    with pytest.raises(ValueError, match="bad head shape"):
        ContrastiveHeadConfig(in_dim=0, out_dim=4)


def test_centring_and_csls() -> None:
    states = torch.tensor([[1.0, 1.0], [1.0, 3.0]])
    centred = normalize_states(states)
    torch.testing.assert_close(centred, torch.tensor([[0.0, -1.0], [0.0, 1.0]]))
    # a "hub" text close to every reference image is penalised more than a specific one
    ref = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.9, 0.2]]), dim=-1)
    texts = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    pen = csls_penalty(texts, ref, k=2)
    assert pen[0] > pen[1]
