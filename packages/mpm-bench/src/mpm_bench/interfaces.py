"""Public contracts of mpm-bench: the protocols it consumes and the dataclasses it produces.

This package imports no other mpm package; ``integration/`` wires packages together through
these shapes. Images are ``PIL.Image.Image`` objects throughout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypedDict, runtime_checkable

from numpy.typing import ArrayLike
from PIL import Image

from mpm_bench.stats import Interval, ItemValues

__all__ = [
    "CandidateScorer",
    "Captioner",
    "EmojiCapMeta",
    "EmojiCapRecord",
    "Example",
    "FeatureExtractor",
    "Interval",
    "ItemValues",
    "LanguageIdentifier",
    "Painter",
    "Result",
    "Scorer",
]


@runtime_checkable
class Captioner(Protocol):
    """Answers a prompt about each image, in the asked language."""

    def caption(self, images: Sequence[Image.Image], prompt: str, lang: str) -> list[str]:
        """Return one answer per image to ``prompt`` (written in ``lang``, an ISO 639-1 code)."""
        ...


@runtime_checkable
class Scorer(Protocol):
    """Scores how well texts match images (log-likelihood, cosine similarity...)."""

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> ArrayLike:
        """Return a ``[len(images), len(texts)]`` matrix of scores for every pair; higher is a better match."""
        ...


@runtime_checkable
class CandidateScorer(Protocol):
    """Optional, for speed: a :class:`Scorer` that scores each image against its own candidate texts.

    Classification and the text-to-image judge ask ``len(images)`` small questions (one image, a few
    names). A scorer with this method gets them in one call and can batch across images; without it,
    mpm-bench calls ``score([image], candidates)`` once per image. Both must give the same numbers.
    """

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> ArrayLike: ...

    def score_candidates(
        self, images: Sequence[Image.Image], candidates: Sequence[Sequence[str]]
    ) -> Sequence[ArrayLike]:
        """Return, for each image ``i``, a ``[len(candidates[i])]`` vector of scores; higher is better."""
        ...


@runtime_checkable
class Painter(Protocol):
    """Generates images from prompts."""

    def paint(self, prompts: Sequence[str], lang: str, seed: int) -> list[Image.Image]:
        """Return one image per prompt (prompts are in ``lang``); the same ``seed`` reproduces them."""
        ...


@runtime_checkable
class LanguageIdentifier(Protocol):
    """Offline language identification (for response-language fidelity)."""

    def identify(self, text: str) -> str:
        """Return the ISO 639-1 code of the language ``text`` is written in."""
        ...


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps images to feature vectors for the Fréchet distance."""

    name: str

    def __call__(self, images: Sequence[Image.Image]) -> ArrayLike:
        """Return ``[len(images), dim]`` features."""
        ...


@dataclass(frozen=True)
class Example:
    """One image with its texts in several languages (an EmojiCap record or any image-text item).

    Attributes:
        key: unique id (EmojiCap: the concept's hexcode, e.g. ``"1F44D-1F3FD"``; in a named
            evaluation set ``<style>/<hexcode>``).
        image: the RGB image.
        names: ``{lang: text}`` (EmojiCap: the CLDR name in each language).
        meta: free metadata (EmojiCap: the :class:`EmojiCapMeta` fields other than ``key`` and
            ``names``: ``concept``, ``style``, ``emoji``, ``group``, ``split``, ``status``...).
    """

    key: str
    image: Image.Image = field(repr=False, compare=False)
    names: Mapping[str, str]
    meta: Mapping[str, Any] = field(default_factory=dict)


class EmojiCapMeta(TypedDict):
    """The ``<key>.json`` member of an EmojiCap record (one concept drawn in one style).

    Attributes:
        key: the sample key in the shard; equal to ``concept``.
        concept: the concept id: the emoji's hexcode (upper-case code points joined by ``-``, as
            OpenMoji names its files), the same in every style.
        style: the art style that drew the image (``openmoji``, ``twemoji``, ``noto``).
        emoji: the emoji string.
        names: ``{lang: CLDR name}`` for the languages of the build.
        group: the variant group (skin tones and genders of one base emoji share it).
        split_group: the group that decides the split (variant groups merged where two concepts
            are drawn identically in some style).
        split: ``train``, ``val`` or ``test`` (or the names given at build time).
        status: the ``emoji`` package's qualification status (``fully_qualified``...).
        en_aliases: other English names (GitHub/Slack-style aliases).
    """

    key: str
    concept: str
    style: str
    emoji: str
    names: dict[str, str]
    group: str
    split_group: str
    split: str
    status: str
    en_aliases: list[str]


EmojiCapRecord = TypedDict("EmojiCapRecord", {"__key__": str, "png": bytes, "json": EmojiCapMeta})
"""One EmojiCap sample as its shard holds it (and ``webdataset.WebDataset`` yields it before
decoding): the key, the PNG bytes of the RGB image, and the :class:`EmojiCapMeta` JSON."""


RESULT_FIELDS = (
    "model", "task", "language", "metric", "value", "n", "config_hash", "versions", "time", "dataset", "config",
    "interval", "chance", "items",
)  # fmt: skip


@dataclass(frozen=True)
class Result:
    """One number on the leaderboard (one row of the results JSON schema ``mpm-bench/results/v2``).

    Attributes:
        model: model name as shown on the board.
        task: ``captioning``, ``classification``, ``retrieval``, ``fidelity``, ``t2i``.
        language: ISO 639-1 code of the evaluated language.
        metric: e.g. ``bleu``, ``chrf``, ``acc@1``, ``acc_all@1``, ``mrr``, ``i2t_r@5``, ``fidelity``,
            ``judge_acc@1``, ``fd``.
        value: the number (BLEU/chrF on the 0-100 scale, accuracies and recalls in [0, 1]).
        n: number of evaluated items.
        config_hash: 12 hex digits of the SHA-256 of the task configuration (JSON, sorted keys).
        versions: package versions that produced the number.
        time: ISO 8601 UTC timestamp.
        dataset: dataset name and evaluation set, e.g. ``emojicap/test`` or ``emojicap/unseen``.
        config: the task configuration that ``config_hash`` hashes.
        interval: 95 % bootstrap interval of ``value`` (cluster-resampled; ``None`` when unknown,
            e.g. in results files of schema v1).
        chance: the value a chance-level model gets in expectation, when known in closed form
            (``acc@k`` among ``N`` candidates: ``k / N``), else ``None``.
        items: the per-item values, keys and cluster ids behind ``value`` (what the interval, the
            transfer ratio's paired interval and the comparison with the random baseline resample);
            ``None`` for numbers that are not built from per-item values (``fd``) and in v1 files.
    """

    model: str
    task: str
    language: str
    metric: str
    value: float
    n: int
    config_hash: str
    versions: Mapping[str, str] = field(default_factory=dict)
    time: str = ""
    dataset: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    interval: Interval | None = None
    chance: float | None = None
    items: ItemValues | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the schema row)."""
        return {
            "model": self.model, "task": self.task, "language": self.language, "metric": self.metric,
            "value": self.value, "n": self.n, "config_hash": self.config_hash,
            "versions": dict(self.versions), "time": self.time, "dataset": self.dataset,
            "config": json.loads(json.dumps(self.config)),
            "interval": None if self.interval is None else self.interval.to_dict(),
            "chance": self.chance,
            "items": None if self.items is None else self.items.to_dict(),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Result:
        """Parse one schema row (v1 rows have no ``interval``/``chance``/``items``); missing required
        fields raise ``ValueError`` naming them."""
        required = ("model", "task", "language", "metric", "value", "n", "config_hash")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"result row lacks required field(s) {missing}: {dict(data)!r}")
        interval, items, chance = data.get("interval"), data.get("items"), data.get("chance")
        return cls(
            model=str(data["model"]),
            task=str(data["task"]),
            language=str(data["language"]),
            metric=str(data["metric"]),
            value=float(data["value"]),
            n=int(data["n"]),
            config_hash=str(data["config_hash"]),
            versions=dict(data.get("versions") or {}),
            time=str(data.get("time") or ""),
            dataset=str(data.get("dataset") or ""),
            config=dict(data.get("config") or {}),
            interval=Interval.from_dict(interval) if interval else None,
            chance=None if chance is None else float(chance),
            items=ItemValues.from_dict(items) if items else None,
        )
