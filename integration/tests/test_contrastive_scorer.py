"""ContrastiveScorer: candidate scores equal the full score matrix, and the pivot runs once per call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mpm.contrastive import ContrastiveScorer


class CountingStates:
    """``texts -> [N, D]`` fixed random states; records every batch it is asked for."""

    def __init__(self, texts: Sequence[str], dim: int = 6) -> None:
        gen = torch.Generator().manual_seed(0)
        self.table = {t: torch.randn(dim, generator=gen) for t in texts}
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        self.calls.append(list(texts))
        return torch.stack([self.table[t] for t in texts])


class Features:
    """``images -> [N, D]``: each image is an index into fixed random features."""

    def __init__(self, n: int, dim: int = 6) -> None:
        self.rows = torch.randn(n, dim, generator=torch.Generator().manual_seed(1))

    def features(self, images: list[Any]) -> torch.Tensor:
        return self.rows[torch.tensor(images)]


def test_candidate_scores_equal_the_matrix_and_encode_once() -> None:
    names = [f"name {i}" for i in range(10)]
    states = CountingStates(names)
    scorer = ContrastiveScorer(torch.nn.Identity(), Features(4), states)  # type: ignore[arg-type]
    images = [0, 1, 2, 3]
    candidates = [names[0:4], names[2:6], [names[9], names[0]], names[5:10]]
    got = scorer.score_candidates(images, candidates)
    assert len(states.calls) == 1  # one batch for every distinct candidate of the call
    assert sorted(states.calls[0]) == sorted({t for c in candidates for t in c})
    for i, cands in enumerate(candidates):
        want = scorer.score([images[i]], cands)[0]
        np.testing.assert_allclose(got[i], want, rtol=1e-6, atol=1e-6)
    # the order of a candidate list is kept (the true name need not come first)
    assert got[2].shape == (2,) and np.argmax(got[2]) in (0, 1)
