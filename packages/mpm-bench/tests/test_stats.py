"""Bootstrap intervals against closed forms: for 0/1 items the ideal percentile bootstrap of the mean
is a binomial distribution (the resampled count of ones is Binomial(n, p_hat)), so its 2.5 % and
97.5 % quantiles are known exactly; with perfectly correlated clusters the same holds with n = the
number of clusters."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from mpm_bench.metrics import bleu_statistics, chrf_statistics, corpus_bleu, corpus_chrf
from mpm_bench.stats import (
    ItemValues,
    bootstrap_interval,
    bootstrap_replicates,
    paired_difference_interval,
    paired_ratio_interval,
    resampling_weights,
)


def _binomial_interval(ones: int, n: int, level: float = 0.95) -> tuple[float, float]:
    alpha = (1 - level) / 2
    p = ones / n
    return sps.binom.ppf(alpha, n, p) / n, sps.binom.ppf(1 - alpha, n, p) / n


@pytest.mark.parametrize(("ones", "n"), [(60, 200), (12, 40), (95, 100)])
def test_accuracy_interval_equals_the_binomial_closed_form(ones: int, n: int) -> None:
    values = [1.0] * ones + [0.0] * (n - ones)
    items = ItemValues.build([str(i) for i in range(n)], [str(i) for i in range(n)], values)
    iv = bootstrap_interval(items, n_boot=20000, seed=1)
    assert iv is not None and iv.n_clusters == n and iv.n_boot == 20000
    low, high = _binomial_interval(ones, n)
    assert iv.low == pytest.approx(low, abs=1.01 / n) and iv.high == pytest.approx(high, abs=1.01 / n)
    # and close to the normal approximation p +- 1.96 sqrt(p (1 - p) / n) where that is good (p not near 0/1)
    p = ones / n
    if 0.1 < p < 0.9:
        half = 1.96 * np.sqrt(p * (1 - p) / n)
        assert iv.low == pytest.approx(p - half, abs=1.5 / n) and iv.high == pytest.approx(
            p + half, abs=1.5 / n
        )


def test_cluster_bootstrap_counts_clusters_not_items() -> None:
    """50 clusters of 4 identical items (e.g. four renderings of one emoji, all right or all wrong):
    the honest interval is the binomial one of 50 draws, about twice as wide as treating the 200
    items as independent."""
    n_clusters, size, ones = 50, 4, 20
    cluster_vals = [1.0] * ones + [0.0] * (n_clusters - ones)
    values = [v for v in cluster_vals for _ in range(size)]
    clusters = [str(c) for c in range(n_clusters) for _ in range(size)]
    keys = [str(i) for i in range(len(values))]
    clustered = bootstrap_interval(ItemValues.build(keys, clusters, values), n_boot=20000)
    naive = bootstrap_interval(ItemValues.build(keys, keys, values), n_boot=20000)
    assert clustered is not None and naive is not None and clustered.n_clusters == 50
    low, high = _binomial_interval(ones, n_clusters)
    assert clustered.low == pytest.approx(low, abs=1.01 / n_clusters)
    assert clustered.high == pytest.approx(high, abs=1.01 / n_clusters)
    ratio = (clustered.high - clustered.low) / (naive.high - naive.low)
    assert 1.7 < ratio < 2.3  # sqrt(4) = 2


def test_bootstrap_is_seeded_and_reproducible() -> None:
    rng = np.random.default_rng(0)
    items = ItemValues.build([str(i) for i in range(80)], [str(i // 3) for i in range(80)], rng.random(80))
    a, b = bootstrap_interval(items, seed=0), bootstrap_interval(items, seed=0)
    assert a == b and a != bootstrap_interval(items, seed=1)
    w = resampling_weights(27, n_boot=5, seed=0)
    assert w.shape == (5, 27) and (w.sum(axis=1) == 27).all()


def test_corpus_bleu_replicates_equal_corpus_bleu_of_the_resampled_corpus() -> None:
    hyps = ["the cat sat on the mat", "a red apple", "hello there world", "grinning face", "thumbs up sign"]
    refs = ["the cat sat on a mat", "red apple", "hello world", "grinning face with big eyes", "thumbs up"]
    stats = bleu_statistics(hyps, refs, lang="en")
    items = ItemValues.build([str(i) for i in range(5)], [str(i) for i in range(5)], stats, "bleu")
    assert items.statistic() == pytest.approx(corpus_bleu(hyps, refs, lang="en").score)
    reps = bootstrap_replicates(items, n_boot=20, seed=3)
    weights = resampling_weights(5, n_boot=20, seed=3)
    for rep, w in zip(reps, weights, strict=True):
        idx = [i for i in range(5) for _ in range(int(w[i]))]
        assert rep == pytest.approx(
            corpus_bleu([hyps[i] for i in idx], [refs[i] for i in idx], lang="en").score
        )
    keys = [str(i) for i in range(5)]
    chrf = ItemValues.build(keys, keys, chrf_statistics(hyps, refs, lang="en"), "chrf")
    assert chrf.statistic() == pytest.approx(corpus_chrf(hyps, refs, lang="en").score)


def test_paired_ratio_and_difference() -> None:
    rng = np.random.default_rng(5)
    n = 300
    keys, clusters = [str(i) for i in range(n)], [str(i // 2) for i in range(n)]
    en = (rng.random(n) < 0.6).astype(float)
    same = ItemValues.build(keys, clusters, en)
    ratio = paired_ratio_interval(same, same)
    assert ratio is not None and (ratio.low, ratio.high) == (1.0, 1.0)  # identical items: exactly 1
    lang = en.copy()
    lang[:30] = 0.0  # the language loses 30 items that English gets (where en was right)
    other = ItemValues.build(keys, clusters, lang)
    r = paired_ratio_interval(other, same)
    observed = lang.mean() / en.mean()
    assert r is not None and r.low <= observed <= r.high and r.high < 1.0
    # paired: narrower than the ratio of two independent intervals' extremes
    a, b = bootstrap_interval(other), bootstrap_interval(same)
    assert a is not None and b is not None
    assert r.high - r.low < a.high / b.low - a.low / b.high
    d = paired_difference_interval(other, same)
    assert d is not None and d.high < 0 and d.contains(lang.mean() - en.mean())
    with pytest.raises(ValueError, match="same items"):
        paired_ratio_interval(ItemValues.build(keys[:10], clusters[:10], en[:10]), same)


def test_item_values_validation() -> None:
    with pytest.raises(ValueError, match="one entry per item"):
        ItemValues(("a", "b"), ("a",), (1.0, 0.0))
    with pytest.raises(ValueError, match="unknown aggregate"):
        ItemValues(("a",), ("a",), (1.0,), "median")
    with pytest.raises(ValueError, match="no items"):
        ItemValues((), (), ())
    items = ItemValues.build(["a", "b"], ["x", "x"], [1, 0])
    assert ItemValues.from_dict(items.to_dict()) == items
