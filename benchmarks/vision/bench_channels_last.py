"""Channels-last vs NCHW for the packaged EfficientNet-Lite0 on the CPU (pooled features, fp32).

    python benchmarks/vision/bench_channels_last.py [--size 224] [--images 64] [--threads 2]

Runs both layouts side by side in one process on the same pixels, prints images/s and the ratio, the
largest feature difference, and writes ``benchmarks/results/vision_channels_last.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/results/vision_channels_last.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from mpm import zoo
    from mpm_vision import create_encoder

    enc = create_encoder(
        "efficientnet_lite0", checkpoint=str(zoo.zoo_path("efficientnet-lite0")), image_size=args.size
    ).eval()
    px = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    model = enc.model
    times: dict[str, float] = {}
    feats: dict[str, torch.Tensor] = {}
    for layout in ("channels_last", "nchw"):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        model.to(memory_format=fmt)
        x = px.contiguous(memory_format=fmt)
        best = float("inf")
        with torch.inference_mode():
            model.forward_head(model.forward_features(x[:4]), pre_logits=True)  # warm-up
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                feats[layout] = model.forward_head(model.forward_features(x), pre_logits=True)
                best = min(best, time.perf_counter() - t0)
        times[layout] = best
    diff = float((feats["channels_last"] - feats["nchw"]).abs().max())
    result = {
        "model": "efficientnet_lite0 (zoo)",
        "image_size": args.size,
        "images": args.images,
        "threads": args.threads,
        "images_per_s": {k: args.images / v for k, v in times.items()},
        "speedup_channels_last": times["nchw"] / times["channels_last"],
        "max_abs_feature_diff": diff,
    }
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
