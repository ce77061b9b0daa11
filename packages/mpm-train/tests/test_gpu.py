"""CUDA paths (skipped without a GPU): bf16/fp16 autocast, and FSDP2 on one GPU under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _mpm_train_toy import ToyCaptioner, collate

from conftest import stage
from mpm_train import load_weights, run_stage

HERE = Path(__file__).resolve().parent


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_on_cuda(tmp_path: Path, shards: list[Path], precision: str) -> None:
    model = ToyCaptioner()
    res = run_stage(
        model,
        stage(tmp_path, steps=6, precision=precision),
        collate_fn=collate,
        output_dir=tmp_path / precision,
        device="cuda",
        progress=False,
    )
    assert all(torch.isfinite(torch.tensor(res.losses)))
    assert next(model.parameters()).device.type == "cuda"
    assert load_weights(res.weights)["head.weight"].dtype == torch.float32  # master weights stay fp32


@pytest.mark.gpu
def test_fsdp_on_cuda_under_torchrun(tmp_path: Path, shards: list[Path]) -> None:
    cfg = tmp_path / "fsdp.toml"
    cfg.write_text(
        f'output_dir = "{tmp_path / "out"}"\n[model]\nfactory = "_mpm_train_toy:build_model"\n'
        'collate = "_mpm_train_toy:collate"\n[[stages]]\nname = "full"\nsteps = 4\nbatch_size = 4\n'
        'strategy = "fsdp"\nprecision = "bf16"\n[[stages.data.sources]]\nname = "en"\n'
        f'shards = ["{tmp_path / "data" / "en-*.tar"}"]\n'
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    n = min(2, torch.cuda.device_count())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={n}",
            "-m",
            "mpm_train",
            "run",
            str(cfg),
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "full" / "result.json").is_file()
