"""Metric functions: BLEU/chrF (sacrebleu), Fréchet distance, ranking accuracy and recall.

BLEU and chrF are computed by sacrebleu itself (the reference implementation) with the tokenizer
that suits each language, so numbers equal ``sacrebleu -tok <tok>`` on the same files.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mpm_bench.langs import bleu_tokenizer, normalize_lang

__all__ = [
    "bleu_statistics",
    "chrf_statistics",
    "corpus_bleu",
    "corpus_chrf",
    "frechet_distance",
    "mean_reciprocal_rank",
    "ranking_hits",
    "recall_at_k",
    "reciprocal_ranks",
    "topk_accuracy",
]

# Tokenizers that need optional extras; used when the extra cannot load (a warning names it).
_FALLBACK_TOKENIZER = {"ja-mecab": "char", "ko-mecab": "char"}


def _check_pairs(hypotheses: Sequence[str], references: Sequence[Any]) -> list[list[Any]]:
    """Validate hypotheses/references and return sacrebleu reference *streams*."""
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise TypeError("hypotheses and references must be sequences of strings, not a single string")
    if len(hypotheses) == 0:
        raise ValueError("empty hypotheses: nothing to score")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"unequal lengths: {len(hypotheses)} hypotheses but {len(references)} references "
            "(give one reference, or one list of references, per hypothesis)"
        )
    for i, hyp in enumerate(hypotheses):
        if not isinstance(hyp, str):
            raise TypeError(f"hypothesis {i} is {type(hyp).__name__}, expected str")
    per_hyp: list[list[str]] = []
    for i, ref in enumerate(references):
        refs = [ref] if isinstance(ref, str) else list(ref)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"reference {i} must be a string or a non-empty list of strings, got {ref!r}")
        per_hyp.append(refs)
    width = max(len(r) for r in per_hyp)
    # sacrebleu takes one stream per reference "slot"; None marks a missing reference in a slot.
    return [[refs[j] if j < len(refs) else None for refs in per_hyp] for j in range(width)]


@functools.cache
def _bleu_metric(tokenize: str) -> Any:
    from sacrebleu.metrics import BLEU

    try:
        return BLEU(tokenize=tokenize)
    except (ImportError, ModuleNotFoundError, RuntimeError) as err:
        fallback = _FALLBACK_TOKENIZER.get(tokenize)
        if fallback is None:
            raise
        warnings.warn(
            f"sacrebleu tokenizer {tokenize!r} is unavailable ({err}); falling back to {fallback!r}. "
            "Install `sacrebleu[ja,ko]` for MeCab tokenisation; scores are not comparable across the two.",
            RuntimeWarning,
            stacklevel=3,
        )
        return BLEU(tokenize=fallback)


def corpus_bleu(
    hypotheses: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    lang: str,
    tokenize: str | None = None,
) -> Any:
    """Corpus BLEU (sacrebleu, 0-100) with the tokenizer of ``lang``.

    Args:
        hypotheses: one system output per segment.
        references: one reference string, or a list of reference strings, per segment.
        lang: ISO 639-1 code; picks ``zh`` for Chinese, ``ja-mecab``, ``ko-mecab``, else ``13a``.
        tokenize: override the tokenizer (any sacrebleu tokenizer name).

    Returns:
        a ``sacrebleu.metrics.bleu.BLEUScore`` (``.score`` is the 0-100 value).
    """
    normalize_lang(lang)
    streams = _check_pairs(hypotheses, references)
    metric = _bleu_metric(tokenize or bleu_tokenizer(lang))
    return metric.corpus_score(list(hypotheses), streams)


def bleu_statistics(
    hypotheses: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    lang: str,
    tokenize: str | None = None,
) -> list[list[int]]:
    """Per-segment BLEU sufficient statistics (sacrebleu's: lengths, n-gram matches and totals).

    Summed over segments they give :func:`corpus_bleu` exactly (sacrebleu computes the corpus score
    from the sum); the bootstrap resamples segments and recomputes BLEU from the resampled sums.
    """
    normalize_lang(lang)
    streams = _check_pairs(hypotheses, references)
    metric = _bleu_metric(tokenize or bleu_tokenizer(lang))
    return [list(map(int, row)) for row in metric._extract_corpus_statistics(list(hypotheses), streams)]


def chrf_statistics(
    hypotheses: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    lang: str,
    word_order: int = 0,
) -> list[list[int]]:
    """Per-segment chrF sufficient statistics (character / word n-gram counts and matches);
    summed, they give :func:`corpus_chrf` exactly."""
    from sacrebleu.metrics import CHRF

    normalize_lang(lang)
    streams = _check_pairs(hypotheses, references)
    metric = CHRF(word_order=word_order)
    return [list(map(int, row)) for row in metric._extract_corpus_statistics(list(hypotheses), streams)]


def corpus_chrf(
    hypotheses: Sequence[str],
    references: Sequence[str | Sequence[str]],
    *,
    lang: str,
    word_order: int = 0,
) -> Any:
    """Corpus chrF (sacrebleu, 0-100; ``word_order=2`` gives chrF++).

    chrF works on characters, so it needs no language-specific tokenizer; ``lang`` is validated so
    that every metric call names its language.

    Returns:
        a ``sacrebleu.metrics.chrf.CHRFScore`` (``.score`` is the 0-100 value).
    """
    from sacrebleu.metrics import CHRF

    normalize_lang(lang)
    streams = _check_pairs(hypotheses, references)
    return CHRF(word_order=word_order).corpus_score(list(hypotheses), streams)


def _as_2d_float(x: Any, name: str) -> NDArray[np.float64]:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n_samples, n_features], got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples to estimate a covariance, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _psd_sqrt(cov: NDArray[np.float64]) -> NDArray[np.float64]:
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(features_a: ArrayLike, features_b: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (the FID formula).

    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^{1/2})``. The trace of the matrix square root is
    computed as ``sum(sqrt(eig(S_a^{1/2} S_b S_a^{1/2})))``, a symmetric PSD form that needs no complex
    ``sqrtm`` and stays finite for the singular covariances that small samples give.

    Args:
        features_a, features_b: arrays ``[n_a, d]`` and ``[n_b, d]`` (numpy or CPU tensors).
    """
    a = _as_2d_float(features_a, "features_a")
    b = _as_2d_float(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"feature dimensions differ: features_a has {a.shape[1]}, features_b has {b.shape[1]}"
        )
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu_a - mu_b
    value = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_covmean)
    return max(value, 0.0)  # a distance; identical sets can round to -1e-15


def ranking_hits(scores: ArrayLike, relevant: ArrayLike, k: int) -> NDArray[np.float64]:
    """Per query, the expected top-``k`` hit under random tie-breaking.

    Args:
        scores: ``[n_queries, n_candidates]``, higher is better.
        relevant: boolean ``[n_queries, n_candidates]``; each row needs at least one ``True``.
        k: cut-off (``>= 1``).

    Returns:
        ``[n_queries]`` values in ``[0, 1]``: 1 when a relevant candidate certainly ranks in the
        top ``k``, 0 when it certainly does not, the tie-breaking probability otherwise (so a
        constant scorer scores exactly chance, never 100%). The best-scored relevant candidate counts.
    """
    s = np.asarray(scores, dtype=np.float64)
    rel = np.asarray(relevant, dtype=bool)
    if s.ndim != 2 or s.shape != rel.shape:
        raise ValueError(f"scores {s.shape} and relevant {rel.shape} must be 2-D arrays of the same shape")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not rel.any(axis=1).all():
        raise ValueError("every query needs at least one relevant candidate")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    best_rel = np.where(rel, s, -np.inf).max(axis=1, keepdims=True)
    greater = ((s > best_rel) & ~rel).sum(axis=1)
    tied = ((s == best_rel) & ~rel).sum(axis=1)
    return np.clip((k - greater) / (tied + 1.0), 0.0, 1.0)


def reciprocal_ranks(scores: ArrayLike, relevant: ArrayLike) -> NDArray[np.float64]:
    """Per query, the expected ``1 / rank`` of the best-scored relevant candidate.

    Ties are broken at random, in expectation: with ``g`` non-relevant candidates scored higher and
    ``t`` tied, the rank is uniform on ``g+1 .. g+t+1``, so the value is
    ``(H(g+t+1) - H(g)) / (t+1)`` (``H`` the harmonic numbers). A constant scorer over ``N``
    candidates gets ``H(N) / N``, the chance level of the mean reciprocal rank.
    """
    from scipy.special import digamma

    s = np.asarray(scores, dtype=np.float64)
    rel = np.asarray(relevant, dtype=bool)
    if s.ndim != 2 or s.shape != rel.shape:
        raise ValueError(f"scores {s.shape} and relevant {rel.shape} must be 2-D arrays of the same shape")
    if not rel.any(axis=1).all():
        raise ValueError("every query needs at least one relevant candidate")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    best_rel = np.where(rel, s, -np.inf).max(axis=1)
    greater = ((s > best_rel[:, None]) & ~rel).sum(axis=1).astype(np.float64)
    tied = ((s == best_rel[:, None]) & ~rel).sum(axis=1).astype(np.float64)
    # H(n) = digamma(n + 1) + Euler's gamma; the constants cancel in the difference.
    out: NDArray[np.float64] = (digamma(greater + tied + 2) - digamma(greater + 1)) / (tied + 1)
    return out


def mean_reciprocal_rank(scores: ArrayLike, targets: ArrayLike) -> float:
    """Mean reciprocal rank of integer ``targets`` in ``[n, n_classes]`` scores (ties: expected)."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets, dtype=np.int64)
    if s.ndim != 2 or t.shape != (s.shape[0],) or s.shape[0] == 0:
        raise ValueError(
            f"scores must be a non-empty [n, n_classes] and targets [n]; got {s.shape} and {t.shape}"
        )
    if t.min() < 0 or t.max() >= s.shape[1]:
        raise ValueError(f"targets must lie in [0, {s.shape[1]}), got range [{t.min()}, {t.max()}]")
    rel = np.zeros_like(s, dtype=bool)
    rel[np.arange(len(t)), t] = True
    return float(reciprocal_ranks(s, rel).mean())


def topk_accuracy(scores: ArrayLike, targets: ArrayLike, k: int = 1) -> float:
    """Top-``k`` accuracy of ``[n, n_classes]`` scores against integer ``targets`` (ties: expected)."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets, dtype=np.int64)
    if s.ndim != 2 or t.shape != (s.shape[0],):
        raise ValueError(f"scores must be [n, n_classes] and targets [n]; got {s.shape} and {t.shape}")
    if s.shape[0] == 0:
        raise ValueError("empty scores: nothing to evaluate")
    if t.min() < 0 or t.max() >= s.shape[1]:
        raise ValueError(f"targets must lie in [0, {s.shape[1]}), got range [{t.min()}, {t.max()}]")
    rel = np.zeros_like(s, dtype=bool)
    rel[np.arange(len(t)), t] = True
    return float(ranking_hits(s, rel, k).mean())


def recall_at_k(scores: ArrayLike, relevant: ArrayLike, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Retrieval recall@k (share of queries with a relevant item in the top ``k``) for each ``k``."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0:
        raise ValueError(f"scores must be a non-empty [n_queries, n_candidates] array, got shape {s.shape}")
    return {int(k): float(ranking_hits(s, relevant, int(k)).mean()) for k in ks}
