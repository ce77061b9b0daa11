"""Shared pieces of the mpm-train benchmarks: synthetic-but-realistic images written as shards."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

RESULTS = Path(__file__).resolve().parents[1] / "results"


def drawn_image(i: int, size: int) -> tuple[Image.Image, int]:
    """A flat-colour drawing (compresses like icons/emoji do), labelled by its shape."""
    rng = np.random.default_rng(i)
    label = int(rng.integers(0, 4))
    im = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(150, 256, 3)))
    d = ImageDraw.Draw(im)
    box = [int(v) for v in sorted(rng.integers(2, size - 2, 2))] * 2
    box = [box[0], box[1], max(box[2], box[0] + 4), max(box[3], box[1] + 4)]
    colour = tuple(int(c) for c in rng.integers(0, 150, 3))
    [d.rectangle, d.ellipse, d.line, d.polygon][label](
        box if label < 3 else [(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])],
        fill=colour,
    )
    return im, label


def write_dataset(root: Path, n: int, size: int, per_shard: int) -> tuple[list[Path], Path]:
    """The same ``n`` images as webdataset shards (``root/shards``) and as loose files (``root/files``)."""
    from mpm_train import ShardWriter

    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    with ShardWriter(root / "shards" / "img-%05d.tar", max_count=per_shard) as w:
        for i in range(n):
            im, label = drawn_image(i, size)
            meta = {"label": label, "caption": f"shape {label} number {i}"}
            w.write(key=f"{i:06d}", image=im, json=meta)
            im.save(files / f"{i:06d}.png")
            (files / f"{i:06d}.json").write_text(json.dumps(meta))
    return w.paths, files


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
