"""Stage 1a through the recipe (tiny LM, real EmojiCap): heads, board rows in every language on every
evaluation set, the headline files, and resume from the run and the state cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

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


def test_style_views_join_the_training_features(run: dict[str, Any]) -> None:
    """views + style_views augmented rows per concept, beside the clean render; style views differ."""
    from mpm.contrastive import _feature_cache, _train_features
    from mpm_bench import load_emojicap

    cfg = run["cfg"]
    c = cfg.contrastive
    assert c.views == 1 and c.style_views == 1  # the smoke preset
    examples = load_emojicap(Path(cfg.data_root), "train", langs=["en"], styles=c.style)
    feats, rows = _train_features(cfg, _feature_cache(cfg), examples)
    n = len(examples)
    assert feats.shape[0] == rows.shape[0] == n * (1 + c.views + c.style_views)
    assert rows[-n:].tolist() == list(range(n))
    assert not torch.allclose(feats[n : 2 * n], feats[2 * n :])  # a style view is another image


def test_style_view_thins_dark_outlines_and_is_deterministic() -> None:
    import numpy as np
    from PIL import Image, ImageDraw

    from mpm.contrastive import StyleView
    from mpm_bench import Augmentation, AugmentConfig

    img = Image.new("RGB", (48, 48), (250, 200, 40))
    ImageDraw.Draw(img).rectangle((10, 10, 37, 37), outline=(0, 0, 0), width=1)  # a 1-px black outline
    still = Augmentation(AugmentConfig(scale=(1.0, 1.0), shift=0.0, rotation=0.0, background=0.0, blur=0.0))
    thin = StyleView(still, hue=False)(img, 7)
    assert np.asarray(img).sum(-1).min() == 0 and np.asarray(thin).sum(-1).min() > 400  # outline gone
    view = StyleView(still)
    a, b = view(img, 7), view(img, 7)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(view(img, 8)), np.asarray(a))  # another hue
    assert view.cache_id != StyleView(still, hue=False).cache_id != still.cache_id
    with pytest.raises(ValueError, match="odd size"):
        StyleView(still, max_filter=2)
