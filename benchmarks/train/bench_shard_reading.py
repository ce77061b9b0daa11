"""Shard reading speed: mpm-train's reader vs a plain PIL loop over the same images (and plain webdataset).

    python benchmarks/train/bench_shard_reading.py [--n 2000] [--size 64]

All three decode every image to an RGB ``PIL.Image`` and parse its JSON caption. Writes
``benchmarks/results/train_shard_reading.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch
import webdataset as wds
from _common import machine, save, write_dataset
from PIL import Image

from mpm_train import DataConfig, DataSource, DataStream


def read_ours(shards: list[Path], n: int, buffer: int) -> float:
    cfg = DataConfig(sources=(DataSource("img", tuple(str(p) for p in shards)),), shuffle_buffer=buffer)
    stream = DataStream(cfg, stream=0, num_streams=1, seed=0)
    t = time.perf_counter()
    for _ in range(n):
        s = stream.next_sample()
        assert s["image"].mode == "RGB"
    return time.perf_counter() - t


def read_pil(files: Path, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        with Image.open(files / f"{i:06d}.png") as im:
            rgb = im.convert("RGB")
        json.loads((files / f"{i:06d}.json").read_text())
        assert rgb.mode == "RGB"
    return time.perf_counter() - t


def read_wds(shards: list[Path], n: int, buffer: int) -> float:
    ds = wds.WebDataset([str(p) for p in shards], shardshuffle=False, empty_check=False)
    ds = ds.shuffle(buffer).decode("pil") if buffer else ds.decode("pil")
    t = time.perf_counter()
    count = 0
    for s in ds:
        assert s["png"].mode == "RGB" and isinstance(s["json"], dict)
        count += 1
    assert count == n, count
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--buffer", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        shards, files = write_dataset(Path(tmp), args.n, args.size, per_shard=250)
        times: dict[str, list[float]] = {"mpm_train": [], "pil_loop": [], "webdataset": []}
        for _ in range(args.repeats):  # interleaved, best of
            times["pil_loop"].append(read_pil(files, args.n))
            times["mpm_train"].append(read_ours(shards, args.n, args.buffer))
            times["webdataset"].append(read_wds(shards, args.n, args.buffer))
    sps = {k: args.n / min(v) for k, v in times.items()}
    result = {
        "benchmark": "train_shard_reading",
        "n_images": args.n,
        "image_size": args.size,
        "shuffle_buffer": args.buffer,
        "repeats": args.repeats,
        "samples_per_s": sps,
        "seconds": times,
        "ratio_mpm_train_vs_pil_loop": sps["mpm_train"] / sps["pil_loop"],
        "ratio_mpm_train_vs_webdataset": sps["mpm_train"] / sps["webdataset"],
        "machine": machine(),
    }
    path = save("train_shard_reading.json", result)
    print(f"{'reader':<12} {'samples/s':>10}")
    for k, v in sps.items():
        print(f"{k:<12} {v:>10.0f}")
    print(
        f"mpm_train / pil_loop = {result['ratio_mpm_train_vs_pil_loop']:.3f}; "
        f"mpm_train / webdataset = {result['ratio_mpm_train_vs_webdataset']:.3f}  -> {path}"
    )


if __name__ == "__main__":
    main()
