"""The chat path of the recipe (mpm.generative) on tiny models: a frozen encoder trains on cached features,
the warm start runs once, a branch stage shares stage 1b without retraining it, and the model ends holding
the main chain's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mpm.config import ConfigError, load_config

FROZEN = [
    "model.encoder.frozen=true",
    "stages.align.trainable.encoder=false",
    "stages.paint.enabled=false",
    "run.progress=false",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mpm_bench import build_emojicap

    root = tmp_path_factory.mktemp("emojicap")
    build_emojicap(root, size=16, limit=40, progress=False)
    return root


def test_a_branch_must_start_from_an_earlier_main_chain_stage() -> None:
    with pytest.raises(ConfigError, match=r"stages.instruct_en.start_from: 'nowhere' is not an earlier"):
        load_config("smoke", ["stages.instruct_en.start_from=nowhere"])
    with pytest.raises(ConfigError, match=r"stages\.instruct_en\.start_from"):
        load_config("smoke", ["stages.instruct_en.start_from=instruct_en"])


def test_branch_plans_share_the_main_chain_prefix() -> None:
    from mpm.builders import build_branch_plans, build_plan

    cfg = load_config("smoke")
    assert [s.name for s in build_plan(cfg, "vlm").stages] == ["align", "instruct"]
    branches = build_branch_plans(cfg, "vlm")
    assert list(branches) == ["instruct_en"]
    plan = branches["instruct_en"]
    assert [s.name for s in plan.stages] == ["align", "instruct_en"]
    assert plan.stages[0] == build_plan(cfg, "vlm").stages[0]  # the same stage: same fingerprint


def test_chat_training_with_cached_features_warm_start_and_a_branch(tmp_path: Path, data_root: Path) -> None:
    from mpm.recipe import train
    from mpm_train import StageResult, load_weights

    out = tmp_path / "run"
    cfg = load_config("smoke", [f"run.out_dir={out}", f"data.root={data_root}", *FROZEN])
    run = train(cfg, data_root=data_root)
    stages = out / "stages"
    assert (stages / "warm-start" / "bridge.safetensors").is_file()
    assert any((out / "cache" / "features").rglob("*.safetensors"))  # the encoder ran once per image
    for name in ("align", "instruct", "instruct_en"):
        assert StageResult.load(stages / name / "result.json").final_step > 0
    params = dict(run.vlm.named_parameters())
    main = load_weights(StageResult.load(stages / "instruct" / "result.json").weights)
    branch = load_weights(StageResult.load(stages / "instruct_en" / "result.json").weights)
    for n, t in main.items():  # the model holds the main chain's final weights again
        assert torch.equal(params[n].detach(), t), n
    assert set(run.branches) == {"instruct_en"}
    for n, t in branch.items():
        assert torch.equal(run.branches["instruct_en"][n], t), n
    assert any(not torch.equal(main[n], branch[n]) for n in main if n.startswith("bridge."))
    # the branch started from stage 1b: align ran once, its result untouched by the branch
    align_mtime = (stages / "align" / "result.json").stat().st_mtime_ns
    again = train(cfg, data_root=data_root)
    assert (stages / "align" / "result.json").stat().st_mtime_ns == align_mtime
    for n, t in branch.items():
        assert torch.equal(again.branches["instruct_en"][n], t), n


def test_branch_weights_are_restored_from_a_finished_run(tmp_path: Path, data_root: Path) -> None:
    from mpm.generative import branch_states
    from mpm.recipe import load_run, train

    out = tmp_path / "run"
    cfg = load_config("smoke", [f"run.out_dir={out}", f"data.root={data_root}", *FROZEN])
    cfg.resolved().save(out / "config.toml")
    trained = train(cfg, data_root=data_root)
    loaded = load_run(out)
    states = branch_states(loaded.vlm, loaded.config, out / "stages")
    for n, t in trained.branches["instruct_en"].items():
        assert torch.equal(states["instruct_en"][n], t), n
    mine = dict(loaded.vlm.named_parameters())
    for n, p in trained.vlm.named_parameters():
        assert torch.equal(mine[n].detach(), p.detach()), n
