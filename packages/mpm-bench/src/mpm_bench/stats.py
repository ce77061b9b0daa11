"""Uncertainty of board numbers: seeded (cluster) bootstrap intervals, paired ratios and differences.

Every task records, next to its number, the per-item values it averaged (or, for BLEU and chrF, the
per-item sufficient statistics that sacrebleu sums), the item keys and a cluster id per item. This
module resamples **clusters** with replacement (the items of one cluster, for example the renderings
and skin-tone variants of one emoji, are correlated, so resampling them one by one would make the
interval too narrow) and reads the 2.5 % and 97.5 % quantiles of the recomputed statistic (the
percentile bootstrap, Efron & Tibshirani 1993, ch. 13; the cluster form: Field & Welsh 2007).

Two results over the same items are compared with the **same** resampled clusters (a paired
bootstrap): the transfer ratio ``lang / en`` and the difference to the random baseline.

Why not scipy.stats.bootstrap: it resamples observations, not clusters, it cannot pair two
statistics through one set of resampling weights, and it cannot recompute sacrebleu's corpus scores
from summed statistics; the resampling itself is three lines of numpy below.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "AGGREGATES",
    "DEFAULT_LEVEL",
    "DEFAULT_N_BOOT",
    "DEFAULT_SEED",
    "Interval",
    "ItemValues",
    "bootstrap_interval",
    "bootstrap_replicates",
    "paired_difference_interval",
    "paired_ratio_interval",
    "paired_replicates",
    "resampling_weights",
]

DEFAULT_N_BOOT = 1000
DEFAULT_SEED = 0
DEFAULT_LEVEL = 0.95
#: How per-item values combine into the reported number.
AGGREGATES = ("mean", "bleu", "chrf")


@dataclass(frozen=True)
class ItemValues:
    """The per-item data behind one number: what the bootstrap resamples.

    Attributes:
        keys: one id per item (EmojiCap: the example key), in evaluation order.
        clusters: one cluster id per item; items of a cluster are resampled together.
        values: per item, the value whose mean is the number (``aggregate="mean"``), or the
            sacrebleu sufficient statistics of that item (a tuple of floats, ``"bleu"`` / ``"chrf"``).
        aggregate: ``"mean"``, ``"bleu"`` or ``"chrf"``.
    """

    keys: tuple[str, ...]
    clusters: tuple[str, ...]
    values: tuple[Any, ...]
    aggregate: str = "mean"

    def __post_init__(self) -> None:
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"unknown aggregate {self.aggregate!r}; choose from {list(AGGREGATES)}")
        if not (len(self.keys) == len(self.clusters) == len(self.values)):
            raise ValueError(
                f"keys ({len(self.keys)}), clusters ({len(self.clusters)}) and values ({len(self.values)}) "
                "must have one entry per item"
            )
        if not self.keys:
            raise ValueError("no items: a number needs at least one item to have an interval")

    @classmethod
    def build(
        cls,
        keys: Sequence[str],
        clusters: Sequence[str],
        values: Sequence[Any],
        aggregate: str = "mean",
    ) -> ItemValues:
        """From any sequences (numpy rows become tuples of floats)."""
        if aggregate == "mean":
            vals: tuple[Any, ...] = tuple(float(v) for v in values)
        else:
            vals = tuple(tuple(float(x) for x in np.asarray(v).reshape(-1)) for v in values)
        return cls(tuple(str(k) for k in keys), tuple(str(c) for c in clusters), vals, aggregate)

    @property
    def n_clusters(self) -> int:
        """Number of distinct clusters (the resampling units)."""
        return len(set(self.clusters))

    def statistic(self) -> float:
        """The number these values give (the mean, or the corpus score of the summed statistics)."""
        arr = self.array()
        return float(_score_fn(self.aggregate)(arr.sum(axis=0, keepdims=True))[0])

    def array(self) -> NDArray[np.float64]:
        """``[n_items, n_stats]`` float array (``n_stats`` = 2 for a mean: value and count 1)."""
        if self.aggregate == "mean":
            v = np.asarray(self.values, dtype=np.float64)
            return np.stack([v, np.ones_like(v)], axis=1)
        return np.asarray(self.values, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists)."""
        return {
            "keys": list(self.keys),
            "clusters": list(self.clusters),
            "values": [list(v) if isinstance(v, tuple) else v for v in self.values],
            "aggregate": self.aggregate,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemValues:
        """Parse :meth:`to_dict` output (errors name the missing field)."""
        missing = [k for k in ("keys", "clusters", "values") if k not in data]
        if missing:
            raise ValueError(f"per-item data lacks field(s) {missing}")
        return cls.build(data["keys"], data["clusters"], data["values"], str(data.get("aggregate", "mean")))


@dataclass(frozen=True)
class Interval:
    """A bootstrap confidence interval.

    Attributes:
        low, high: the interval bounds.
        level: coverage (0.95 for a 95 % interval).
        n_boot: number of bootstrap replicates.
        seed: seed of the resampling.
        n_clusters: number of resampled units (clusters, or items when each item is its own cluster).
    """

    low: float
    high: float
    level: float = DEFAULT_LEVEL
    n_boot: int = DEFAULT_N_BOOT
    seed: int = DEFAULT_SEED
    n_clusters: int = 0

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies inside (bounds included)."""
        return self.low <= value <= self.high

    @property
    def half_width(self) -> float:
        """Half the interval's width (the ``±`` of ``value ± half_width``)."""
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "low": self.low, "high": self.high, "level": self.level, "n_boot": self.n_boot,
            "seed": self.seed, "n_clusters": self.n_clusters,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Interval:
        """Parse :meth:`to_dict` output."""
        return cls(
            low=float(data["low"]),
            high=float(data["high"]),
            level=float(data.get("level", DEFAULT_LEVEL)),
            n_boot=int(data.get("n_boot", DEFAULT_N_BOOT)),
            seed=int(data.get("seed", DEFAULT_SEED)),
            n_clusters=int(data.get("n_clusters", 0)),
        )


# ------------------------------------------------------------------------------------ statistics
def _mean_from_sums(sums: NDArray[np.float64]) -> NDArray[np.float64]:
    with np.errstate(invalid="ignore", divide="ignore"):
        out: NDArray[np.float64] = sums[:, 0] / sums[:, 1]
    return out


@functools.cache
def _sacrebleu_metric(aggregate: str) -> Any:
    from sacrebleu.metrics import BLEU, CHRF

    # Only the score-from-statistics step is used, which does not depend on the tokenizer.
    return BLEU() if aggregate == "bleu" else CHRF()


def _corpus_from_sums(aggregate: str) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
    def score(sums: NDArray[np.float64]) -> NDArray[np.float64]:
        metric = _sacrebleu_metric(aggregate)
        return np.array(
            [metric._compute_score_from_stats([round(float(x)) for x in row]).score for row in sums],
            dtype=np.float64,
        )

    return score


def _score_fn(aggregate: str) -> Callable[[NDArray[np.float64]], NDArray[np.float64]]:
    """Maps ``[n_rep, n_stats]`` summed statistics to ``[n_rep]`` values."""
    if aggregate == "mean":
        return _mean_from_sums
    if aggregate in ("bleu", "chrf"):
        return _corpus_from_sums(aggregate)
    raise ValueError(f"unknown aggregate {aggregate!r}; choose from {list(AGGREGATES)}")


# ------------------------------------------------------------------------------------ resampling
def _cluster_index(clusters: Sequence[str]) -> tuple[list[str], NDArray[np.int64]]:
    names = sorted(set(clusters))
    pos = {c: i for i, c in enumerate(names)}
    return names, np.array([pos[c] for c in clusters], dtype=np.int64)


def resampling_weights(
    n_clusters: int, *, n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED
) -> NDArray[np.int64]:
    """``[n_boot, n_clusters]`` counts: how often each cluster is drawn in each replicate.

    Drawing ``n_clusters`` clusters with replacement is a multinomial draw of the counts; the same
    ``(n_clusters, n_boot, seed)`` always gives the same weights, so two results over the same
    clusters are resampled identically (paired).
    """
    if n_clusters < 1:
        raise ValueError(f"need at least one cluster to resample, got {n_clusters}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_clusters, np.full(n_clusters, 1.0 / n_clusters), size=n_boot)


def _cluster_sums(items: ItemValues, names: Sequence[str]) -> NDArray[np.float64]:
    arr = items.array()
    pos = {c: i for i, c in enumerate(names)}
    sums = np.zeros((len(names), arr.shape[1]), dtype=np.float64)
    np.add.at(sums, np.array([pos[c] for c in items.clusters], dtype=np.int64), arr)
    return sums


def bootstrap_replicates(
    items: ItemValues, *, n_boot: int = DEFAULT_N_BOOT, seed: int = DEFAULT_SEED
) -> NDArray[np.float64]:
    """``[n_boot]`` values of the statistic on cluster-resampled data (seeded, reproducible)."""
    names, _ = _cluster_index(items.clusters)
    weights = resampling_weights(len(names), n_boot=n_boot, seed=seed).astype(np.float64)
    return _score_fn(items.aggregate)(weights @ _cluster_sums(items, names))


def _percentiles(reps: NDArray[np.float64], level: float) -> tuple[float, float] | None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    finite = reps[np.isfinite(reps)]
    if finite.size < 0.95 * reps.size or finite.size == 0:  # the statistic is undefined too often
        return None
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_interval(
    items: ItemValues,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
    level: float = DEFAULT_LEVEL,
) -> Interval | None:
    """Percentile (cluster) bootstrap interval of the statistic of ``items``.

    Returns ``None`` when the statistic is undefined in more than 5 % of the replicates.
    """
    bounds = _percentiles(bootstrap_replicates(items, n_boot=n_boot, seed=seed), level)
    if bounds is None:
        return None
    return Interval(bounds[0], bounds[1], level, n_boot, seed, items.n_clusters)


def paired_replicates(parts: Sequence[ItemValues], n_boot: int, seed: int) -> list[NDArray[np.float64]]:
    """Replicates of each part's statistic under one shared resampling of the clusters.

    Parts must hold the same items (same keys, same clusters); they are aligned by key.
    """
    first = parts[0]
    key_set = set(first.keys)
    for other in parts[1:]:
        if set(other.keys) != key_set or len(other.keys) != len(first.keys):
            raise ValueError("a paired bootstrap needs the same items in both results (their keys differ)")
    # One cluster id per key, taken from the first part (the reference language).
    cluster_of = dict(zip(first.keys, first.clusters, strict=True))
    names, _ = _cluster_index(first.clusters)
    weights = resampling_weights(len(names), n_boot=n_boot, seed=seed).astype(np.float64)
    out = []
    for part in parts:
        aligned = ItemValues(part.keys, tuple(cluster_of[k] for k in part.keys), part.values, part.aggregate)
        out.append(_score_fn(part.aggregate)(weights @ _cluster_sums(aligned, names)))
    return out


def paired_ratio_interval(
    numerator: ItemValues,
    denominator: ItemValues,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
    level: float = DEFAULT_LEVEL,
) -> Interval | None:
    """Interval of ``stat(numerator) / stat(denominator)`` over the same resampled clusters.

    The transfer ratio ``lang / en``: both languages are evaluated on the same items, so the
    items' difficulty cancels in the ratio and the interval is narrower than two independent ones.
    Clusters come from ``denominator``. ``None`` when the denominator is 0 in > 5 % of replicates.
    """
    den, num = paired_replicates([denominator, numerator], n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = np.where(den != 0, num / np.where(den != 0, den, 1.0), np.nan)
    bounds = _percentiles(reps, level)
    if bounds is None:
        return None
    return Interval(bounds[0], bounds[1], level, n_boot, seed, denominator.n_clusters)


def paired_difference_interval(
    a: ItemValues,
    b: ItemValues,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = DEFAULT_SEED,
    level: float = DEFAULT_LEVEL,
) -> Interval | None:
    """Interval of ``stat(a) - stat(b)`` over the same resampled clusters (clusters from ``a``)."""
    ra, rb = paired_replicates([a, b], n_boot, seed)
    bounds = _percentiles(ra - rb, level)
    if bounds is None:
        return None
    return Interval(bounds[0], bounds[1], level, n_boot, seed, a.n_clusters)
