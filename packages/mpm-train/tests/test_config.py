from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mpm_train import DataConfig, DataSource, LoraSpec, PlanConfig, StageConfig, lr_lambda


def _cfg(**kw: object) -> StageConfig:
    data = DataConfig(
        sources=(DataSource("en", ("a/*.tar",), weight=0.95), DataSource("zh", ("b/*.tar",), 0.05))
    )
    base: dict[str, object] = {"name": "align", "data": data, "steps": 100, "warmup_steps": 10}
    base.update(kw)
    return StageConfig(**base)  # type: ignore[arg-type]


def test_json_round_trip_is_equal() -> None:
    cfg = _cfg(lora=LoraSpec(r=4, target_modules=("q_proj",)), betas=(0.9, 0.95), max_grad_norm=None)
    again = StageConfig.from_json(cfg.to_json())
    assert again == cfg
    assert isinstance(again.data.sources[1], DataSource) and again.data.sources[1].weight == 0.05
    assert hash(again) == hash(cfg)  # frozen


def test_toml_plan_loads_stages_and_extra(tmp_path: Path) -> None:
    p = tmp_path / "plan.toml"
    p.write_text(
        'output_dir = "runs/x"\n[model]\nfactory = "m:f"\n'
        '[[stages]]\nname = "align"\nsteps = 5\nbatch_size = 2\n'
        "[stages.data]\nshuffle_buffer = 4\n"
        '[[stages.data.sources]]\nname = "en"\nshards = ["d/en-*.tar"]\nweight = 0.95\n'
        '[[stages.data.sources]]\nname = "zh"\nshards = "d/zh-*.tar"\nweight = 0.05\n'
        '[[stages]]\nname = "instruct"\nsteps = 7\nschedule = "linear"\n'
        '[[stages.data.sources]]\nname = "chat"\nshards = ["d/chat-*.tar"]\n'
    )
    plan = PlanConfig.load(p)
    assert [s.name for s in plan.stages] == ["align", "instruct"]
    assert plan.stages[0].data.sources[1].shards == ("d/zh-*.tar",)
    assert plan.extra["model"] == {"factory": "m:f"} and plan.extra["output_dir"] == "runs/x"
    assert PlanConfig.from_dict(json.loads(plan.to_json())).stages == plan.stages
    j = tmp_path / "stage.json"
    plan.stages[1].to_json(j)
    assert StageConfig.load(j) == plan.stages[1]


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"schedule": "exp"}, r"StageConfig.schedule: expected one of \['cosine', 'linear', 'constant'\]"),
        ({"precision": "fp8"}, "precision"),
        ({"steps": 0}, "StageConfig.steps: must be >= 1"),
        ({"lr": -1.0}, "lr: must be > 0"),
        ({"strategy": "zero"}, "strategy"),
    ],
)
def test_bad_values_name_the_problem(kw: dict[str, object], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        _cfg(**kw)


def test_unknown_key_is_rejected() -> None:
    d = _cfg().to_dict()
    d["learning_rate"] = 1.0
    with pytest.raises(ValueError, match=r"learning_rate: unknown key"):
        StageConfig.from_dict(d)
    with pytest.raises(ValueError, match=r"weight: must be > 0"):
        DataSource("en", ("x",), weight=0)


def test_lr_schedule_warmup_then_cosine_and_linear() -> None:
    f = lr_lambda(_cfg(warmup_steps=10, steps=110, min_lr_ratio=0.1))
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert f(110) == pytest.approx(0.1)
    g = lr_lambda(_cfg(warmup_steps=0, steps=100, schedule="linear"))
    assert g(0) == 1.0 and g(50) == pytest.approx(0.5) and g(100) == 0.0
    assert lr_lambda(_cfg(schedule="constant"))(99) == 1.0
    assert all(math.isfinite(f(s)) for s in range(200))
