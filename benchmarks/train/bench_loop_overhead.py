"""Loop overhead: ``run_stage`` vs a bare PyTorch loop on the same model, data and optimizer.

    python benchmarks/train/bench_loop_overhead.py [--steps 60] [--batch 32]

The bare loop is what one writes by hand, fed either by the same ``ShardReader`` run_stage uses
(isolating the loop's own overhead) or by plain ``webdataset.WebDataset(...).shuffle(...).decode("pil")``;
the same collate, forward, backward, gradient clipping, AdamW, LambdaLR, zero_grad. ``run_stage``
adds mixture streams with resumable positions, skip accounting, loss all-reduce and NaN check, JSONL
logging every 10 steps, a progress bar (disabled here) and the final checkpoint (also reported
without it: ``run_stage_minus_checkpoint``). Both loops are timed
from the first batch to the end (setup excluded), best of ``--repeats`` interleaved runs.
Writes ``benchmarks/results/train_loop_overhead.json``.
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from _common import machine, save, write_dataset
from torch import nn

from mpm_train import DataConfig, DataSource, ShardReader, StageConfig, lr_lambda, run_stage


class SmallCNN(nn.Module):
    """A small image classifier; stage 'full' trains everything."""

    def __init__(self, size: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (size // 4) ** 2, 128),
            nn.GELU(),
            nn.Linear(128, 4),
        )

    def stage_parameters(self, stage: str) -> Any:
        return self.parameters()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)


def collate(samples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.stack([np.asarray(s["image"], dtype=np.float32) for s in samples]) / 255.0)
    y = torch.tensor([int(s["json"]["label"]) for s in samples])
    return x.permute(0, 3, 1, 2).contiguous(), y


def bare_loop(shards: list[Path], cfg: StageConfig, size: int, reader: str) -> tuple[float, float]:
    model = SmallCNN(size)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    if reader == "webdataset":
        ds = wds.WebDataset(
            [str(p) for p in shards], shardshuffle=False, empty_check=False, nodesplitter=None
        )
        ds = ds.shuffle(cfg.data.shuffle_buffer).decode("pil").repeat()

        def renamed() -> Any:
            for s in ds:
                yield {"image": s["png"], "json": s["json"]}

        it = renamed()
    else:  # the very reader run_stage uses: isolates the loop's own overhead
        it = iter(ShardReader(cfg.data, seed=cfg.seed))
    model.train()
    t = time.perf_counter()
    loss = torch.zeros(())
    for _ in range(cfg.steps):
        batch = collate([next(it) for _ in range(cfg.batch_size)])
        loss = model.training_step(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm or math.inf)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t, float(loss.detach())


def ours(shards: list[Path], cfg: StageConfig, size: int, out: Path) -> tuple[float, float, float]:
    res = run_stage(SmallCNN(size), cfg, collate_fn=collate, output_dir=out, progress=False)
    return res.elapsed_s, res.final_loss, res.checkpoint_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        shards, _ = write_dataset(Path(tmp), 1024, args.size, per_shard=128)
        cfg = StageConfig(
            name="full",
            steps=args.steps,
            batch_size=args.batch,
            lr=1e-3,
            warmup_steps=5,
            log_every=10,
            checkpoint_every=0,
            data=DataConfig(sources=(DataSource("img", tuple(str(p) for p in shards)),), shuffle_buffer=256),
        )
        times: dict[str, list[float]] = {
            "bare_pytorch_wds": [],
            "bare_pytorch_same_reader": [],
            "run_stage": [],
            "run_stage_minus_checkpoint": [],
        }
        losses: dict[str, float] = {}
        for r in range(args.repeats):  # interleaved, best of
            t, losses["bare_pytorch_wds"] = bare_loop(shards, cfg, args.size, "webdataset")
            times["bare_pytorch_wds"].append(t)
            t, losses["bare_pytorch_same_reader"] = bare_loop(shards, cfg, args.size, "mpm_train")
            times["bare_pytorch_same_reader"].append(t)
            t, losses["run_stage"], ckpt_s = ours(shards, cfg, args.size, Path(tmp) / f"run{r}")
            times["run_stage"].append(t)
            times["run_stage_minus_checkpoint"].append(t - ckpt_s)
    best = {k: min(v) for k, v in times.items()}
    overhead = best["run_stage"] / best["bare_pytorch_same_reader"] - 1.0
    # the machine is shared: also the median of per-repeat ratios (each pair ran back to back)
    paired = sorted(a / b for a, b in zip(times["run_stage"], times["bare_pytorch_same_reader"]))
    paired_median = paired[len(paired) // 2]
    result = {
        "benchmark": "train_loop_overhead",
        "steps": args.steps,
        "batch_size": args.batch,
        "image_size": args.size,
        "repeats": args.repeats,
        "seconds": times,
        "best_seconds": best,
        "ms_per_step": {k: 1000 * v / args.steps for k, v in best.items()},
        "ratio_run_stage_vs_bare_same_reader": best["run_stage"] / best["bare_pytorch_same_reader"],
        "ratio_run_stage_vs_bare_webdataset": best["run_stage"] / best["bare_pytorch_wds"],
        "ratio_run_stage_minus_checkpoint_vs_bare_same_reader": best["run_stage_minus_checkpoint"]
        / best["bare_pytorch_same_reader"],
        "paired_median_ratio_run_stage_vs_bare_same_reader": paired_median,
        "overhead_fraction": overhead,
        "target_overhead_fraction": 0.05,
        "final_loss": losses,
        "machine": machine(),
    }
    path = save("train_loop_overhead.json", result)
    print(f"{'loop':<26} {'best s':>8} {'ms/step':>8}")
    for k, v in best.items():
        print(f"{k:<26} {v:>8.2f} {1000 * v / args.steps:>8.1f}")
    vs_wds = 100 * (result["ratio_run_stage_vs_bare_webdataset"] - 1)
    print(
        f"run_stage vs bare loop, same reader: {100 * overhead:+.1f}% (target <= 5%); "
        f"paired median {100 * (paired_median - 1):+.1f}%; "
        f"vs bare loop on plain webdataset: {vs_wds:+.1f}%  -> {path}"
    )


if __name__ == "__main__":
    main()
