from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from _mpm_train_toy import ToyCaptioner, collate, make_shards

from conftest import stage
from mpm_train import (
    NonFiniteLossError,
    PlanConfig,
    StageResult,
    list_checkpoints,
    load_weights,
    read_metrics,
    run_plan,
    run_stage,
)


def _params(m: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in m.named_parameters()}


def test_stage_trains_only_its_parameters_and_reports(tmp_path: Path, shards: list[Path]) -> None:
    make_shards(tmp_path / "data", name="bad", n=8, per_shard=8, corrupt={"image": [0, 1]})
    shutil.move(tmp_path / "data" / "bad-000000.tar", tmp_path / "data" / "en-000009.tar")
    model = ToyCaptioner()
    before = _params(model)
    cfg = stage(tmp_path, name="align", steps=12, batch_size=8, checkpoint_every=4, keep_last=2, log_every=4)
    res = run_stage(model, cfg, collate_fn=collate, output_dir=tmp_path / "run", progress=False)
    after = _params(model)
    assert all(torch.equal(before[n], after[n]) for n in before if n.startswith("encoder."))
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert res.final_step == 12 and len(res.losses) == 12 and res.resumed_from is None
    assert sum(res.losses[-4:]) < sum(res.losses[:4])
    # checkpoints: keep the last 2, trainable weights only, in safetensors
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [8, 12]
    w = load_weights(res.checkpoint)
    assert set(w) == {"head.weight", "head.bias", "norm.weight", "norm.bias"}
    assert torch.equal(w["head.weight"], after["head.weight"])
    # skipped samples are counted in the result and in the logs
    assert res.data.skipped["image_decode"] >= 1 and res.data.samples == 12 * 8
    recs = [r for r in read_metrics(res.metrics_path) if "loss" in r]
    assert [r["step"] for r in recs] == [4, 8, 12]
    assert all({"lr", "samples_per_s", "grad_norm", "skipped", "logs/acc"} <= set(r) for r in recs)
    assert recs[-1]["skipped"]["image_decode"] == res.data.skipped["image_decode"]
    assert StageResult.load(tmp_path / "run" / "result.json") == res


def test_resume_from_checkpoint_is_exact(tmp_path: Path, shards: list[Path]) -> None:
    cfg = stage(tmp_path, steps=8, checkpoint_every=4, keep_last=5)
    ref = ToyCaptioner(dropout=0.2)
    ref_res = run_stage(ref, cfg, collate_fn=collate, output_dir=tmp_path / "a", progress=False)
    model = ToyCaptioner(dropout=0.2)
    run_stage(model, cfg, collate_fn=collate, output_dir=tmp_path / "b", progress=False)
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_00000008")  # as if the run died after step 4
    fresh = ToyCaptioner(dropout=0.2, seed=123)  # different init: everything must come from the checkpoint...
    fresh.encoder.load_state_dict(ToyCaptioner(dropout=0.2).encoder.state_dict())  # ...that it trains
    res = run_stage(fresh, cfg, collate_fn=collate, output_dir=tmp_path / "b", progress=False)
    assert res.resumed_from == 4 and res.losses == pytest.approx(ref_res.losses, abs=0)
    for (n, p), (_, q) in zip(ref.named_parameters(), fresh.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=n)


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path: Path, shards: list[Path]) -> None:
    a, b = ToyCaptioner(), ToyCaptioner()
    run_stage(
        a,
        stage(tmp_path, batch_size=8, grad_accum=1),
        collate_fn=collate,
        output_dir=tmp_path / "a",
        progress=False,
    )
    run_stage(
        b,
        stage(tmp_path, batch_size=4, grad_accum=2),
        collate_fn=collate,
        output_dir=tmp_path / "b",
        progress=False,
    )
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, shards: list[Path]) -> None:
    model = ToyCaptioner(nan_at_call=5)
    cfg = stage(tmp_path, steps=10, checkpoint_every=2, keep_last=2)
    with pytest.raises(NonFiniteLossError, match=r"stopped at step 5: loss is nan.*step_00000002") as err:
        run_stage(model, cfg, collate_fn=collate, output_dir=tmp_path / "run", progress=False)
    assert err.value.step == 5 and err.value.last_checkpoint is not None
    # the step-4 weights produced the NaN loss of step 5: not "good"; moved aside, not deleted
    assert err.value.last_checkpoint.name == "step_00000002"
    assert [p.name for p in err.value.rejected] == ["step_00000004"]
    assert (tmp_path / "run" / "checkpoints" / "rejected" / "step_00000004" / "REJECTED.txt").is_file()
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN step was not applied
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]["event"] == "non_finite"


def test_refuses_to_overwrite_checkpoints_without_resume(tmp_path: Path, shards: list[Path]) -> None:
    cfg = stage(tmp_path, steps=2)
    run_stage(ToyCaptioner(), cfg, collate_fn=collate, output_dir=tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        run_stage(
            ToyCaptioner(), cfg, collate_fn=collate, output_dir=tmp_path / "run", resume=False, progress=False
        )


def test_plan_second_stage_starts_from_first(tmp_path: Path, shards: list[Path]) -> None:
    plan = PlanConfig(stages=(stage(tmp_path, name="align", steps=4), stage(tmp_path, name="full", steps=4)))
    model = ToyCaptioner()
    res = run_plan(model, plan, collate_fn=collate, output_dir=tmp_path / "plan", progress=False)
    assert [r.stage for r in res.stages] == ["align", "full"]
    align_w = load_weights(res["align"].weights)
    assert set(align_w) == {"head.weight", "head.bias", "norm.weight", "norm.bias"}
    assert set(load_weights(res["full"].weights)) == {n for n, _ in model.named_parameters()}
    # re-running the plan loads finished stages instead of training them again
    again = ToyCaptioner()
    res2 = run_plan(again, plan, collate_fn=collate, output_dir=tmp_path / "plan", progress=False)
    assert res2.final.final_step == 4
    for p, q in zip(model.parameters(), again.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # and a plan whose stage 1 is finished but stage 2 is not continues from stage 1's weights
    shutil.rmtree(tmp_path / "plan" / "full")
    third = ToyCaptioner()
    run_plan(third, plan, collate_fn=collate, output_dir=tmp_path / "plan", progress=False)
    for p, q in zip(model.parameters(), third.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_tensorboard_is_optional(tmp_path: Path, shards: list[Path]) -> None:
    pytest.importorskip("tensorboard")
    run_stage(
        ToyCaptioner(),
        stage(tmp_path, steps=2, tensorboard=True),
        collate_fn=collate,
        output_dir=tmp_path / "run",
        progress=False,
    )
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_not_a_trainable_is_rejected(tmp_path: Path, shards: list[Path]) -> None:
    with pytest.raises(TypeError, match="no stage_parameters"):
        run_stage(torch.nn.Linear(2, 2), stage(tmp_path), collate_fn=collate, output_dir=tmp_path / "r")


def test_eval_fn_runs_on_schedule_and_init_from_loads_weights(tmp_path: Path, shards: list[Path]) -> None:
    seen: list[bool] = []

    def eval_fn(m: torch.nn.Module) -> dict[str, float]:
        seen.append(m.training)
        return {"head_norm": float(m.head.weight.norm())}  # type: ignore[union-attr]

    first = ToyCaptioner()
    res = run_stage(
        first,
        stage(tmp_path, name="align", steps=5, eval_every=2),
        collate_fn=collate,
        output_dir=tmp_path / "a",
        eval_fn=eval_fn,
        progress=False,
    )
    assert seen == [False, False, False]  # steps 2, 4 and the end, always in eval mode
    assert res.eval_metrics["head_norm"] == pytest.approx(float(first.head.weight.detach().norm()))
    evals = [r for r in read_metrics(res.metrics_path) if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4, 5]

    second = ToyCaptioner()
    run_stage(
        second,
        stage(tmp_path, name="full", steps=1, lr=1e-9, init_from=str(res.checkpoint)),
        collate_fn=collate,
        output_dir=tmp_path / "b",
        progress=False,
    )
    torch.testing.assert_close(second.head.weight, first.head.weight, rtol=0, atol=1e-6)
