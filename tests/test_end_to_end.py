"""End-to-end smoke across all five packages: the demo recipe with tiny random LLMs on real EmojiCap."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mpm")


@pytest.mark.parametrize("eval_split", ["test", "train"])
def test_demo_recipe_runs_end_to_end(
    tmp_path: Path, tiny_lm: Any, tiny_tokenizer: Any, eval_split: str
) -> None:
    from mpm.demo import DemoConfig, run_demo

    loaded: list[str] = []

    def load_lm(name: str) -> tuple[Any, Any]:
        loaded.append(name)
        tok = copy.deepcopy(tiny_tokenizer)  # the model adds <image>: keep the session fixture intact
        return tiny_lm("llama" if name == "multi" else "gpt2", vocab_size=len(tok) + 8), tok

    cfg = DemoConfig(
        out_dir=str(tmp_path / "demo"),
        pivot="multi",
        ablation="english",
        langs=("en", "zh", "de"),
        emoji_limit=40,
        image_size=16,
        chat_steps=2,
        paint_steps=2,
        batch_size=4,
        eval_items=4,
        num_candidates=3,
        paint_items=3,
        paint_inference_steps=2,
        eval_split=eval_split,
        progress=False,
    )
    assert DemoConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    res = run_demo(cfg, load_lm=load_lm)

    assert loaded == ["multi", "english"]
    models = {r.model for r in res.results}
    assert models == {"mpm-multi", "mpm-english", "random"}
    tasks = {(r.model, r.task) for r in res.results}
    assert ("mpm-multi", "classification") in tasks and ("mpm-multi", "t2i") in tasks
    assert ("mpm-multi", "captioning") in tasks
    langs = {r.language for r in res.results if r.task == "classification"}
    assert langs == {"en", "zh", "de"}
    for r in res.results:
        if r.metric.startswith("acc@"):
            assert 0.0 <= r.value <= 1.0
    assert set(res.alignment) == {"multi", "english"}
    assert set(res.alignment["multi"]) == {"zh", "de"}
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["config"]["pivot"] == "multi"
    assert (tmp_path / "demo" / "paint-multi.png").stat().st_size > 0
    assert any(p.suffix == ".md" for p in res.files.values())
    assert {r.dataset for r in res.results} == {f"emojicap/{eval_split}"}
