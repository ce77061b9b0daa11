"""EmojiCap in lmms-eval and VLMEvalKit: exports, the harnesses' metric functions, imports, round trips.

A fake model (deterministic scores and answers, better than chance) is evaluated three ways: by
mpm-bench directly, through the lmms-eval export (by lmms-eval's own evaluator, in-process, offline)
and through the VLMEvalKit export (prediction files written in VLMEvalKit's layout). The imported
numbers must equal the direct ones, intervals included.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mpm_bench import Example, Leaderboard, RandomBaseline, load_emojicap, run_captioning, run_classification
from mpm_bench.baselines import image_digest
from mpm_bench.harness import (
    EXPORT_MANIFEST,
    export_lmms_eval,
    export_vlmevalkit,
    import_lmms_eval,
    import_vlmevalkit,
    parse_choice,
)
from mpm_bench.interfaces import Result
from mpm_bench.tasks import candidate_sets

LANGS = ["en", "zh"]


@pytest.fixture(scope="module")
def data(emojicap_small: tuple[Path, dict[str, Any]]) -> list[Example]:
    root, _ = emojicap_small
    return load_emojicap(root, "train", langs=LANGS)


def _unit(*parts: str) -> float:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "big") / 2**64


class FakeModel:
    """Knows two thirds of the images: their true name scores high, everything else is noise."""

    name = "fake"

    def __init__(self, data: Sequence[Example]) -> None:
        self.names = {image_digest(ex.image): dict(ex.names) for ex in data}
        self.pool = {lang: [ex.names[lang] for ex in data] for lang in LANGS}

    def _knows(self, digest: str) -> bool:
        return _unit("knows", digest) < 2 / 3

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(images), len(texts)))
        for i, im in enumerate(images):
            d = image_digest(im)
            truth = set(self.names.get(d, {}).values())
            for j, t in enumerate(texts):
                out[i, j] = _unit(d, t) + (1.0 if t in truth and self._knows(d) else 0.0)
        return out

    def caption(self, images: Sequence[Image.Image], prompt: str, lang: str) -> list[str]:
        out = []
        for im in images:
            d = image_digest(im)
            if self._knows(d):
                out.append(self.names[d][lang])
            else:
                pool = self.pool[lang]
                out.append(pool[int(_unit("wrong", d) * len(pool))])
        return out


def _direct(model: FakeModel, data: list[Example], *, all_candidates: bool | int) -> list[Result]:
    return run_classification(
        model, data, LANGS, num_candidates=5, seed=0, all_candidates=all_candidates, model_name="fake"
    ) + run_captioning(model, data, LANGS, model_name="fake")


def _same_numbers(imported: Sequence[Result], direct: Sequence[Result], *, same_config: bool = True) -> int:
    """Every imported row equals the direct row of the same task/language/metric."""
    by_key = {(r.task, r.language, r.metric): r for r in direct}
    assert imported
    for r in imported:
        d = by_key[(r.task, r.language, r.metric)]
        assert r.value == pytest.approx(d.value, abs=1e-12), (r.task, r.language, r.metric)
        assert r.interval is not None and d.interval is not None
        assert (r.interval.low, r.interval.high) == pytest.approx(
            (d.interval.low, d.interval.high), abs=1e-12
        )
        assert r.n == d.n and r.dataset == d.dataset and r.chance == d.chance
        assert r.items is not None and d.items is not None and r.items.clusters == d.items.clusters
        if same_config:
            assert r.config_hash == d.config_hash, (r.task, r.metric)
    return len(imported)


# ------------------------------------------------------------------------------ lmms-eval
def test_lmms_eval_export_layout_and_metric_functions(data: list[Example], tmp_path: Path) -> None:
    """The export's files, and its utils.py metric functions on fake lmms-eval responses giving
    mpm-bench's numbers (no lmms-eval needed for this part)."""
    out = tmp_path / "lmms"
    manifest = export_lmms_eval({"train": data}, out, langs=LANGS, num_candidates=5, all_candidates=6)
    names = {p.name for p in out.iterdir()}
    assert {"utils.py", "emojicap.yaml", "emojicap_all.yaml", EXPORT_MANIFEST, "data", "images"} <= names
    for lang in LANGS:
        for kind in ("cls", "cap", "clsall"):
            assert f"emojicap_train_{lang}_{kind}.yaml" in names
    assert "output_type: multiple_choice" in (out / "emojicap_train_zh_cls.yaml").read_text()
    assert "output_type: generate_until" in (out / "emojicap_train_zh_cap.yaml").read_text()
    assert not list(tmp_path.glob("*.partial"))
    docs = [json.loads(x) for x in (out / "data/train/zh.jsonl").read_text(encoding="utf-8").splitlines()]
    sets = candidate_sets(data, "zh", 5, 0)
    assert [(d["choices"], d["target"]) for d in docs] == sets
    assert Image.open(out / docs[3]["image"]).tobytes() == data[3].image.tobytes()
    assert manifest["sets"]["train"]["keys"] == [ex.key for ex in data]

    spec = importlib.util.spec_from_file_location("emojicap_utils", out / "utils.py")
    assert spec is not None and spec.loader is not None
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    model = FakeModel(data)
    direct = {(r.language, r.metric): r.value for r in _direct(model, data, all_candidates=6)}
    for lang in LANGS:
        docs = [
            json.loads(x) for x in (out / f"data/train/{lang}.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        per_doc = []
        for doc in docs:
            visual = utils.doc_to_visual(doc)[0]
            assert utils.doc_to_text(doc) == docs[0]["question"]
            losses = -model.score([visual], doc["choices"])[0]
            per_doc.append(utils.process_classification(doc, [(float(x), False) for x in losses]))
        for metric in ("acc@1", "mrr"):
            assert np.mean([p[metric] for p in per_doc]) == pytest.approx(direct[(lang, metric)])
        captions = [
            utils.process_captioning(d, model.caption(utils.doc_to_visual(d), "", lang)) for d in docs
        ]
        assert utils.aggregate_bleu([c["bleu"] for c in captions]) == pytest.approx(direct[(lang, "bleu")])
        assert utils.aggregate_chrf([c["chrf"] for c in captions]) == pytest.approx(direct[(lang, "chrf")])
        assert np.mean([c["fidelity"] for c in captions]) == pytest.approx(direct[(lang, "fidelity")])
        gdocs = [
            json.loads(x)
            for x in (out / f"data/train/{lang}_all.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        assert len(gdocs) == 6
        hits = []
        for doc in gdocs:
            gallery = utils.doc_to_gallery(doc)
            losses = -model.score(utils.doc_to_visual(doc), gallery)[0]
            hits.append(utils.process_gallery(doc, [(float(x), False) for x in losses])["acc_all@1"])
        assert np.mean(hits) == pytest.approx(direct[(lang, "acc_all@1")])


def _fake_lmm(model: FakeModel) -> Any:
    from lmms_eval.api.model import lmms

    class FakeLMM(lmms):
        """lmms-eval's model interface: (loss, is_greedy) per choice, greedy text per prompt."""

        def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
            out = []
            for req in requests:
                _ctx, cont, doc_to_visual, doc_id, task, split = req.args
                visual = doc_to_visual(self.task_dict[task][split][doc_id])[0]
                out.append((-float(model.score([visual], [cont.strip()])[0, 0]), False))
            return out

        def generate_until(self, requests: list[Any]) -> list[str]:
            out = []
            for req in requests:
                _ctx, _kwargs, doc_to_visual, doc_id, task, split = req.args
                doc = self.task_dict[task][split][doc_id]
                out += model.caption(doc_to_visual(doc), doc["question"], doc["lang"])
            return out

        def generate_until_multi_round(self, requests: list[Any]) -> list[str]:
            raise NotImplementedError

    return FakeLMM()


def test_lmms_eval_loads_the_export_and_the_round_trip_matches(
    data: list[Example], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lmms-eval's own TaskManager indexes and builds the exported tasks; its evaluator runs a fake
    model on them and writes samples files; `import` turns them into the direct numbers."""
    pytest.importorskip("lmms_eval", reason="lmms-eval is in mpm-bench's test-lmms-eval extra")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lmms_eval import evaluator
    from lmms_eval.loggers import EvaluationTracker
    from lmms_eval.tasks import TaskManager
    from lmms_eval.utils import get_datetime_str

    try:
        import filelock._api  # noqa: F401  (lmms-eval 0.7.3 patches it; filelock >= 4 moved it)
    except ImportError:  # skip that patch (a deadlock guard for nested dataset loads), keep the rest
        monkeypatch.setattr(evaluator._enable_reentrant_filelocks, "_patched", True, raising=False)

    out = tmp_path / "lmms"
    export_lmms_eval({"train": data}, out, langs=LANGS, num_candidates=5, all_candidates=6)
    manager = TaskManager(include_path=str(out), include_defaults=False)
    assert set(manager.all_groups) == {"emojicap", "emojicap_all"}
    assert {t for t in manager.all_subtasks} == {
        f"emojicap_train_{c}_{k}" for c in LANGS for k in ("cls", "cap", "clsall")
    }
    loaded = manager.load_task_or_group(["emojicap_train_zh_cls"])
    task = loaded["emojicap_train_zh_cls"]
    doc = task.test_docs()[0]
    assert task.OUTPUT_TYPE == "multiple_choice" and len(task.test_docs()) == len(data)
    assert task.doc_to_choice(doc) == candidate_sets(data, "zh", 5, 0)[0][0]
    assert task.doc_to_visual(doc)[0].tobytes() == data[0].image.tobytes()

    model = FakeModel(data)
    tracker = EvaluationTracker(output_path=str(tmp_path / "logs"))
    results = evaluator.simple_evaluate(
        model=_fake_lmm(model), model_args="pretrained=fake", tasks=["emojicap", "emojicap_all"],
        task_manager=manager, log_samples=True, evaluation_tracker=tracker, bootstrap_iters=0,
        process_docs_parallel=1,
    )  # fmt: skip
    assert results is not None
    # as lmms-eval's CLI does: the aggregated file first (it names the run), then one samples file per task
    tracker.save_results_aggregated(
        results=results, samples=results["samples"], datetime_str=get_datetime_str()
    )
    for name in results["configs"]:
        tracker.save_results_samples(task_name=name, samples=results["samples"][name])
    samples = sorted((tmp_path / "logs").rglob("*samples_emojicap_*.jsonl"))
    assert len(samples) == 6

    direct = _direct(model, data, all_candidates=6)
    by = {(r.language, r.metric): r.value for r in direct}
    # lmms-eval's own aggregated numbers (through utils.py) equal mpm-bench's
    for lang in LANGS:
        cls = results["results"][f"emojicap_train_{lang}_cls"]
        assert cls["acc@1,none"] == pytest.approx(by[(lang, "acc@1")])
        assert cls["mrr,none"] == pytest.approx(by[(lang, "mrr")])
        cap = results["results"][f"emojicap_train_{lang}_cap"]
        assert cap["bleu,none"] == pytest.approx(by[(lang, "bleu")])
        assert cap["chrf,none"] == pytest.approx(by[(lang, "chrf")])
        assert results["results"][f"emojicap_train_{lang}_clsall"]["acc_all@1,none"] == pytest.approx(
            by[(lang, "acc_all@1")]
        )

    report = import_lmms_eval([tmp_path / "logs"], out, model_name="fake")
    assert len(report.files) == 6
    assert _same_numbers(report.results, direct) == len(direct)
    # on one board with the random baseline: same rows, same marks
    base = run_classification(
        RandomBaseline(), data, LANGS, num_candidates=5, all_candidates=6, model_name="random"
    )
    a, b = Leaderboard([*direct, *base]).to_markdown(), Leaderboard([*report.results, *base]).to_markdown()
    assert a == b


# ------------------------------------------------------------------------------ VLMEvalKit
def _read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _write_predictions(rows: list[dict[str, Any]], path: Path) -> None:
    """A prediction file as VLMEvalKit writes it: the dataset's columns minus ``image``, plus
    ``prediction`` (xlsx by default; tsv quoted; json as a list of records)."""
    rows = [{k: v for k, v in r.items() if k != "image"} for r in rows]
    header = list(rows[0])
    if path.suffix == ".xlsx":
        import openpyxl

        wb = openpyxl.Workbook()
        ws = wb.active
        assert ws is not None
        ws.append(header)
        for r in rows:
            ws.append([int(r[h]) if h == "index" else r[h] for h in header])
        wb.save(path)
    elif path.suffix == ".tsv":
        with path.open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL)
            w.writerow(header)
            w.writerows([[r[h] for h in header] for r in rows])
    else:
        path.write_text(
            json.dumps([{**r, "index": int(r["index"])} for r in rows], ensure_ascii=False), encoding="utf-8"
        )


def test_vlmevalkit_export_predictions_import_round_trip(data: list[Example], tmp_path: Path) -> None:
    out = tmp_path / "vlm"
    export_vlmevalkit({"train": data}, out, langs=LANGS, num_candidates=5)
    model = FakeModel(data)
    direct = _direct(model, data, all_candidates=False)
    pred_dir = tmp_path / "outputs" / "fake"
    pred_dir.mkdir(parents=True)
    for lang, suffix in zip(LANGS, (".xlsx", ".tsv"), strict=True):
        mcq = _read_tsv(out / f"EmojiCap_train_{lang}_MCQ.tsv")
        assert list(mcq[0])[:8] == ["index", "image", "question", "A", "B", "C", "D", "E"]
        assert "answer" in mcq[0] and len(mcq) == len(data)
        image = Image.open(io.BytesIO(base64.b64decode(mcq[2]["image"]))).convert("RGB")
        assert image.tobytes() == data[2].image.tobytes()
        sets = candidate_sets(data, lang, 5, 0)
        assert [[r[c] for c in "ABCDE"] for r in mcq] == [c for c, _ in sets]
        assert ["ABCDE".index(r["answer"]) for r in mcq] == [t for _, t in sets]
        for i, r in enumerate(mcq):  # the fake model answers with the letter of its best-scored option
            scores = model.score([data[i].image], [r[c] for c in "ABCDE"])[0]
            r["prediction"] = ["{}", "{}.", "The answer is {}", "({})"][i % 4].format(
                "ABCDE"[int(np.argmax(scores))]
            )
        _write_predictions(mcq, pred_dir / f"fake_EmojiCap_train_{lang}_MCQ{suffix}")
        vqa = _read_tsv(out / f"EmojiCap_train_{lang}_VQA.tsv")
        assert "A" not in vqa[0] and [r["answer"] for r in vqa] == [ex.names[lang] for ex in data]
        for i, r in enumerate(vqa):
            r["prediction"] = model.caption([data[i].image], r["question"], lang)[0]
        _write_predictions(
            vqa, pred_dir / f"fake_EmojiCap_train_{lang}_VQA{'.json' if lang == 'zh' else suffix}"
        )

    report = import_vlmevalkit([tmp_path / "outputs"], out)
    assert {r.model for r in report.results} == {"fake"} and report.unparsed == dict.fromkeys(
        report.unparsed, 0
    )
    cls = [r for r in report.results if r.task == "classification"]
    assert {r.metric for r in cls} == {"acc@1"} and all(r.chance == pytest.approx(0.2) for r in cls)
    _same_numbers(cls, direct, same_config=False)  # letter answers: a protocol of its own
    assert all(r.config["protocol"] == "vlmevalkit-mcq" for r in cls)
    _same_numbers([r for r in report.results if r.task == "captioning"], direct)


def test_parse_choice() -> None:
    options = {"A": "red apple", "B": "grinning face", "C": "cat"}
    assert parse_choice("B", options) == "B" and parse_choice(" (C) cat", options) == "C"
    assert parse_choice("A. red apple", options) == "A" and parse_choice("The answer is C.", options) == "C"
    assert parse_choice("Grinning face!", options) == "B"
    assert parse_choice("D", options) is None and parse_choice("a dog", options) is None
    assert parse_choice(None, options) is None and parse_choice("nan", options) is None


def test_import_errors_name_the_problem(data: list[Example], tmp_path: Path) -> None:
    out = tmp_path / "lmms"
    export_lmms_eval({"train": data}, out, langs=["en"], num_candidates=4, all_candidates=False)
    logs = tmp_path / "logs"
    logs.mkdir()
    with pytest.raises(FileNotFoundError, match="no lmms-eval samples"):
        import_lmms_eval([logs], out, model_name="m")
    (logs / "x_samples_emojicap_train_en_cls.jsonl").write_text(
        json.dumps({"doc_id": 0, "filtered_resps": [["1.0", "False"]] * 4}) + "\n"
    )
    with pytest.raises(ValueError, match=r"predictions for 1 of \d+ items"):
        import_lmms_eval([logs], out, model_name="m")
    with pytest.raises(FileNotFoundError, match=r"no mpm_bench_export\.json"):
        import_lmms_eval([logs], tmp_path, model_name="m")
    with pytest.raises(ValueError, match="not a vlmevalkit export"):
        import_vlmevalkit([logs], out)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        export_vlmevalkit({"train": data}, tmp_path / "busy", langs=["en"])
    assert os.listdir(tmp_path / "busy") == ["keep.txt"]


def test_vlmevalkit_prediction_file_without_predictions_is_named(data: list[Example], tmp_path: Path) -> None:
    out = tmp_path / "vlm"
    export_vlmevalkit({"train": data}, out, langs=["en"], num_candidates=4)
    rows = _read_tsv(out / "EmojiCap_train_en_MCQ.tsv")
    bad = tmp_path / "m_EmojiCap_train_en_MCQ.tsv"
    _write_predictions(rows, bad)  # the dataset's columns, no `prediction`
    with pytest.raises(ValueError, match=r"no \['prediction'\] column"):
        import_vlmevalkit([bad], out)
