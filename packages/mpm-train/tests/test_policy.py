"""Stage policies (per-part trainable flags and learning rates) and plans that never skip a changed stage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from _mpm_train_toy import ToyCaptioner, collate, make_shards
from torch import nn

from conftest import stage
from mpm_train import (
    DataConfig,
    DataSource,
    LoraSpec,
    PlanConfig,
    StageConfig,
    StageConfigChangedError,
    check_plan,
    load_weights,
    restore_plan,
    run_plan,
    run_stage,
)
from mpm_train.policy import freeze, param_groups, select


def _params(m: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


class NamedParts(ToyCaptioner):
    """The toy with a ``parts()`` hook whose names are not the attribute names."""

    def parts(self) -> dict[str, nn.Module]:
        return {"vision": self.encoder, "neck": self.norm, "head": self.head}

    def stage_parameters(self, stage: str) -> Any:
        raise AssertionError("a stage with a trainable table must not ask stage_parameters")


def test_only_the_parts_the_policy_names_train(tmp_path: Path, shards: list[Path]) -> None:
    model = NamedParts()
    before = _params(model)
    cfg = stage(tmp_path, name="any-name", steps=3, trainable={"vision": True, "neck": False, "head": True})
    res = run_stage(model, cfg, collate_fn=collate, output_dir=tmp_path / "run", progress=False)
    assert _changed(before, model) == {"encoder.1.weight", "encoder.1.bias", "head.weight", "head.bias"}
    assert set(load_weights(res.weights)) == {
        "encoder.1.weight",
        "encoder.1.bias",
        "head.weight",
        "head.bias",
    }


def test_regex_rule_selects_inside_the_part_and_errors_name_the_part(
    tmp_path: Path, shards: list[Path]
) -> None:
    model = NamedParts()
    sel = select(model, stage(tmp_path, trainable={"head": "weight$", "vision": "1\\.bias"}))
    assert sel.by_part == {"head": ["head.weight"], "vision": ["encoder.1.bias"]}
    freeze(model, sel)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "encoder.1.bias"}
    with pytest.raises(ValueError, match=r"unknown part\(s\) \['lm'\].*parts \['head', 'neck', 'vision'\]"):
        select(model, stage(tmp_path, trainable={"lm": True}))
    with pytest.raises(ValueError, match=r"trainable.head = 'nothing' selects no parameter"):
        select(model, stage(tmp_path, trainable={"head": "nothing"}))
    # without a parts() hook, the top-level submodules are the parts
    plain = ToyCaptioner()
    assert select(plain, stage(tmp_path, trainable={"norm": True})).names == ["norm.weight", "norm.bias"]


def test_part_learning_rates_are_parameter_groups(tmp_path: Path, shards: list[Path]) -> None:
    model = NamedParts()
    cfg = stage(
        tmp_path,
        steps=4,
        lr=1e-2,
        trainable={"head": True, "neck": True},
        part_lr={"neck": 1e-5},
        weight_decay=0.1,
    )
    sel = select(model, cfg)
    freeze(model, sel)
    groups, names = param_groups([(n, p) for n, p in model.named_parameters() if p.requires_grad], sel, cfg)
    got = [(g["part"], g["lr"], g["weight_decay"], len(g["params"])) for g in groups]
    assert got == [("head", 1e-2, 0.1, 1), ("head", 1e-2, 0.0, 1), ("neck", 1e-5, 0.0, 2)]
    assert names == ["head.weight", "head.bias", "norm.weight", "norm.bias"]
    before = _params(model)
    res = run_stage(model, cfg, collate_fn=collate, output_dir=tmp_path / "run", progress=False)
    head_move = float((model.head.weight.detach() - before["head.weight"]).abs().max())
    neck_move = float((model.norm.weight.detach() - before["norm.weight"]).abs().max())
    assert head_move > 1e-3 and 0 < neck_move < 5e-5  # AdamW moves a weight by ~lr per step
    meta = json.loads((res.checkpoint / "optimizer.json").read_text())
    assert [g["lr"] for g in meta["param_groups"]] == pytest.approx([0.0, 0.0, 0.0], abs=1e-2)  # cosine end
    assert [g["part"] for g in meta["param_groups"]] == ["head", "head", "neck"]


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        (
            {"trainable": {"head": 3}},
            r"StageConfig\.trainable\.head: must be true, false, \"lora\" or a regular expression",
        ),
        ({"trainable": {"head": "(("}}, r"trainable.head: '\(\(' is not a valid regular expression"),
        (
            {"trainable": {"head": True, "neck": False}, "part_lr": {"neck": 1e-3}},
            r"part_lr.neck: the part does",
        ),
        ({"part_lr": {"head": 1e-3}}, r"part_lr.head: per-part learning rates need a trainable table"),
        ({"trainable": {"head": True}, "part_lr": {"head": 0}}, r"part_lr\.head: must be a number > 0"),
    ],
)
def test_bad_policies_name_the_key(tmp_path: Path, kw: dict[str, Any], msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        stage(tmp_path, **kw)


def test_policy_round_trips_and_lora_parts_get_a_spec(tmp_path: Path) -> None:
    cfg = stage(tmp_path, trainable={"lm": "lora", "bridge": True}, part_lr={"bridge": 1e-4})
    assert cfg.lora == LoraSpec()
    again = StageConfig.from_json(cfg.to_json())
    assert again == cfg and hash(again) == hash(cfg)
    assert again.trainable == {"lm": "lora", "bridge": True} and again.part_lr == {"bridge": 1e-4}


class Chat(nn.Module):
    """A Trainable around a tiny causal LM with a separate 'head' part."""

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.lm = lm
        self.scale = nn.Linear(1, 1)

    def parts(self) -> dict[str, nn.Module]:
        return {"lm": self.lm, "scale": self.scale}

    def training_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = self.lm(**batch, labels=labels).loss
        return loss * self.scale(torch.ones(1, 1)).squeeze()

    def stage_parameters(self, stage: str) -> Any:
        return list(self.lm.parameters())


def test_a_lora_part_trains_only_its_adapters(tmp_path: Path, tiny_lm: Any, tiny_tokenizer: Any) -> None:
    pytest.importorskip("peft")
    from mpm_train import write_shards

    write_shards(
        ({"key": f"t{i:03d}", "json": {"text": f"un gato rojo {i}"}} for i in range(16)),
        tmp_path / "text" / "t-%04d.tar",
        max_count=8,
    )
    data = DataConfig(
        sources=(DataSource("text", (str(tmp_path / "text" / "t-*.tar"),)),), require_image=False
    )
    model = Chat(tiny_lm("llama"))
    before = _params(model)
    cfg = StageConfig(
        name="chat",
        data=data,
        steps=3,
        batch_size=4,
        lr=1e-2,
        trainable={"lm": "lora", "scale": True},
        lora=LoraSpec(r=2, alpha=4, target_modules=("q_proj",)),
    )

    def coll(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return dict(tiny_tokenizer([s["json"]["text"] for s in samples], padding=True, return_tensors="pt"))

    res = run_stage(model, cfg, collate_fn=coll, output_dir=tmp_path / "run", progress=False)
    saved = set(load_weights(res.weights))
    assert saved == {n for n, _ in model.named_parameters() if "lora_" in n} | {"scale.weight", "scale.bias"}
    base = {n.replace(".base_layer", ""): p for n, p in model.named_parameters()}
    for name, p in before.items():
        if not name.startswith("scale."):
            assert torch.equal(p, base[name].detach()), f"frozen base weight {name} changed"
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in model.named_parameters() if "lora_B" in n)


class WithBatchNorm(ToyCaptioner):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(16)

    def training_step(self, batch: Any) -> Any:
        x, y = batch
        return nn.functional.cross_entropy(self.head(self.bn(self.encoder(x))), y)


def test_frozen_batch_norm_keeps_its_statistics(tmp_path: Path, shards: list[Path]) -> None:
    frozen = WithBatchNorm()
    mean = frozen.bn.running_mean.clone()
    run_stage(
        frozen,
        stage(tmp_path, steps=2, trainable={"head": True}),
        collate_fn=collate,
        output_dir=tmp_path / "a",
        progress=False,
    )
    assert torch.equal(frozen.bn.running_mean, mean)
    trained = WithBatchNorm()
    run_stage(
        trained,
        stage(tmp_path, steps=2, trainable={"head": True, "bn": True}),
        collate_fn=collate,
        output_dir=tmp_path / "b",
        progress=False,
    )
    assert not torch.equal(trained.bn.running_mean, mean)


def _plan(tmp_path: Path, **second: Any) -> PlanConfig:
    """Two align stages on different data (any number of stages, any names), then a full stage."""
    make_shards(tmp_path / "data", name="zh", n=16, per_shard=8, seed=3)
    zh = DataConfig(sources=(DataSource("zh", (str(tmp_path / "data" / "zh-*.tar"),)),), shuffle_buffer=8)
    return PlanConfig(
        stages=(
            stage(tmp_path, name="align-en", steps=3, trainable={"head": True}),
            stage(tmp_path, name="align-zh", steps=3, data=zh, trainable={"head": True, "norm": True}),
            stage(tmp_path, name="tune", steps=2, trainable={"encoder": True}, **second),
        )
    )


def test_a_changed_finished_stage_is_never_skipped(tmp_path: Path, shards: list[Path]) -> None:
    plan = _plan(tmp_path)
    out = tmp_path / "plan"
    model = ToyCaptioner()
    res = run_plan(model, plan, collate_fn=collate, output_dir=out, progress=False)
    assert [r.stage for r in res.stages] == ["align-en", "align-zh", "tune"]
    assert all(r.config_hash and len(r.config_hash) == 64 for r in res.stages)
    assert check_plan(plan, out) == {}
    # bookkeeping keys do not count: the finished plan is reused as it is
    relogged = PlanConfig(stages=tuple(s.replace(log_every=1, keep_last=5) for s in plan.stages))
    again = ToyCaptioner(seed=9)
    run_plan(again, relogged, collate_fn=collate, output_dir=out, progress=False)
    for p, q in zip(model.parameters(), again.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)

    # a changed first stage: refused before any work, naming the keys, the later stages flagged as upstream
    edited = PlanConfig(stages=(plan.stages[0].replace(steps=4, lr=2e-2), *plan.stages[1:]))
    with pytest.raises(StageConfigChangedError, match=r"'align-en' \(stage.steps, stage.lr\)") as err:
        run_plan(ToyCaptioner(), edited, collate_fn=collate, output_dir=out, progress=False)
    assert err.value.changes == {
        "align-en": ["stage.steps", "stage.lr"],
        "align-zh": ["upstream"],
        "tune": ["upstream"],
    }
    assert "upstream (a stage before it changed)" in str(err.value)
    # ... and restore_plan refuses too
    with pytest.raises(StageConfigChangedError):
        restore_plan(ToyCaptioner(), edited, out)
    # a changed context (the model's settings) counts as well
    assert check_plan(plan, out, context={"model": {"hidden": 32}})["align-en"] == ["context.model"]

    # if_changed="rerun": nothing is deleted, the changed stage and every later one run again
    rerun = ToyCaptioner()
    res2 = run_plan(rerun, edited, collate_fn=collate, output_dir=out, progress=False, if_changed="rerun")
    assert res2["align-en"].final_step == 4 and res2.final.resumed_from is None
    assert {p.name for p in out.iterdir()} == {
        "align-en", "align-zh", "tune", "align-en.replaced-1", "align-zh.replaced-1", "tune.replaced-1",
    }  # fmt: skip
    assert check_plan(edited, out) == {}


def test_restore_plan_loads_every_stage_and_names_an_unfinished_one(
    tmp_path: Path, shards: list[Path]
) -> None:
    plan = _plan(tmp_path)
    model = ToyCaptioner()
    run_plan(model, plan, collate_fn=collate, output_dir=tmp_path / "plan", progress=False)
    loaded = ToyCaptioner(seed=5)
    restore_plan(loaded, plan, tmp_path / "plan")
    for (n, p), q in zip(model.named_parameters(), loaded.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    longer = PlanConfig(
        stages=(*plan.stages, stage(tmp_path, name="later", steps=1, trainable={"head": True}))
    )
    with pytest.raises(FileNotFoundError, match="stage 'later' has not finished"):
        restore_plan(ToyCaptioner(), longer, tmp_path / "plan")


def test_a_resumed_plan_ends_bit_identical(tmp_path: Path, shards: list[Path]) -> None:
    """Kill between stages and inside one (a stage without result.json resumes from its checkpoint)."""
    plan = PlanConfig(
        stages=tuple(s.replace(checkpoint_every=1, keep_last=3) for s in _plan(tmp_path).stages)
    )
    ref = ToyCaptioner(dropout=0.2)
    run_plan(ref, plan, collate_fn=collate, output_dir=tmp_path / "ref", progress=False)
    model = ToyCaptioner(dropout=0.2)
    run_plan(model, plan, collate_fn=collate, output_dir=tmp_path / "cut", progress=False)
    cut = tmp_path / "cut"
    (cut / "align-zh" / "result.json").unlink()  # as if killed after step 2 of the second stage
    for step in (3,):
        import shutil

        shutil.rmtree(cut / "align-zh" / "checkpoints" / f"step_{step:08d}")
    shutil.rmtree(cut / "tune")
    resumed = ToyCaptioner(dropout=0.2)
    res = run_plan(resumed, plan, collate_fn=collate, output_dir=cut, progress=False)
    assert res["align-zh"].resumed_from == 2
    for (n, p), q in zip(ref.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n
