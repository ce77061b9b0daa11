"""Stage 1a through the recipe (tiny LM, real EmojiCap): heads, board rows in every language on every
evaluation set, the headline files, and resume from the run and the state cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mpm.config import load_config
from mpm.recipe import run_recipe

ONLY_1A = [
    "stages.align.enabled=false",
    "stages.instruct.enabled=false",
    "stages.instruct_en.enabled=false",
    "stages.paint.enabled=false",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("c1a")
    mp = pytest.MonkeyPatch()
    mp.setenv("MPM_CACHE", str(root / "cache"))
    cfg = load_config("smoke", [f"run.out_dir={root / 'run'}", "run.progress=false", *ONLY_1A])
    result = run_recipe(cfg)
    yield {"cfg": cfg, "result": result, "out": root / "run", "mp": mp}
    mp.undo()


def test_heads_rows_and_headline(run: dict[str, Any]) -> None:
    out: Path = run["out"]
    cfg = run["cfg"]
    assert (out / "stages/contrastive/en/head.safetensors").is_file()
    assert (out / "stages/contrastive/zh/head.safetensors").is_file()  # smoke's native_langs = ["zh"]
    rows = [r for r in run["result"].results if r.model.endswith("/contrastive") and r.metric == "acc@1"]
    datasets = {r.dataset for r in rows}
    assert {d.split("/")[1] for d in datasets} == {"seen-aug", "seen-style", "unseen"}
    assert len(datasets) == len(cfg.contrastive.eval_sets)
    for d in datasets:
        per = {r.language: r for r in rows if r.dataset == d}
        assert set(per) == set(cfg.run.langs)
        assert len({r.config_hash for r in per.values()}) == 1  # one board row: transfer is paired
        assert all(r.interval is not None for r in per.values())
    native = {r.language for r in run["result"].results if r.model.endswith("/contrastive-native")}
    assert native == {"zh"}
    for name in ("headline.md", "transfer-scatter.png", "targets.json"):
        assert (out / "board" / name).is_file()
    targets = json.loads((out / "board/targets.json").read_text(encoding="utf-8"))["targets"]
    assert any(t["target"].startswith("contrastive head, English") for t in targets)
    assert "| en |" in (out / "board/headline.md").read_text(encoding="utf-8")
    space = json.loads((out / "alignment.json").read_text(encoding="utf-8"))["space"]
    assert space["template"] == cfg.align.templates[0] and isinstance(space["layer"], int)


def test_rerun_loads_heads_and_cached_states(run: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    again = run_recipe(run["cfg"])
    said = capsys.readouterr().out
    assert "contrastive stage (en names): finished earlier" in said
    assert "texts encoded" not in said  # every pivot state came from the cache
    a = {(r.model, r.dataset, r.language, r.metric): r.value for r in run["result"].results}
    b = {(r.model, r.dataset, r.language, r.metric): r.value for r in again.results}
    assert a == b


def test_changed_head_settings_retrain(run: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    cfg = load_config(
        "smoke", [f"run.out_dir={run['out']}", "run.progress=false", *ONLY_1A, "contrastive.steps=6"]
    )
    capsys.readouterr()
    run_recipe(cfg, evaluation=False)
    said = capsys.readouterr().out
    assert "contrastive stage (en names): loss" in said and "6 steps" in said


def test_headline_is_redrawn_from_the_stored_board(run: dict[str, Any]) -> None:
    from mpm.headline import rewrite_headline

    out: Path = run["out"]
    before = json.loads((out / "board/targets.json").read_text(encoding="utf-8"))
    (out / "board/targets.json").unlink()
    files = rewrite_headline(out)
    assert set(files) == {"headline", "scatter", "targets"}
    after = json.loads((out / "board/targets.json").read_text(encoding="utf-8"))
    assert [t["target"] for t in after["targets"]] == [t["target"] for t in before["targets"]]
