"""SIGKILL a training run mid-way, resume it, and end with the weights of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from _mpm_train_toy import ToyCaptioner, collate

from mpm_train import PlanConfig, list_checkpoints, run_stage

HERE = Path(__file__).resolve().parent

CONFIG = """
output_dir = "{out}"
[model]
factory = "_mpm_train_toy:build_model"
collate = "_mpm_train_toy:collate"
kwargs = {{ dropout = 0.2, sleep = {sleep} }}

[[stages]]
name = "full"
steps = 12
batch_size = 4
lr = 0.01
warmup_steps = 2
log_every = 1
checkpoint_every = 3
keep_last = 2
[stages.data]
shuffle_buffer = 16
[[stages.data.sources]]
name = "en"
shards = ["{glob}"]
weight = 0.8
[[stages.data.sources]]
name = "zh"
shards = ["{glob_zh}"]
weight = 0.2
"""


def test_sigkill_then_resume_equals_uninterrupted(tmp_path: Path, shards: list[Path]) -> None:
    from _mpm_train_toy import make_shards

    make_shards(tmp_path / "data", name="zh", n=16, per_shard=8, seed=5, corrupt={"image": [2]})
    globs = {"glob": str(tmp_path / "data" / "en-*.tar"), "glob_zh": str(tmp_path / "data" / "zh-*.tar")}
    cfg_path = tmp_path / "run.toml"
    run_dir = tmp_path / "killed" / "full"  # the CLI runs a plan: one directory per stage
    cfg_path.write_text(CONFIG.format(out=tmp_path / "killed", sleep=0.2, **globs))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "mpm_train", "run", str(cfg_path), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not any(step >= 6 for step, _ in list_checkpoints(run_dir)):
            assert child.poll() is None, child.communicate()[1].decode()[-3000:]
            assert time.monotonic() < deadline, "the child never reached step 6"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    steps_written = [s for s, _ in list_checkpoints(run_dir)]
    assert steps_written and max(steps_written) < 12, steps_written  # really killed mid-way

    stage = PlanConfig.load(cfg_path).stages[0]
    resumed = ToyCaptioner(dropout=0.2)
    res = run_stage(resumed, stage, collate_fn=collate, output_dir=run_dir, progress=False)
    assert res.resumed_from == max(steps_written)

    ref = ToyCaptioner(dropout=0.2)
    ref_res = run_stage(ref, stage, collate_fn=collate, output_dir=tmp_path / "ref", progress=False)
    assert res.losses == ref_res.losses
    assert res.data == ref_res.data  # sample and skip counts survive the kill too
    for (name, p), (_, q) in zip(ref.named_parameters(), resumed.named_parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6, msg=name)
