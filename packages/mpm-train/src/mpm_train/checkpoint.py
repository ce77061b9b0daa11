"""Checkpoints that resume exactly, with no pickle anywhere.

A checkpoint is a directory ``<output_dir>/checkpoints/step_00000042/`` holding

- ``model.safetensors``: the trainable parameters only (full tensors, by parameter name);
- ``optimizer.safetensors`` + ``optimizer.json``: the optimizer's tensors by parameter name, and its
  scalar state and param groups;
- ``trainer_state.json``: step, scheduler, grad scaler, loss history, data position of every stream,
  skip counts, and each rank's RNG states (python, numpy, torch, cuda).

It is written into a temporary sibling directory and renamed into place (``os.replace`` of a
directory is atomic on POSIX), so a reader never sees a half-written checkpoint; leftovers of a
crashed write start with ``.tmp-`` and are removed on the next start.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors.torch import load_file, save_file

_STEP_DIR = re.compile(r"^step_(\d+)$")
MODEL_FILE = "model.safetensors"
OPTIM_TENSORS = "optimizer.safetensors"
OPTIM_META = "optimizer.json"
TRAINER_STATE = "trainer_state.json"


def _is_dtensor(t: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A plain CPU tensor; FSDP2 ``DTensor`` shards are gathered (collective: call on every rank)."""
    if _is_dtensor(t):
        t = cast(Any, t).full_tensor()
    return t.detach().to("cpu").contiguous()


def _like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``full`` laid out like ``ref`` (same dtype and device; sharded the same way when ``ref`` is a DTensor)."""
    if _is_dtensor(ref):
        from torch.distributed.tensor import distribute_tensor

        d: Any = ref
        return distribute_tensor(full.to(device=ref.device, dtype=ref.dtype), d.device_mesh, d.placements)
    return full.to(device=ref.device, dtype=ref.dtype)


# -- RNG -------------------------------------------------------------------------------------------
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def capture_rng() -> dict[str, Any]:
    """This process's RNG states as JSON-ready data."""
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)
    py_state = random.getstate()
    out: dict[str, Any] = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": _b64(torch.get_rng_state()),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def restore_rng(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), npst[2], npst[3], npst[4]))
    torch.set_rng_state(_unb64(state["torch"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# -- optimizer ---------------------------------------------------------------------------------------
def optimizer_state(
    optimizer: torch.optim.Optimizer, names: Sequence[str]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors keyed ``<param name>/<key>`` and JSON metadata.

    ``names[i]`` is the name of the optimizer's ``i``-th parameter (param-group order). Collective
    under FSDP2 (sharded state is gathered).
    """
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx in sorted(sd["state"]):
        name = names[idx]
        for key, value in sd["state"][idx].items():
            if isinstance(value, torch.Tensor):
                tensors[f"{name}/{key}"] = full_tensor(value)
            else:
                scalars.setdefault(name, {})[key] = value
    groups = []
    for g in sd["param_groups"]:
        g2 = {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items() if k != "params"}
        g2["params"] = [names[i] for i in g["params"]]
        groups.append(g2)
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer,
    names: Sequence[str],
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
) -> None:
    """Inverse of :func:`optimizer_state`, matching parameters by name."""
    index = {n: i for i, n in enumerate(names)}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    saved = [n for g in meta["param_groups"] for n in g["params"]]
    if sorted(saved) != sorted(names):
        missing, extra = sorted(set(names) - set(saved)), sorted(set(saved) - set(names))
        raise ValueError(
            f"optimizer checkpoint does not match the trainable parameters: missing {missing[:5]}, "
            f"unexpected {extra[:5]}"
        )
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        name, _, skey = key.rpartition("/")
        i = index[name]
        p = params[i]
        state.setdefault(i, {})[skey] = (
            _like(value, p) if value.shape == p.shape and value.dim() > 0 else value
        )
    for name, sc in meta["scalars"].items():
        state.setdefault(index[name], {}).update(sc)
    groups = []
    for g in meta["param_groups"]:
        g2 = dict(g)
        g2["params"] = [index[n] for n in g["params"]]
        if "betas" in g2:
            g2["betas"] = tuple(g2["betas"])
        groups.append(g2)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# -- directories ---------------------------------------------------------------------------------------
def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``<output_dir>/checkpoints``, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / TRAINER_STATE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def remove_partial(output_dir: str | Path) -> None:
    """Delete leftovers of checkpoint writes that were interrupted (``.tmp-*`` directories)."""
    root = Path(output_dir) / "checkpoints"
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def write_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    model_state: Mapping[str, torch.Tensor],
    optim_tensors: Mapping[str, torch.Tensor],
    optim_meta: Mapping[str, Any],
    trainer_state: Mapping[str, Any],
) -> Path:
    """Write one checkpoint atomically (temporary directory + rename) and return its path."""
    final = checkpoint_dir(output_dir, step)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    save_file(dict(model_state), str(tmp / MODEL_FILE), metadata={"format": "pt", "step": str(step)})
    save_file(dict(optim_tensors), str(tmp / OPTIM_TENSORS), metadata={"format": "pt"})
    (tmp / OPTIM_META).write_text(json.dumps(optim_meta), encoding="utf-8")
    (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state), encoding="utf-8")
    for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # re-writing the same step (e.g. a resumed run reaching it again)
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints; returns the deleted paths."""
    found = list_checkpoints(output_dir)
    doomed = [p for _, p in found[:-keep_last]] if keep_last > 0 else []
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed


def read_checkpoint(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(model_state, optim_tensors, optim_meta, trainer_state)`` of a checkpoint directory."""
    p = Path(path)
    if not (p / TRAINER_STATE).is_file():
        raise FileNotFoundError(f"{p} is not a complete mpm-train checkpoint (no {TRAINER_STATE})")
    return (
        load_file(str(p / MODEL_FILE)),
        load_file(str(p / OPTIM_TENSORS)),
        json.loads((p / OPTIM_META).read_text(encoding="utf-8")),
        json.loads((p / TRAINER_STATE).read_text(encoding="utf-8")),
    )


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The trainable weights of a checkpoint directory or a ``.safetensors`` file."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise FileNotFoundError(f"no weights at {p}")
    return load_file(str(p))
