"""EmojiCap in the harnesses multilingual VLM users already run: lmms-eval and VLMEvalKit.

* :func:`export_lmms_eval` writes an lmms-eval task folder (``--include_path``): one YAML per
  evaluation set, language and question (``cls``: the name among ``k`` candidates, ``multiple_choice``;
  ``clsall``: among every name of the set; ``cap``: the name as free text, ``generate_until``), the
  groups ``emojicap`` and ``emojicap_all``, ``utils.py`` (``doc_to_visual`` / ``doc_to_text`` /
  metric functions that call this module, so lmms-eval reports mpm-bench's numbers), JSON-lines
  docs and PNG images as local files.
* :func:`export_vlmevalkit` writes VLMEvalKit custom-dataset TSVs (``index``, base64 ``image``,
  ``question``, ``answer``, options ``A``... for the multiple-choice sets): one MCQ and one VQA TSV per
  evaluation set and language.
* :func:`import_lmms_eval` / :func:`import_vlmevalkit` read what those harnesses write
  (``samples_*.jsonl``; ``{model}_{dataset}.xlsx|tsv|json``) back into :class:`Result` rows with
  mpm-bench's metrics, intervals and config hashes, so a model evaluated elsewhere lands on the same
  board, next to the random baseline.

Every export writes ``mpm_bench_export.json`` (the items, their cluster ids and the task configs);
the imports need it. The candidate sets are :func:`mpm_bench.tasks.candidate_sets` (the same
distractor concepts in every language), so a harness answers the same questions as
:func:`mpm_bench.run_classification`.

Neither harness is imported here (lmms-eval needs torch; VLMEvalKit is not on PyPI): the formats are
written from their documented conventions and, for lmms-eval, checked by loading the export through
lmms-eval's own ``TaskManager`` in the tests.
"""

from __future__ import annotations

import ast
import base64
import csv
import functools
import io
import json
import re
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mpm_bench.interfaces import Example, Result
from mpm_bench.metrics import corpus_bleu, corpus_chrf
from mpm_bench.stats import DEFAULT_N_BOOT
from mpm_bench.tasks import (
    CAPTION_PROMPTS,
    ClusterBy,
    _check_dataset,
    _gallery_size,
    _prompts_for,
    _Recorder,
    _target_masks,
    candidate_sets,
    captioning_config,
    chance_acc_at_k,
    chance_mrr,
    classification_config,
    cluster_ids,
    default_identifier,
    distractor_languages,
    gallery,
    ranking_item_values,
)

__all__ = [
    "EXPORT_MANIFEST",
    "EXPORT_SCHEMA",
    "ImportReport",
    "aggregate_bleu",
    "aggregate_chrf",
    "export_lmms_eval",
    "export_vlmevalkit",
    "import_lmms_eval",
    "import_vlmevalkit",
    "lmms_captioning_results",
    "lmms_classification_results",
    "parse_choice",
]

EXPORT_MANIFEST = "mpm_bench_export.json"
EXPORT_SCHEMA = "mpm-bench/export/v1"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: lmms-eval task kinds: among k candidates, among all names of the set, free-text captioning.
KINDS = ("cls", "clsall", "cap")


def _slug(text: str) -> str:
    """A task-name-safe form of an evaluation-set name (``seen-aug`` -> ``seen_aug``)."""
    slug = re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").lower()
    if not slug:
        raise ValueError(f"evaluation-set name {text!r} has no letters or digits")
    return slug


def lmms_task_name(eval_set: str, lang: str, kind: str) -> str:
    """``emojicap_{set}_{lang}_{kind}``, the lmms-eval task name of one exported question."""
    return f"emojicap_{_slug(eval_set)}_{lang}_{kind}"


def vlmevalkit_dataset_name(eval_set: str, lang: str, kind: str) -> str:
    """``EmojiCap_{set}_{lang}_{MCQ|VQA}``, the VLMEvalKit dataset name (the TSV's file stem)."""
    return f"EmojiCap_{_slug(eval_set)}_{lang}_{kind}"


# ------------------------------------------------------------------------------------------ prepare
@dataclass
class _SetPlan:
    """Everything an export writes for one evaluation set (computed once, shared by both formats)."""

    name: str
    dataset: str
    examples: Sequence[Example]
    langs: list[str]
    prompts: dict[str, str]
    keys: list[str]
    clusters: list[str]
    num_candidates: int
    ks: list[int]
    seed: int
    gallery_size: int
    collision_langs: list[str]
    candidates: dict[str, list[tuple[list[str], int]]] = field(default_factory=dict)
    galleries: dict[str, list[str]] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        ident = default_identifier(self.langs)
        return {
            "dataset": self.dataset,
            "langs": self.langs,
            "n": len(self.keys),
            "keys": self.keys,
            "clusters": self.clusters,
            "num_candidates": self.num_candidates,
            "ks": self.ks,
            "seed": self.seed,
            "gallery_size": self.gallery_size,
            "prompts": self.prompts,
            "identifier": getattr(ident, "name", type(ident).__name__),
            "configs": {
                "classification": classification_config(
                    self.keys, self.langs, self.num_candidates, self.ks, self.seed, self.collision_langs, 0
                ),
                "classification+all": classification_config(
                    self.keys, self.langs, self.num_candidates, self.ks, self.seed, self.collision_langs,
                    self.gallery_size,
                ),
                "captioning": captioning_config(
                    self.keys, self.langs, self.prompts, getattr(ident, "name", type(ident).__name__)
                ),
            },
        }  # fmt: skip


def _plan(
    sets: Mapping[str, Sequence[Example]],
    langs: Sequence[str] | str,
    *,
    num_candidates: int,
    ks: Sequence[int],
    seed: int,
    all_candidates: bool | int,
    prompts: Mapping[str, str] | None,
    cluster_by: ClusterBy,
    dataset_names: Mapping[str, str] | None,
) -> list[_SetPlan]:
    if not sets:
        raise ValueError("no evaluation sets to export")
    if num_candidates < 2 or num_candidates > len(LETTERS):
        raise ValueError(
            f"num_candidates must be between 2 and {len(LETTERS)} (option letters A-Z), got {num_candidates}"
        )
    slugs: dict[str, str] = {}
    plans = []
    for name, examples in sets.items():
        slug = _slug(name)
        if slug in slugs:
            raise ValueError(f"evaluation sets {slugs[slug]!r} and {name!r} would get the same task names")
        slugs[slug] = name
        codes = _check_dataset(examples, langs)
        if len(examples) < 2:
            raise ValueError(
                f"evaluation set {name!r} has {len(examples)} example(s); classification needs 2"
            )
        n_cand = min(num_candidates, len(examples))
        plan = _SetPlan(
            name=name,
            dataset=(dataset_names or {}).get(name, f"emojicap/{name}"),
            examples=examples,
            langs=codes,
            prompts=_prompts_for(codes, prompts, CAPTION_PROMPTS),
            keys=[ex.key for ex in examples],
            clusters=cluster_ids(examples, cluster_by),
            num_candidates=n_cand,
            ks=[int(k) for k in ks],
            seed=seed,
            gallery_size=_gallery_size(all_candidates, len(examples)),
            collision_langs=distractor_languages(examples),
        )
        for lang in codes:
            plan.candidates[lang] = candidate_sets(
                examples, lang, n_cand, seed, collision_langs=plan.collision_langs
            )
            if plan.gallery_size:
                plan.galleries[lang] = gallery(examples[: plan.gallery_size], lang)
        plans.append(plan)
    return plans


def _fresh_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"export target {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_MANIFEST).is_file():
        raise FileExistsError(
            f"{out} is not empty and holds no earlier export ({EXPORT_MANIFEST}); pick an empty folder"
        )
    return out


def _publish(tmp: Path, out: Path) -> None:
    """Replace ``out`` by the fully written ``tmp`` (nothing half-written is left at ``out``)."""
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _write_manifest(path: Path, fmt: str, plans: Sequence[_SetPlan], tasks: Mapping[str, Any]) -> None:
    from mpm_bench.tasks import package_versions

    payload = {
        "schema": EXPORT_SCHEMA,
        "format": fmt,
        "versions": package_versions(),
        "sets": {p.name: p.manifest() for p in plans},
        "tasks": dict(tasks),
    }
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=1), encoding="utf-8")


def _meta_fields(ex: Example) -> dict[str, Any]:
    return {k: ex.meta[k] for k in ("style", "group") if k in ex.meta and isinstance(ex.meta[k], (str, int))}


# ------------------------------------------------------------------------------------- lmms-eval
_UTILS = '''"""EmojiCap tasks for lmms-eval, written by `mpm-bench export lmms-eval` (mpm-bench {version}).

The metric functions call mpm-bench (``pip install mpm-bench``), so lmms-eval reports the numbers
mpm-bench computes from the same predictions; `mpm-bench import lmms-eval` turns the samples files
into mpm-bench results with intervals.
"""

import functools
import json
import os

from PIL import Image

from mpm_bench import harness

HERE = os.path.dirname(os.path.abspath(__file__))
#: per evaluation set: the languages evaluated (the language identifier of the fidelity metric
#: is restricted to them plus English, as in mpm-bench).
LANGS = {langs!r}
KS = {ks!r}


def doc_to_visual(doc):
    with Image.open(os.path.join(HERE, doc["image"])) as im:
        return [im.convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


@functools.lru_cache(maxsize=None)
def _gallery(path):
    with open(os.path.join(HERE, path), encoding="utf-8") as f:
        return json.load(f)


def doc_to_gallery(doc):
    return list(_gallery(doc["gallery"]))


def process_classification(doc, results):
    """Among k candidates: results are lmms-eval's (loss, is_greedy) per choice (lower loss = better)."""
    return harness.lmms_classification_results(doc, results, KS[doc["set"]])


def process_gallery(doc, results):
    """Among every name of the set (retrieval P@1 over the gallery) and its reciprocal rank."""
    return harness.lmms_classification_results(doc, results, KS[doc["set"]], prefix="acc_all", mrr_name="mrr_all")


def process_captioning(doc, results):
    return harness.lmms_captioning_results(doc, results, LANGS[doc["set"]])


def aggregate_bleu(items):
    return harness.aggregate_bleu(items)


def aggregate_chrf(items):
    return harness.aggregate_chrf(items)
'''


def _yaml_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def _task_yaml(
    task: str, data_file: Path, cache_dir: Path, kind: str, ks: Sequence[int], gallery_size: int, n_cand: int
) -> str:
    lines = [
        f"task: {task}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {_yaml_str(str(data_file))}",
        f"  cache_dir: {_yaml_str(str(cache_dir))}",
        "test_split: test",
        "doc_to_visual: !function utils.doc_to_visual",
        "doc_to_text: !function utils.doc_to_text",
        "doc_to_target: " + ("reference" if kind == "cap" else "target"),
    ]
    if kind == "cap":
        lines += [
            "output_type: generate_until",
            "generation_kwargs:",
            "  max_new_tokens: 32",
            "  do_sample: false",
            "  until: []",
            "process_results: !function utils.process_captioning",
            "metric_list:",
            "  - metric: bleu",
            "    aggregation: !function utils.aggregate_bleu",
            "    higher_is_better: true",
            "  - metric: chrf",
            "    aggregation: !function utils.aggregate_chrf",
            "    higher_is_better: true",
        ]
        for metric in ("fidelity", "en_share"):
            lines += [
                f"  - metric: {metric}",
                "    aggregation: mean",
                f"    higher_is_better: {str(metric == 'fidelity').lower()}",
            ]
    else:
        prefix, mrr, size = ("acc", "mrr", n_cand) if kind == "cls" else ("acc_all", "mrr_all", gallery_size)
        lines += [
            "output_type: multiple_choice",
            "doc_to_choice: " + ("choices" if kind == "cls" else "!function utils.doc_to_gallery"),
            "process_results: !function utils."
            + ("process_classification" if kind == "cls" else "process_gallery"),
            "metric_list:",
        ]
        for name in [f"{prefix}@{k}" for k in ks if k < size] + [mrr]:
            lines += [f'  - metric: "{name}"', "    aggregation: mean", "    higher_is_better: true"]
    lines += ["metadata:", "  version: 1", "  source: mpm-bench export lmms-eval"]
    return "\n".join(lines) + "\n"


def export_lmms_eval(
    sets: Mapping[str, Sequence[Example]],
    out_dir: str | Path,
    *,
    langs: Sequence[str] | str,
    num_candidates: int = 10,
    ks: Sequence[int] = (1, 5),
    seed: int = 0,
    all_candidates: bool | int = True,
    prompts: Mapping[str, str] | None = None,
    cluster_by: ClusterBy = None,
    dataset_names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write an lmms-eval task folder for ``sets`` (``{evaluation-set name: examples}``).

    Run it with ``lmms-eval --include_path OUT_DIR --tasks emojicap`` (among-k classification and
    captioning in every language) or ``--tasks emojicap_all`` (among all names; one loglikelihood
    request per image and gallery name). Arguments as in :func:`mpm_bench.run_classification` /
    :func:`mpm_bench.run_captioning`; ``dataset_names`` maps a set to its board name (default
    ``emojicap/{set}``). The folder is written next to ``out_dir`` and renamed into place, so a failed
    export leaves nothing half-written; the data paths inside the YAMLs are absolute (re-export after
    moving the folder). Returns the export manifest.
    """
    plans = _plan(
        sets, langs, num_candidates=num_candidates, ks=ks, seed=seed, all_candidates=all_candidates,
        prompts=prompts, cluster_by=cluster_by, dataset_names=dataset_names,
    )  # fmt: skip
    out = _fresh_dir(out_dir).resolve()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tasks: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[str]] = {"emojicap": [], "emojicap_all": []}
    for plan in plans:
        slug = _slug(plan.name)
        (tmp / "images" / slug).mkdir(parents=True)
        (tmp / "data" / slug).mkdir(parents=True)
        image_paths = []
        for i, ex in enumerate(plan.examples):
            rel = f"images/{slug}/{i:05d}.png"
            ex.image.convert("RGB").save(tmp / rel, format="PNG")
            image_paths.append(rel)
        for lang in plan.langs:
            docs = []
            for i, ex in enumerate(plan.examples):
                choices, target = plan.candidates[lang][i]
                docs.append({
                    "i": i, "key": ex.key, "cluster": plan.clusters[i], "set": plan.name, "lang": lang,
                    "image": image_paths[i], "question": plan.prompts[lang], "choices": choices,
                    "target": target, "reference": ex.names[lang], **_meta_fields(ex),
                })  # fmt: skip
            kinds = ["cls", "cap"]
            _write_jsonl(tmp / "data" / slug / f"{lang}.jsonl", docs)
            if plan.gallery_size:
                names = plan.galleries[lang]
                gpath = f"data/{slug}/{lang}_gallery.json"
                (tmp / gpath).write_text(json.dumps(names, ensure_ascii=False), encoding="utf-8")
                position = {name: j for j, name in enumerate(names)}
                gdocs = [
                    {**{k: v for k, v in d.items() if k not in ("choices", "target")},
                     "gallery": gpath, "target": position[d["reference"]]}
                    for d in docs[: plan.gallery_size]
                ]  # fmt: skip
                _write_jsonl(tmp / "data" / slug / f"{lang}_all.jsonl", gdocs)
                kinds.append("clsall")
            for kind in kinds:
                task = lmms_task_name(plan.name, lang, kind)
                data_name = f"{lang}_all.jsonl" if kind == "clsall" else f"{lang}.jsonl"
                (tmp / f"{task}.yaml").write_text(
                    _task_yaml(task, out / "data" / slug / data_name, out / ".hf_cache", kind, plan.ks,
                               plan.gallery_size, plan.num_candidates),
                    encoding="utf-8",
                )  # fmt: skip
                tasks[task] = {
                    "set": plan.name,
                    "lang": lang,
                    "kind": kind,
                    "data": f"data/{slug}/{data_name}",
                }
                groups["emojicap_all" if kind == "clsall" else "emojicap"].append(task)
    for group, members in groups.items():
        if members:
            text = f"group: {group}\ntask:\n" + "".join(f"  - {t}\n" for t in members)
            text += "metadata:\n  version: 1\n"
            (tmp / f"{group}.yaml").write_text(text, encoding="utf-8")
    from mpm_bench import __version__

    (tmp / "utils.py").write_text(
        _UTILS.format(
            version=__version__,
            langs={p.name: p.langs for p in plans},
            ks={p.name: p.ks for p in plans},
        ),
        encoding="utf-8",
    )
    _write_manifest(tmp / EXPORT_MANIFEST, "lmms-eval", plans, tasks)
    _publish(tmp, out)
    return json.loads((out / EXPORT_MANIFEST).read_text(encoding="utf-8"))


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------ lmms-eval metric functions
def _first_number(resp: Any) -> float:
    """The loglikelihood entry of one lmms-eval response: ``(loss, is_greedy)``, possibly nested in
    lists, or its string form (lmms-eval hands filtered responses on as ``"(-1.2, False)"`` and
    writes them to the samples files as strings)."""
    if isinstance(resp, str):
        text = resp.strip()
        try:
            return float(text)
        except ValueError:
            try:
                resp = ast.literal_eval(text)  # literals only: never evaluates code
            except (ValueError, SyntaxError) as err:
                raise ValueError(f"not a loglikelihood response: {resp!r}") from err
    while isinstance(resp, (list, tuple)) and resp and isinstance(resp[0], (list, tuple)):
        resp = resp[0]
    if isinstance(resp, (list, tuple)):
        if not resp:
            raise ValueError("empty loglikelihood response")
        return _first_number(resp[0])
    return float(resp)


def _first_text(resp: Any) -> str:
    while isinstance(resp, (list, tuple)):
        if not resp:
            return ""
        resp = resp[0]
    return "" if resp is None else str(resp).strip()


def lmms_classification_results(
    doc: Mapping[str, Any],
    results: Sequence[Any],
    ks: Sequence[int],
    *,
    prefix: str = "acc",
    mrr_name: str = "mrr",
) -> dict[str, float]:
    """Per-doc metrics of a ``multiple_choice`` EmojiCap task from lmms-eval's responses.

    lmms-eval's models return ``(loss, is_greedy)`` per choice and lmms-eval itself picks the
    ``argmin`` of the loss, so the score of a choice is ``-loss``. Ties count at their expected
    value, as in :func:`mpm_bench.run_classification`.
    """
    scores = -np.asarray([_first_number(r) for r in results], dtype=np.float64)
    if not 0 <= int(doc["target"]) < len(scores):
        raise ValueError(f"doc {doc.get('key')!r}: target {doc['target']} outside the {len(scores)} choices")
    ks_used = [int(k) for k in ks if k < len(scores)]
    values = ranking_item_values(
        [scores], _target_masks([scores], [int(doc["target"])]), ks_used, prefix=prefix, mrr_name=mrr_name
    )
    return {name: v[0] for name, v in values.items()}


@functools.lru_cache(maxsize=32)
def _identifier(langs: tuple[str, ...]) -> Any:
    return default_identifier(list(langs))


def lmms_captioning_results(
    doc: Mapping[str, Any], results: Sequence[Any], langs: Sequence[str]
) -> dict[str, Any]:
    """Per-doc metrics of a ``generate_until`` EmojiCap task: BLEU/chrF inputs (aggregated over the
    corpus by :func:`aggregate_bleu` / :func:`aggregate_chrf`) and the fidelity indicators."""
    answer = _first_text(results)
    lang = str(doc["lang"])
    ident = _identifier(tuple(langs)).identify(answer)
    item = {"hyp": answer, "ref": str(doc["reference"]), "lang": lang}
    return {"bleu": item, "chrf": item, "fidelity": float(ident == lang), "en_share": float(ident == "en")}


def _corpus(items: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str], str]:
    if not items:
        raise ValueError("no items to aggregate")
    langs = {str(i["lang"]) for i in items}
    if len(langs) != 1:
        raise ValueError(f"one corpus score per language; got items in {sorted(langs)}")
    return [str(i["hyp"]) for i in items], [str(i["ref"]) for i in items], langs.pop()


def aggregate_bleu(items: Sequence[Mapping[str, Any]]) -> float:
    """Corpus BLEU (0-100) of ``{"hyp", "ref", "lang"}`` items, as :func:`mpm_bench.corpus_bleu`."""
    hyps, refs, lang = _corpus(items)
    return float(corpus_bleu(hyps, refs, lang=lang).score)


def aggregate_chrf(items: Sequence[Mapping[str, Any]]) -> float:
    """Corpus chrF (0-100) of ``{"hyp", "ref", "lang"}`` items, as :func:`mpm_bench.corpus_chrf`."""
    hyps, refs, lang = _corpus(items)
    return float(corpus_chrf(hyps, refs, lang=lang).score)


# ------------------------------------------------------------------------------------- VLMEvalKit
def _b64_png(image: Any) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _write_tsv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    # VLMEvalKit reads TSVs with pandas.read_csv(sep="\t") and writes them QUOTE_ALL; both read this.
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def export_vlmevalkit(
    sets: Mapping[str, Sequence[Example]],
    out_dir: str | Path,
    *,
    langs: Sequence[str] | str,
    num_candidates: int = 10,
    seed: int = 0,
    prompts: Mapping[str, str] | None = None,
    cluster_by: ClusterBy = None,
    dataset_names: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write VLMEvalKit custom-dataset TSVs for ``sets``: per set and language
    ``EmojiCap_{set}_{lang}_MCQ.tsv`` (``index``, base64 PNG ``image``, ``question``, options
    ``A``..., ``answer`` = the right letter) and ``EmojiCap_{set}_{lang}_VQA.tsv`` (``answer`` = the
    name). Extra columns ``key``, ``lang``, ``set``, ``cluster``, ``category`` ride along into
    VLMEvalKit's prediction files, which :func:`import_vlmevalkit` reads. Put the TSVs in ``$LMUData``
    and run ``python run.py --data EmojiCap_test_zh_MCQ ...``: VLMEvalKit treats a TSV with ``A``/``B``
    columns as a custom MCQ dataset and one without as a custom VQA dataset. Returns the manifest.
    """
    plans = _plan(
        sets, langs, num_candidates=num_candidates, ks=(1,), seed=seed, all_candidates=False, prompts=prompts,
        cluster_by=cluster_by, dataset_names=dataset_names,
    )  # fmt: skip
    out = _fresh_dir(out_dir).resolve()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tasks: dict[str, dict[str, Any]] = {}
    for plan in plans:
        images = [_b64_png(ex.image) for ex in plan.examples]
        for lang in plan.langs:
            letters = LETTERS[: plan.num_candidates]
            mcq = vlmevalkit_dataset_name(plan.name, lang, "MCQ")
            rows = []
            for i, ex in enumerate(plan.examples):
                choices, target = plan.candidates[lang][i]
                rows.append([i, images[i], plan.prompts[lang], *choices, letters[target], ex.key, lang, plan.name,
                             plan.clusters[i], plan.name])  # fmt: skip
            _write_tsv(
                tmp / f"{mcq}.tsv",
                [
                    "index",
                    "image",
                    "question",
                    *letters,
                    "answer",
                    "key",
                    "lang",
                    "set",
                    "cluster",
                    "category",
                ],
                rows,
            )
            vqa = vlmevalkit_dataset_name(plan.name, lang, "VQA")
            _write_tsv(
                tmp / f"{vqa}.tsv",
                ["index", "image", "question", "answer", "key", "lang", "set", "cluster", "category"],
                [
                    [
                        i,
                        images[i],
                        plan.prompts[lang],
                        ex.names[lang],
                        ex.key,
                        lang,
                        plan.name,
                        plan.clusters[i],
                        plan.name,
                    ]
                    for i, ex in enumerate(plan.examples)
                ],
            )
            tasks[mcq] = {"set": plan.name, "lang": lang, "kind": "cls"}
            tasks[vqa] = {"set": plan.name, "lang": lang, "kind": "cap"}
    _write_manifest(tmp / EXPORT_MANIFEST, "vlmevalkit", plans, tasks)
    _publish(tmp, out)
    return json.loads((out / EXPORT_MANIFEST).read_text(encoding="utf-8"))


_LEADING_LETTER = re.compile(r"^\s*[\(\[]?([A-Z])[\)\]]?(?:[\s.:：、,)]|$)")
_ANSWER_IS = re.compile(r"(?:answer|option|choice)\s*(?:is|:)?\s*[\(\[]?([A-Z])\b", re.IGNORECASE)


def parse_choice(prediction: Any, options: Mapping[str, str]) -> str | None:
    """The option letter a free-text MCQ prediction names, or ``None`` when it names none.

    In order: a leading letter (``"B"``, ``"B."``, ``"(B) ..."``), ``"answer is B"``, then the
    prediction being exactly one option's text (case- and punctuation-insensitive). No LLM judge:
    an answer that matches no option counts as wrong (VLMEvalKit would ask a judge model).
    """
    text = "" if prediction is None else str(prediction).strip()
    if not text or text.lower() == "nan":
        return None
    for pattern in (_LEADING_LETTER, _ANSWER_IS):
        m = pattern.search(text)
        if m and m.group(1).upper() in options:
            return m.group(1).upper()

    def norm(s: str) -> str:
        return re.sub(r"[\s\W_]+", " ", s.casefold()).strip()

    matches = [letter for letter, opt in options.items() if norm(str(opt)) == norm(text)]
    return matches[0] if len(matches) == 1 else None


# ------------------------------------------------------------------------------------------ import
@dataclass
class ImportReport:
    """What an import produced.

    Attributes:
        results: the board rows.
        files: the prediction files read, per task / dataset name.
        unparsed: per VLMEvalKit MCQ dataset, how many predictions named no option (counted wrong).
    """

    results: list[Result]
    files: dict[str, str] = field(default_factory=dict)
    unparsed: dict[str, int] = field(default_factory=dict)


def _load_export(export_dir: str | Path, fmt: str) -> dict[str, Any]:
    path = Path(export_dir) / EXPORT_MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no {EXPORT_MANIFEST} in {export_dir}: pass the folder that `mpm-bench export {fmt}` wrote"
        )
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("schema") != EXPORT_SCHEMA or manifest.get("format") != fmt:
        raise ValueError(
            f"{path} is not a {fmt} export of mpm-bench (schema {manifest.get('schema')!r}, format {manifest.get('format')!r})"
        )
    return manifest


def _ordered(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], where: str) -> list[Mapping[str, Any]]:
    """Rows ordered by item index, checked complete and matching the export's keys."""
    by_index: dict[int, Mapping[str, Any]] = {}
    for row in rows:
        by_index[int(row["i"])] = row
    missing = [i for i in range(len(keys)) if i not in by_index]
    if missing:
        raise ValueError(
            f"{where}: predictions for {len(keys) - len(missing)} of {len(keys)} items (missing e.g. item {missing[0]}); "
            "evaluate every item (no --limit) so the number is comparable"
        )
    out = [by_index[i] for i in range(len(keys))]
    bad = [i for i, row in enumerate(out) if _key_differs(row.get("key"), keys[i])]
    if bad:
        raise ValueError(
            f"{where}: item {bad[0]} has key {out[bad[0]].get('key')!r}, the export has {keys[bad[0]]!r}"
        )
    return out


def _key_differs(seen: Any, key: str) -> bool:
    """A key that came back different (pandas may turn a hexcode such as ``23E9`` into a float: not
    counted as a difference; the item index still aligns the rows)."""
    if seen is None or str(seen) == key:
        return False
    try:
        float(str(seen))
    except ValueError:
        return True
    return False


def _recorder(
    model: str, task: str, set_info: Mapping[str, Any], config: dict[str, Any], n: int, n_boot: int
) -> _Recorder:
    from mpm_bench.tasks import package_versions

    return _Recorder(
        model=model, task=task, dataset=str(set_info["dataset"]), config=config, versions=package_versions(),
        keys=list(set_info["keys"])[:n], clusters=list(set_info["clusters"])[:n], n_boot=n_boot,
    )  # fmt: skip


def _classification_results(
    model: str,
    set_info: Mapping[str, Any],
    config: dict[str, Any],
    per_lang: Mapping[str, Mapping[str, list[Any]]],
    n_boot: int,
) -> list[Result]:
    """Rows from per-language score vectors: ``{"cls": [(scores, target)], "clsall": [...]}``."""
    n = len(set_info["keys"])
    rec = _recorder(model, "classification", set_info, config, n, n_boot)
    ks = [int(k) for k in config["ks"]]
    for lang in [c for c in config["langs"] if c in per_lang]:
        kinds = per_lang[lang]
        if "cls" in kinds:
            rows = [np.asarray(s, dtype=np.float64) for s, _ in kinds["cls"]]
            n_cand = len(rows[0])
            ks_k = [k for k in ks if k < n_cand]
            vals = ranking_item_values(rows, _target_masks(rows, [t for _, t in kinds["cls"]]), ks_k)
            for k in ks_k:
                rec.add_items(lang, f"acc@{k}", vals[f"acc@{k}"], chance=chance_acc_at_k(k, n_cand))
            rec.add_items(lang, "mrr", vals["mrr"], chance=chance_mrr(n_cand))
        if "clsall" in kinds:
            rows = [np.asarray(s, dtype=np.float64) for s, _ in kinds["clsall"]]
            size = len(rows[0])
            ks_all = [k for k in ks if k < size]
            vals = ranking_item_values(
                rows,
                _target_masks(rows, [t for _, t in kinds["clsall"]]),
                ks_all,
                prefix="acc_all",
                mrr_name="mrr_all",
            )
            for k in ks_all:
                rec.add_items(
                    lang,
                    f"acc_all@{k}",
                    vals[f"acc_all@{k}"],
                    chance=chance_acc_at_k(k, size),
                    count=len(rows),
                )
            rec.add_items(lang, "mrr_all", vals["mrr_all"], chance=chance_mrr(size), count=len(rows))
    return rec.rows


def _captioning_results(
    model: str,
    set_info: Mapping[str, Any],
    answers: Mapping[str, Sequence[str]],
    refs: Mapping[str, Sequence[str]],
    n_boot: int,
) -> list[Result]:
    from mpm_bench.tasks import _add_caption_scores, _add_fidelity

    config = dict(set_info["configs"]["captioning"])
    rec = _recorder(model, "captioning", set_info, config, len(set_info["keys"]), n_boot)
    ident = default_identifier(list(set_info["langs"]))
    for lang in [c for c in config["langs"] if c in answers]:
        _add_caption_scores(rec, lang, list(answers[lang]), list(refs[lang]))
        _add_fidelity(rec, lang, list(answers[lang]), ident)
    return rec.rows


def _find_files(paths: Sequence[str | Path], patterns: Sequence[str]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for pattern in patterns:
                found += sorted(p.rglob(pattern))
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"prediction path not found: {p}")
    return list(dict.fromkeys(found))


def import_lmms_eval(
    paths: Sequence[str | Path], export_dir: str | Path, *, model_name: str, n_boot: int = DEFAULT_N_BOOT
) -> ImportReport:
    """Read lmms-eval ``samples_*.jsonl`` files (or folders holding them) of an EmojiCap export.

    ``multiple_choice`` tasks give ``acc@k`` and ``mrr`` (``acc_all@k`` / ``mrr_all`` for the
    ``emojicap_all`` tasks) from the per-choice losses, ``generate_until`` tasks give ``bleu``,
    ``chrf``, ``fidelity`` and ``en_share`` from the answers; with the same config hash as
    :func:`mpm_bench.run_classification` / :func:`mpm_bench.run_captioning`, so the rows sit next to
    mpm-bench's own runs (and its random baseline) on one board.
    """
    manifest = _load_export(export_dir, "lmms-eval")
    files = _find_files(paths, ["*samples_emojicap_*.jsonl"])
    if not files:
        raise FileNotFoundError(f"no lmms-eval samples_emojicap_*.jsonl files in {[str(p) for p in paths]}")
    by_task: dict[str, list[dict[str, Any]]] = {}
    report = ImportReport(results=[])
    for path in files:
        m = re.search(r"samples_(emojicap_[0-9a-z_]+)\.jsonl$", path.name)
        if not m or m.group(1) not in manifest["tasks"]:
            raise ValueError(
                f"{path}: not a samples file of a task of this export (tasks: emojicap_<set>_<lang>_<kind>)"
            )
        task = m.group(1)
        if task in by_task:
            raise ValueError(
                f"two samples files for task {task}: {report.files[task]} and {path}; import one run at a time"
            )
        rows = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{line_no}: not JSON ({err})") from err
        by_task[task] = rows
        report.files[task] = str(path)
    for set_name, set_info in manifest["sets"].items():
        cls: dict[str, dict[str, list[Any]]] = {}
        answers: dict[str, list[str]] = {}
        refs: dict[str, list[str]] = {}
        for task, info in manifest["tasks"].items():
            if info["set"] != set_name or task not in by_task:
                continue
            lang, kind = info["lang"], info["kind"]
            n = int(set_info["gallery_size"]) if kind == "clsall" else len(set_info["keys"])
            docs = _read_jsonl(Path(export_dir) / info["data"])
            merged = []
            for sample in by_task[task]:
                doc_id = int(sample["doc_id"])
                if not 0 <= doc_id < len(docs):
                    raise ValueError(
                        f"{report.files[task]}: doc_id {doc_id} outside the {len(docs)} docs of {task}"
                    )
                merged.append({**docs[doc_id], "resps": sample.get("filtered_resps", sample.get("resps"))})
            samples = _ordered(merged, list(set_info["keys"])[:n], report.files[task])
            if kind == "cap":
                answers[lang] = [_first_text(s["resps"]) for s in samples]
                refs[lang] = [str(s["reference"]) for s in samples]
            else:
                rows = []
                for s in samples:
                    resps = s["resps"] if isinstance(s["resps"], list) else [s["resps"]]
                    width = len(s["choices"]) if kind == "cls" else int(set_info["gallery_size"])
                    if kind == "clsall":
                        width = len(_read_json_cached(str(Path(export_dir) / s["gallery"])))
                    if len(resps) != width:
                        raise ValueError(
                            f"{report.files[task]}: item {s['i']} has {len(resps)} responses for {width} choices"
                        )
                    rows.append((-np.asarray([_first_number(r) for r in resps]), int(s["target"])))
                cls.setdefault(lang, {})[kind] = rows
        if cls:
            has_all = any("clsall" in kinds for kinds in cls.values())
            config = dict(set_info["configs"]["classification+all" if has_all else "classification"])
            report.results += _classification_results(model_name, set_info, config, cls, n_boot)
        if answers:
            report.results += _captioning_results(model_name, set_info, answers, refs, n_boot)
    return report


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"export data file missing: {path} (re-run `mpm-bench export lmms-eval`)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@functools.lru_cache(maxsize=64)
def _read_json_cached(path: str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _read_predictions(path: Path) -> list[dict[str, Any]]:
    """Rows of a VLMEvalKit prediction file (``.xlsx``, ``.tsv``/``.csv`` or ``.json``)."""
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        try:
            import openpyxl
        except ImportError as err:  # pragma: no cover - openpyxl is in the harness extra
            raise ImportError(
                "reading .xlsx predictions needs openpyxl: pip install 'mpm-bench[harness]'"
            ) from err
        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            sheet = wb.worksheets[0]
            rows = [list(r) for r in sheet.iter_rows(values_only=True)]
        finally:
            wb.close()
        if not rows:
            return []
        header = [str(h) for h in rows[0]]
        return [dict(zip(header, r, strict=False)) for r in rows[1:]]
    if suffix in (".tsv", ".csv"):
        csv.field_size_limit(sys.maxsize)
        with path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
    if suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):  # {"index": {...}, "prediction": {...}} (pandas orient="columns")
            cols = list(data)
            idx = list(data[cols[0]])
            return [{c: data[c][k] for c in cols} for k in idx]
        return list(data)
    raise ValueError(
        f"{path}: unknown prediction file type {suffix!r} (VLMEvalKit writes .xlsx, .tsv or .json)"
    )


def import_vlmevalkit(
    paths: Sequence[str | Path],
    export_dir: str | Path,
    *,
    model_name: str | None = None,
    n_boot: int = DEFAULT_N_BOOT,
) -> ImportReport:
    """Read VLMEvalKit prediction files (``{model}_{dataset}.xlsx|tsv|json``, or folders holding
    them) of an EmojiCap export.

    MCQ datasets give ``acc@1`` (the option letter the prediction names, :func:`parse_choice`;
    a different protocol from mpm-bench's likelihood ranking, so a separate board row whose chance
    level is ``1 / k``); VQA datasets give ``bleu``, ``chrf``, ``fidelity`` and ``en_share`` with the
    config of :func:`mpm_bench.run_captioning`. ``model_name`` defaults to the file-name prefix.
    """
    manifest = _load_export(export_dir, "vlmevalkit")
    datasets = manifest["tasks"]
    files = _find_files(paths, ["*EmojiCap_*.xlsx", "*EmojiCap_*.tsv", "*EmojiCap_*.json"])
    report = ImportReport(results=[])
    found: dict[str, tuple[Path, str]] = {}
    for path in files:
        stem = path.stem
        hit = next(
            (d for d in sorted(datasets, key=len, reverse=True) if stem.endswith("_" + d) or stem == d), None
        )
        if hit is None:
            raise ValueError(
                f"{path}: names no dataset of this export (expected {{model}}_EmojiCap_<set>_<lang>_<MCQ|VQA>)"
            )
        model = model_name or stem[: -len(hit)].rstrip("_")
        if not model:
            raise ValueError(f"{path}: no model name in the file name; pass model_name / --name")
        if hit in found:
            raise ValueError(f"two prediction files for {hit}: {found[hit][0]} and {path}")
        found[hit] = (path, model)
    if not found:
        raise FileNotFoundError(f"no VLMEvalKit prediction files for EmojiCap in {[str(p) for p in paths]}")
    models = {m for _, m in found.values()}
    if len(models) > 1:
        raise ValueError(f"prediction files of several models {sorted(models)}; import one model at a time")
    model = models.pop()
    for set_name, set_info in manifest["sets"].items():
        acc: dict[str, list[float]] = {}
        answers: dict[str, list[str]] = {}
        refs: dict[str, list[str]] = {}
        for dname, info in datasets.items():
            if info["set"] != set_name or dname not in found:
                continue
            path = found[dname][0]
            table = _read_predictions(path)
            missing = [c for c in ("index", "prediction", "answer") if table and c not in table[0]]
            if missing or not table:
                raise ValueError(
                    f"{path}: no rows"
                    if not table
                    else f"{path}: no {missing} column(s) (columns: {sorted(table[0])})"
                )
            raw = [{**r, "i": r["index"]} for r in table]
            rows = _ordered(raw, list(set_info["keys"]), str(path))
            report.files[dname] = str(path)
            lang = info["lang"]
            if info["kind"] == "cls":
                letters = LETTERS[: int(set_info["num_candidates"])]
                values, unparsed = [], 0
                for r in rows:
                    choice = parse_choice(
                        r["prediction"], {c: str(r[c]) for c in letters if r.get(c) is not None}
                    )
                    unparsed += choice is None
                    values.append(float(choice == str(r["answer"]).strip()))
                acc[lang] = values
                report.unparsed[dname] = unparsed
            else:
                answers[lang] = [
                    "" if r["prediction"] is None else str(r["prediction"]).strip() for r in rows
                ]
                refs[lang] = [str(r["answer"]) for r in rows]
        if acc:
            config = {**set_info["configs"]["classification"], "ks": [1], "protocol": "vlmevalkit-mcq"}
            rec = _recorder(model, "classification", set_info, config, len(set_info["keys"]), n_boot)
            for lang in [c for c in config["langs"] if c in acc]:
                rec.add_items(
                    lang, "acc@1", acc[lang], chance=chance_acc_at_k(1, int(set_info["num_candidates"]))
                )
            report.results += rec.rows
        if answers:
            report.results += _captioning_results(model, set_info, answers, refs, n_boot)
    return report
