"""The bench adapters against slower, independent computations of the same numbers (the scoring engine
itself, ``VisionLanguageModel.answer_logprobs``, is tested on four architectures in mpm-vision)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("mpm")


def _vlm(arch: str, tiny_lm: Any, tiny_tokenizer: Any) -> Any:
    from mpm_vision import VisionLanguageModel, create_bridge, create_encoder

    torch.manual_seed(0)
    lm = tiny_lm(arch, vocab_size=len(tiny_tokenizer) + 8)
    encoder = create_encoder(
        "vit_tiny_patch16_224", image_size=16, patch_size=8, depth=1, embed_dim=32, num_heads=2
    )
    hidden = int(lm.get_input_embeddings().weight.shape[1])
    bridge = create_bridge("query", in_dim=encoder.feature_dim, out_dim=hidden, num_queries=3)
    return VisionLanguageModel(encoder, bridge, lm, tiny_tokenizer).eval()


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)) for _ in range(n)]


TEXTS = ["red apple", "a dog", "flag: Japan", "smiling face with open mouth and closed eyes", "x"]


def test_prefix_cache_scores_equal_full_rows(tiny_lm: Any, tiny_tokenizer: Any) -> None:
    from mpm.adapters import VLMScorer

    vlm = _vlm("gemma3", tiny_lm, tiny_tokenizer)
    images = _images(3)
    cached = VLMScorer(vlm, batch_size=2).score(images, TEXTS)
    full = VLMScorer(vlm, batch_size=4, use_prefix_cache=False).score(images, TEXTS)
    assert cached.shape == (3, len(TEXTS))
    np.testing.assert_allclose(cached, full, rtol=1e-4, atol=1e-5)
    assert np.isfinite(cached).all() and (cached < 0).all()
    assert np.ptp(cached[:, 0]) > 0  # the image matters


def test_scores_are_the_mean_answer_log_probability(tiny_lm: Any, tiny_tokenizer: Any) -> None:
    """Brute force: one text at a time through the model's own loss (mean NLL over answer tokens)."""
    from mpm.adapters import VLMScorer

    vlm = _vlm("llama", tiny_lm, tiny_tokenizer)
    images = _images(2)
    got = VLMScorer(vlm).score(images, TEXTS)
    for i, img in enumerate(images):
        for j, t in enumerate(TEXTS):
            b = vlm.collate([{"image": img, "prompt": "<image>\nWhat is this?", "answer": t}])
            with torch.no_grad():
                loss = vlm(
                    pixel_values=b.pixel_values,
                    input_ids=b.input_ids,
                    attention_mask=b.attention_mask,
                    labels=b.labels,
                ).loss
            assert got[i, j] == pytest.approx(-float(loss), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("use_prefix_cache", [True, False])
def test_score_candidates_matches_the_full_matrix(
    tiny_lm: Any, tiny_tokenizer: Any, use_prefix_cache: bool
) -> None:
    from mpm.adapters import VLMScorer
    from mpm_bench import CandidateScorer

    vlm = _vlm("qwen2", tiny_lm, tiny_tokenizer)
    images = _images(3)
    scorer = VLMScorer(vlm, batch_size=3, use_prefix_cache=use_prefix_cache)
    assert isinstance(scorer, CandidateScorer)
    full = scorer.score(images, TEXTS)
    cands = [[TEXTS[4], TEXTS[0]], [TEXTS[2]], [TEXTS[1], TEXTS[3], TEXTS[0]]]
    got = scorer.score_candidates(images, cands)
    assert [g.shape for g in got] == [(2,), (1,), (3,)]
    for i, c in enumerate(cands):
        np.testing.assert_allclose(got[i], [full[i, TEXTS.index(t)] for t in c], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="3 images but 2 candidate lists"):
        scorer.score_candidates(images, cands[:2])
    with pytest.raises(ValueError, match="at least one candidate"):
        scorer.score_candidates(images[:1], [[]])


class _CountingScorer:
    """A plain ``Scorer`` (no ``score_candidates``): a fixed function of the image and the text."""

    name = "counting"

    def __init__(self) -> None:
        self.pairs = 0

    def score(self, images: list[Image.Image], texts: list[str]) -> np.ndarray:
        self.pairs += len(images) * len(texts)
        return np.array([[float(np.asarray(im).mean()) - len(t) for t in texts] for im in images])


def test_cached_scorer_scores_each_pair_once(tiny_lm: Any, tiny_tokenizer: Any) -> None:
    from mpm.adapters import CachedScorer, VLMScorer
    from mpm_bench import CandidateScorer

    vlm = _vlm("gemma3", tiny_lm, tiny_tokenizer)
    images = _images(3)
    plain = VLMScorer(vlm, batch_size=4)
    cached = CachedScorer(VLMScorer(vlm, batch_size=4))
    assert isinstance(cached, CandidateScorer)
    cands = [[TEXTS[0], TEXTS[1]], [TEXTS[2]], [TEXTS[1], TEXTS[3]]]
    got = cached.score_candidates(images, cands)
    assert cached.scored == 5
    full = cached.score(images, TEXTS)  # 15 pairs, 5 of them known
    assert cached.scored == 15
    np.testing.assert_allclose(full, plain.score(images, TEXTS), rtol=1e-4, atol=1e-5)
    for i, c in enumerate(cands):
        np.testing.assert_allclose(got[i], [full[i, TEXTS.index(t)] for t in c], rtol=1e-4, atol=1e-5)
    # an equal copy of an image is the same image; a changed pixel is not
    copy = images[0].copy()
    cached.score([copy], TEXTS)
    assert cached.scored == 15
    changed = images[0].copy()
    changed.putpixel((0, 0), (0, 0, 0) if changed.getpixel((0, 0)) != (0, 0, 0) else (1, 1, 1))
    cached.score([changed], TEXTS[:2])
    assert cached.scored == 17
    with pytest.raises(ValueError, match="3 images but 1 candidate lists"):
        cached.score_candidates(images, cands[:1])


def test_cached_scorer_gives_run_classification_the_same_rows() -> None:
    """Through a plain scorer (the fallback): the same board rows with fewer scored pairs."""
    from mpm.adapters import CachedScorer
    from mpm_bench import Example, run_classification

    rng = np.random.default_rng(1)
    data = [
        Example(
            key=f"k{i}",
            image=Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)),
            names={"en": "n" * (i % 7 + 1) + str(i), "de": "d" * (i % 5 + 1) + str(i)},
        )
        for i in range(12)
    ]
    direct, inner = _CountingScorer(), _CountingScorer()
    kw: dict[str, Any] = {"num_candidates": 4, "all_candidates": 6, "model_name": "m", "n_boot": 50}
    a = run_classification(direct, data, ["en", "de"], **kw)
    wrapped = CachedScorer(inner)
    b = run_classification(wrapped, data, ["en", "de"], **kw)
    assert [(r.language, r.metric, r.value) for r in a] == [(r.language, r.metric, r.value) for r in b]
    assert inner.pairs == wrapped.scored < direct.pairs == 2 * (12 * 4 + 6 * 6)
