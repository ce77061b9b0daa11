"""Two CPU processes (gloo) under torchrun reproduce one process with the same global batch.

One torchrun launch of the CLI runs a two-stage plan: stage ``full_ddp`` under DDP, then
``full_fsdp`` under FSDP2 (``fully_shard``) starting from the first stage's result. The same plan in
this process (one rank, ``num_streams=2``, twice the micro-batch) must give the same weights, and
the 2-process checkpoint of step 2 must resume in one process to the same end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from _mpm_train_toy import ToyCaptioner, collate

from mpm_train import PlanConfig, load_weights, read_metrics, run_plan, run_stage

HERE = Path(__file__).resolve().parent

PLAN = """
output_dir = "{out}"
[model]
factory = "_mpm_train_toy:build_model"
collate = "_mpm_train_toy:collate"

[[stages]]
name = "full_ddp"
steps = 4
batch_size = {bs}
lr = 0.01
strategy = "{s1}"
log_every = 2
checkpoint_every = 2
[stages.data]
shuffle_buffer = 16
num_streams = 2
[[stages.data.sources]]
name = "en"
shards = ["{glob}"]

[[stages]]
name = "full_fsdp"
steps = 4
batch_size = {bs}
lr = 0.01
strategy = "{s2}"
log_every = 2
[stages.data]
shuffle_buffer = 16
num_streams = 2
[[stages.data.sources]]
name = "en"
shards = ["{glob}"]
"""


def test_torchrun_two_processes_match_one_process(tmp_path: Path, shards: list[Path]) -> None:
    glob_ = str(tmp_path / "data" / "en-*.tar")
    dist_cfg = tmp_path / "dist.toml"
    dist_cfg.write_text(PLAN.format(out=tmp_path / "dist", bs=4, s1="ddp", s2="fsdp", glob=glob_))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "mpm_train",
            "run",
            str(dist_cfg),
            "--no-progress",
            "--device",
            "cpu",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    local_cfg = tmp_path / "local.toml"
    local_cfg.write_text(PLAN.format(out=tmp_path / "local", bs=8, s1="none", s2="none", glob=glob_))
    plan = PlanConfig.load(local_cfg)
    model = ToyCaptioner()
    ref = run_plan(model, plan, collate_fn=collate, output_dir=tmp_path / "local", progress=False)

    for stage in ("full_ddp", "full_fsdp"):
        start = [
            r for r in read_metrics(tmp_path / "dist" / stage / "metrics.jsonl") if r.get("event") == "start"
        ]
        assert start[0]["world_size"] == 2 and start[0]["global_batch"] == 8
        assert start[0]["strategy"] == stage.removeprefix("full_")
        got = load_weights(tmp_path / "dist" / stage / "checkpoints" / "step_00000004")
        want = load_weights(ref[stage].weights)
        assert set(got) == set(want)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-5, msg=f"{stage}: {name}")

    # elastic resume: the 2-process DDP checkpoint at step 2 continues in 1 process (data streams are
    # per stream, not per rank) and ends where the 1-process run ended
    (tmp_path / "elastic" / "checkpoints").mkdir(parents=True)
    shutil.copytree(
        tmp_path / "dist" / "full_ddp" / "checkpoints" / "step_00000002",
        tmp_path / "elastic" / "checkpoints" / "step_00000002",
    )
    res = run_stage(
        ToyCaptioner(seed=7),
        plan.stages[0],
        collate_fn=collate,
        output_dir=tmp_path / "elastic",
        progress=False,
    )
    assert res.resumed_from == 2
    want = load_weights(ref["full_ddp"].weights)
    for name, tensor in load_weights(res.weights).items():
        torch.testing.assert_close(tensor, want[name], rtol=0, atol=1e-5, msg=f"elastic: {name}")
