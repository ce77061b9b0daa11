"""Tiny Trainable models, collate functions and shard builders for mpm-train's tests.

Importable by subprocesses (torchrun, the SIGKILL test): they put this directory on PYTHONPATH.
"""

from __future__ import annotations

import io
import json
import tarfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

IMG = 8
CLASSES = 4


@dataclass
class ToyOutput:
    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)


class ToyCaptioner(nn.Module):
    """Image -> class: an 'encoder' (frozen in stage 'align') and a 'head'."""

    def __init__(
        self,
        *,
        hidden: int = 16,
        dropout: float = 0.0,
        sleep: float = 0.0,
        seed: int = 0,
        nan_at_call: int | None = None,
        blowup_at_call: int | None = None,
        inf_weight_at_call: int | None = None,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Sequential(
            nn.Flatten(), nn.Linear(3 * IMG * IMG, hidden), nn.GELU(), nn.Dropout(dropout)
        )
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, CLASSES)
        self.sleep = sleep
        self.nan_at_call = nan_at_call
        self.blowup_at_call = blowup_at_call  # from this call on the loss is x1e6 (a divergence)
        self.inf_weight_at_call = inf_weight_at_call  # a weight becomes inf after a finite loss
        self.calls = 0

    def stage_parameters(self, stage: str) -> Iterable[nn.Parameter]:
        if stage == "align":
            return list(self.head.parameters()) + list(self.norm.parameters())
        if stage.startswith("full"):
            return self.parameters()
        raise ValueError(f"unknown stage {stage!r}")

    def fsdp_units(self) -> list[nn.Module]:
        return [self.encoder]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> ToyOutput:
        x, y = batch
        if self.sleep:
            time.sleep(self.sleep)
        self.calls += 1
        logits = self.head(self.norm(self.encoder(x)))
        loss = F.cross_entropy(logits, y)
        if self.nan_at_call is not None and self.calls >= self.nan_at_call:
            loss = loss * float("nan")
        if self.blowup_at_call is not None and self.calls >= self.blowup_at_call:
            loss = loss * 1e6
        if self.inf_weight_at_call is not None and self.calls == self.inf_weight_at_call:
            self.head.bias.data.fill_(float("inf"))  # as an overflowing update would leave it
        acc = (logits.argmax(-1) == y).float().mean().item()
        return ToyOutput(loss=loss, logs={"acc": acc})


def collate(samples: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack(
        [torch.from_numpy(np.asarray(s["image"], dtype=np.float32) / 255.0).permute(2, 0, 1) for s in samples]
    )
    y = torch.tensor([int(s["json"]["label"]) for s in samples])
    return x, y


def build_model(**kw: Any) -> ToyCaptioner:
    """The CLI factory."""
    return ToyCaptioner(**kw)


def make_image(label: int, rng: np.random.Generator) -> Image.Image:
    arr = rng.integers(0, 60, size=(IMG, IMG, 3), dtype=np.uint8)
    arr[..., label % 3] += np.uint8(120 + 40 * (label // 3))  # the label is visible in the colours
    return Image.fromarray(arr)


def make_shards(
    root: Path,
    *,
    name: str = "en",
    n: int = 64,
    per_shard: int = 16,
    seed: int = 0,
    corrupt: dict[str, list[int]] | None = None,
) -> list[Path]:
    """``n`` labelled images in shards ``root/<name>-%06d.tar``; ``corrupt`` breaks chosen indices.

    ``corrupt`` keys: ``image`` (bytes that are no PNG), ``json`` (invalid JSON), ``no_json``.
    """
    from mpm_train import ShardWriter

    corrupt = corrupt or {}
    rng = np.random.default_rng(seed)
    with ShardWriter(root / f"{name}-%06d.tar", max_count=per_shard) as w:
        for i in range(n):
            label = int(rng.integers(0, CLASSES))
            img: Any = make_image(label, rng)
            key = f"{name}{i:05d}"
            if i in corrupt.get("image", []):
                img = b"\x89PNG not really"
            w.write(key=key, image=img, json={"label": label, "caption": f"{name} sample {i}"})
    paths = w.paths
    if corrupt.get("json") or corrupt.get("no_json"):
        _rewrite(
            paths, bad_json=set(corrupt.get("json", [])), no_json=set(corrupt.get("no_json", [])), name=name
        )
    return paths


def _rewrite(paths: list[Path], *, bad_json: set[int], no_json: set[int], name: str) -> None:
    for p in paths:
        with tarfile.open(p) as tf:
            members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]  # type: ignore[union-attr]
        with tarfile.open(p, "w") as tf:
            for m, data in members:
                idx = int(m.name.split(".")[0].removeprefix(name))
                if m.name.endswith(".json"):
                    if idx in no_json:
                        continue
                    if idx in bad_json:
                        data = b"{not json"
                m.size = len(data)
                tf.addfile(m, io.BytesIO(data))


def keys_of(samples: Iterable[dict[str, Any]]) -> list[str]:
    return [s["__key__"] for s in samples]


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))
    return path
