"""Issue 13, points 3, 5 and 6: the NaN and divergence guards, checkpoint integrity, config changes on resume.

Each test failed before the fix (the numbers are in the closing note of issue 13).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from _mpm_train_toy import ToyCaptioner, collate
from safetensors.torch import save_file

from conftest import stage
from mpm_train import (
    CheckpointError,
    ConfigChangedError,
    DivergenceError,
    NonFiniteLossError,
    PlanConfig,
    StageResult,
    list_checkpoints,
    load_weights,
    read_metrics,
    run_plan,
    run_stage,
)
from mpm_train import checkpoint as ckpt


def _run(tmp_path: Path, model: torch.nn.Module | None = None, out: str = "run", **kw: Any) -> StageResult:
    return run_stage(
        model or ToyCaptioner(),
        stage(tmp_path, **kw),
        collate_fn=collate,
        output_dir=tmp_path / out,
        progress=False,
    )


def _max_abs(weights: dict[str, torch.Tensor]) -> float:
    return max(float(t.abs().max()) for t in weights.values())


# -- 3. NaN guard and divergence ------------------------------------------------------------------
def test_lr_1e30_names_no_checkpoint_whose_weights_gave_the_nan(tmp_path: Path, shards: list[Path]) -> None:
    # Before: "last good checkpoint" step_00000001 held weights of magnitude 1e30; resuming it gave NaN again.
    with pytest.raises(NonFiniteLossError, match="stopped at step 2: loss is nan") as err:
        _run(tmp_path, lr=1e30, steps=10, checkpoint_every=1, keep_last=2)
    assert err.value.last_checkpoint is None  # the only checkpoint's weights produced the NaN
    assert [p.name for p in err.value.rejected] == ["step_00000001"]
    assert list_checkpoints(tmp_path / "run") == []  # resume=True cannot pick the bad weights
    reason = (tmp_path / "run" / "checkpoints" / "rejected" / "step_00000001" / "REJECTED.txt").read_text()
    assert "loss is nan" in reason


def test_non_finite_weights_are_never_written(tmp_path: Path, shards: list[Path]) -> None:
    # The loss of step 3 is finite, but a weight is inf after it. Before: written as step_3 and
    # named "last good" by the NaN that followed.
    with pytest.raises(
        NonFiniteLossError, match=r"non-finite in step 3 \(head.bias\)\. Its checkpoint was not"
    ):
        _run(tmp_path, ToyCaptioner(inf_weight_at_call=3), steps=6, checkpoint_every=1, keep_last=5)
    # step 2's weights gave step 3's finite loss: they stay good; step 3's were never written
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [1, 2]
    assert not list((tmp_path / "run" / "checkpoints").glob("**/step_00000003"))


def test_nan_keeps_a_confirmed_checkpoint_even_with_keep_last_1(tmp_path: Path, shards: list[Path]) -> None:
    with pytest.raises(NonFiniteLossError) as err:
        _run(tmp_path, ToyCaptioner(nan_at_call=4), steps=10, checkpoint_every=1, keep_last=1)
    assert err.value.last_checkpoint is not None and err.value.last_checkpoint.name == "step_00000002"
    w = load_weights(err.value.last_checkpoint)
    assert all(torch.isfinite(t).all() for t in w.values())


def test_lr_1e6_divergence_stops_instead_of_succeeding(tmp_path: Path, shards: list[Path]) -> None:
    # Before: the loss climbed to ~1e13 and the run ended as a success.
    with pytest.raises(DivergenceError, match="the loss diverged") as err:
        _run(tmp_path, lr=1e6, steps=40, checkpoint_every=5, log_every=5)  # default guard: x100 for 20 steps
    assert err.value.step < 40
    assert read_metrics(tmp_path / "run" / "metrics.jsonl")[-1]["event"] == "diverged"
    # per stage: divergence_factor=None turns the guard off (the old behaviour, on request)
    res = _run(
        tmp_path, out="off", lr=1e6, steps=40, checkpoint_every=0, log_every=10, divergence_factor=None
    )
    assert res.final_step == 40 and max(res.losses) > 100 * min(res.losses)


def test_divergence_keeps_the_last_checkpoint_before_the_blowup(tmp_path: Path, shards: list[Path]) -> None:
    kw: dict[str, Any] = {"steps": 30, "checkpoint_every": 2, "keep_last": 2, "divergence_steps": 5}
    with pytest.raises(DivergenceError) as err:
        _run(tmp_path, ToyCaptioner(blowup_at_call=9), **kw)  # loss x1e6 from step 9 on
    assert err.value.step == 13  # 9, 10, 11, 12, 13: five high losses
    # the weights of step 8 gave the first high loss: 8 was pruned (keep_last=2), 10 and 12 are moved aside
    assert err.value.last_checkpoint is not None and err.value.last_checkpoint.name == "step_00000006"
    assert [p.name for p in err.value.rejected] == ["step_00000010", "step_00000012"]
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [6]  # kept through pruning (keep_last=2)
    # exact resume rebuilds the guard from the loss history: a run stopped short and resumed with
    # more steps (a safe change) stops at the same step
    short = _run(tmp_path, ToyCaptioner(blowup_at_call=9), out="split", **{**kw, "steps": 11})
    assert short.final_step == 11  # three high losses so far: not yet diverged
    with pytest.raises(DivergenceError) as again:
        _run(tmp_path, ToyCaptioner(blowup_at_call=1), out="split", **kw)  # steps 12, 13 are high too
    assert again.value.step == 13


# -- 5. checkpoint integrity -------------------------------------------------------------------------
def _two_checkpoints(tmp_path: Path) -> Path:
    _run(tmp_path, steps=4, checkpoint_every=2, keep_last=5)
    return tmp_path / "run" / "checkpoints"


def test_flipped_bytes_are_detected_and_resume_falls_back(
    tmp_path: Path, shards: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    root = _two_checkpoints(tmp_path)
    f = root / "step_00000004" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF  # inside the tensor data: safetensors' header check does not see it
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"step_00000004/model.safetensors: SHA-256"):
        load_weights(root / "step_00000004")  # before: loaded silently
    with pytest.raises(
        CheckpointError, match=r"model.safetensors: SHA-256"
    ):  # an explicit choice: no fallback
        run_stage(
            ToyCaptioner(),
            stage(tmp_path, steps=6, checkpoint_every=2, keep_last=5),
            collate_fn=collate,
            output_dir=tmp_path / "run",
            resume=root / "step_00000004",
            progress=False,
        )
    with caplog.at_level(logging.WARNING, logger="mpm_train"):
        res = _run(tmp_path, steps=6, checkpoint_every=2, keep_last=5)
    assert res.resumed_from == 2
    assert "skipping checkpoint step_00000004" in caplog.text and "SHA-256" in caplog.text
    start = [r for r in read_metrics(res.metrics_path) if r.get("event") == "start"][-1]
    assert start["skipped_checkpoints"][0]["checkpoint"] == "step_00000004"
    assert (root / "rejected" / "step_00000004").is_dir()


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_truncated_or_missing_file_falls_back_to_the_newest_intact(
    tmp_path: Path, shards: list[Path], damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    root = _two_checkpoints(tmp_path)
    f = root / "step_00000004" / "optimizer.safetensors"
    if damage == "truncate":
        f.write_bytes(f.read_bytes()[:100])
    else:
        f.unlink()
    with caplog.at_level(logging.WARNING, logger="mpm_train"):
        res = _run(tmp_path, steps=4, checkpoint_every=2, keep_last=5)  # before: blocked (an exception)
    assert res.resumed_from == 2 and res.final_step == 4
    assert "optimizer.safetensors" in caplog.text
    assert ("truncated" if damage == "truncate" else "missing") in caplog.text


def test_a_directory_with_only_trainer_state_is_not_a_checkpoint(tmp_path: Path, shards: list[Path]) -> None:
    root = _two_checkpoints(tmp_path)
    for name in ("model.safetensors", "optimizer.safetensors", "optimizer.json", "manifest.json"):
        (root / "step_00000004" / name).unlink()
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]
    # an older checkpoint without a manifest (written before manifests existed) still counts
    (root / "step_00000002" / "manifest.json").unlink()
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]


def test_prune_is_rename_then_delete(
    tmp_path: Path, shards: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _two_checkpoints(tmp_path)
    real_rmtree = shutil.rmtree

    def killed_midway(path: Any, *a: Any, **k: Any) -> None:  # a SIGKILL after most files are gone
        for f in Path(path).iterdir():
            if f.name != "trainer_state.json":
                f.unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.prune_checkpoints(tmp_path / "run", keep_last=1)
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [4]
    assert not (root / "step_00000002").exists()  # before: step_2 holding only trainer_state.json, "complete"
    leftovers = [p.name for p in root.iterdir() if p.name != "step_00000004"]
    assert leftovers and all(n.startswith(".tmp-delete-step_00000002") for n in leftovers)
    ckpt.remove_partial(tmp_path / "run")  # the next start clears the leftover
    assert sorted(p.name for p in root.iterdir()) == ["step_00000004"]


# -- 6. config changes on resume -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "keys"),
    [
        ({"lr": 5e-3}, ["lr"]),
        ({"batch_size": 8}, ["batch_size"]),
        ({"seed": 1, "warmup_steps": 2}, ["warmup_steps", "seed"]),
    ],
)
def test_unsafe_changes_are_refused_naming_the_keys(
    tmp_path: Path, shards: list[Path], change: dict[str, Any], keys: list[str]
) -> None:
    _run(tmp_path, steps=4, checkpoint_every=2)
    config_before = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(ConfigChangedError) as err:  # before: went ahead silently
        _run(tmp_path, steps=6, checkpoint_every=2, **change)
    assert err.value.keys == keys
    assert all(f"{k} " in str(err.value) for k in keys) and "allow_changes" in str(err.value)
    assert (tmp_path / "run" / "config.json").read_text() == config_before  # nothing was written


def test_safe_changes_warn_and_allowed_ones_go_ahead(
    tmp_path: Path, shards: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    _run(tmp_path, steps=4, checkpoint_every=2)
    with caplog.at_level(logging.WARNING, logger="mpm_train"):
        res = _run(tmp_path, steps=6, checkpoint_every=2, log_every=3)
    assert res.resumed_from == 4 and res.final_step == 6
    assert "steps 4 -> 6" in caplog.text and "log_every 2 -> 3" in caplog.text
    start = [r for r in read_metrics(res.metrics_path) if r.get("event") == "start"][-1]
    assert start["config_changes"] == ["steps 4 -> 6", "log_every 2 -> 3"]
    res = run_stage(
        ToyCaptioner(),
        stage(tmp_path, steps=8, checkpoint_every=2, lr=5e-3),
        collate_fn=collate,
        output_dir=tmp_path / "run",
        allow_changes=["lr"],
        progress=False,
    )
    assert res.resumed_from == 6 and res.final_step == 8


def test_fewer_steps_than_the_checkpoint_is_refused(tmp_path: Path, shards: list[Path]) -> None:
    _run(tmp_path, steps=6, checkpoint_every=3)
    # before: final_step=3 reported while the model held the step-6 weights
    with pytest.raises(ConfigChangedError, match=r"steps=3, but the checkpoint .* is already at step 6"):
        _run(tmp_path, steps=3, checkpoint_every=3)
    res = run_stage(  # an earlier checkpoint, chosen explicitly, is fine
        ToyCaptioner(),
        stage(tmp_path, steps=3, checkpoint_every=3),
        collate_fn=collate,
        output_dir=tmp_path / "run",
        resume=tmp_path / "run" / "checkpoints" / "step_00000003",
        progress=False,
    )
    assert res.final_step == 3 and res.resumed_from == 3


def test_refused_resume_false_keeps_config_json(tmp_path: Path, shards: list[Path]) -> None:
    _run(tmp_path, steps=2)
    before = json.loads((tmp_path / "run" / "config.json").read_text())
    with pytest.raises(FileExistsError):
        run_stage(
            ToyCaptioner(),
            stage(tmp_path, steps=2, lr=0.5),
            collate_fn=collate,
            output_dir=tmp_path / "run",
            resume=False,
            progress=False,
        )
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == before  # before: lr 0.5 written


@pytest.mark.parametrize("kind", ["no tensors", "zero bytes", "truncated", "non-finite"])
def test_init_from_a_bad_safetensors_file_fails_clearly(
    tmp_path: Path, shards: list[Path], kind: str
) -> None:
    f = tmp_path / "init.safetensors"
    good = {n: p.detach().clone() for n, p in ToyCaptioner().named_parameters()}
    if kind == "no tensors":
        save_file({}, str(f))
    elif kind == "zero bytes":
        f.write_bytes(b"")
    elif kind == "truncated":
        save_file(good, str(f))
        f.write_bytes(f.read_bytes()[: os.path.getsize(f) // 2])
    else:
        save_file({**good, "head.bias": torch.full_like(good["head.bias"], float("nan"))}, str(f))
    problem = {"no tensors": "holds no tensors", "non-finite": "holds non-finite"}.get(
        kind, "not a readable safetensors"
    )
    with pytest.raises(CheckpointError, match=rf"init.safetensors: {problem}"):  # before: trained on silently
        _run(tmp_path, steps=1, init_from=str(f))


def test_result_json_is_written_atomically_and_read_robustly(
    tmp_path: Path, shards: list[Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    replaced: list[str] = []
    real_replace = os.replace
    monkeypatch.setattr(
        ckpt.os, "replace", lambda a, b: (replaced.append(Path(b).name), real_replace(a, b))[1]
    )
    plan = PlanConfig(stages=(stage(tmp_path, name="align", steps=2), stage(tmp_path, name="full", steps=2)))
    model = ToyCaptioner()
    run_plan(model, plan, collate_fn=collate, output_dir=tmp_path / "plan", progress=False)
    assert "result.json" in replaced and "config.json" in replaced  # via a temporary file + os.replace
    # a damaged result.json (e.g. from an older non-atomic write) does not crash the plan: the stage
    # resumes from its checkpoint (nothing left to train) and writes a good one
    done = tmp_path / "plan" / "align" / "result.json"
    done.write_text(done.read_text()[:40])
    again = ToyCaptioner()
    with caplog.at_level(logging.WARNING, logger="mpm_train"):
        res = run_plan(again, plan, collate_fn=collate, output_dir=tmp_path / "plan", progress=False)
    assert "align/result.json cannot be used" in caplog.text
    assert res["align"].resumed_from == 2 and StageResult.load(done).final_step == 2
    for p, q in zip(model.parameters(), again.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
