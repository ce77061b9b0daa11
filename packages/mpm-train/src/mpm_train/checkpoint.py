"""Checkpoints that resume exactly, with no pickle anywhere.

A checkpoint is a directory ``<output_dir>/checkpoints/step_00000042/`` holding

- ``model.safetensors``: the trainable parameters only (full tensors, by parameter name);
- ``optimizer.safetensors`` + ``optimizer.json``: the optimizer's tensors by parameter name, and its
  scalar state and param groups;
- ``trainer_state.json``: step, scheduler, grad scaler, loss history, data position of every stream,
  skip counts, and each rank's RNG states (python, numpy, torch, cuda).

- ``manifest.json`` (written last): the size and SHA-256 of every other file. A checkpoint counts as
  complete only when its manifest lists all four files and they exist with those sizes; reading it
  verifies every checksum, so flipped bytes or a truncated file fail loudly, naming the file,
  instead of loading silently (safetensors itself checks the header, not the tensor bytes; pip's
  ``RECORD`` and the Hugging Face Hub's LFS pointers use the same per-file SHA-256).

It is written into a temporary sibling directory and renamed into place (``os.replace`` of a
directory is atomic on POSIX), so a reader never sees a half-written checkpoint; leftovers of a
crashed write start with ``.tmp-`` and are removed on the next start. Pruning renames a checkpoint
to a ``.tmp-`` name before deleting it, so a kill during the deletion leaves nothing that looks like
a checkpoint. Checkpoints the recipe must not resume from (corrupt, or holding weights that led to
a NaN or a divergence) are moved aside into ``checkpoints/rejected/`` with a ``REJECTED.txt`` that
says why; nothing is deleted silently.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger("mpm_train.checkpoint")

_STEP_DIR = re.compile(r"^step_(\d+)$")
MODEL_FILE = "model.safetensors"
OPTIM_TENSORS = "optimizer.safetensors"
OPTIM_META = "optimizer.json"
TRAINER_STATE = "trainer_state.json"
MANIFEST = "manifest.json"
REJECTED_DIR = "rejected"
CHECKPOINT_FILES: tuple[str, ...] = (MODEL_FILE, OPTIM_TENSORS, OPTIM_META, TRAINER_STATE)


class CheckpointError(RuntimeError):
    """A checkpoint (or weights file) is missing, incomplete or corrupt; ``path`` is the file at fault."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# -- files -------------------------------------------------------------------------------------------
def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file, fsync and ``os.replace``.

    A reader (or a run restarted after a kill) sees the old content or the new, never half of it.
    """
    p = Path(path)
    tmp = p.with_name(f".tmp-{p.name}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(p.parent)
    return p


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


def _read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """The ``files`` table of a checkpoint's manifest; ``CheckpointError`` when it is unreadable."""
    mf = path / MANIFEST
    try:
        data = json.loads(mf.read_text(encoding="utf-8"))
        files = data["files"]
        if not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("sha256"), str) and isinstance(v.get("bytes"), int)
            for v in files.values()
        ):
            raise ValueError("bad 'files' table")
    except FileNotFoundError:
        raise CheckpointError(mf, "missing") from None
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(mf, f"unreadable manifest ({exc})") from None
    return files


def check_complete(path: str | Path) -> None:
    """Cheap completeness check (no hashing): raise ``CheckpointError`` naming the first problem.

    With a manifest: every file it lists exists with the listed size, and all four checkpoint
    files are listed. Without one (checkpoints written before manifests existed): all four files exist.
    """
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(p, "not a checkpoint directory")
    if not (p / MANIFEST).exists():
        for name in CHECKPOINT_FILES:
            if not (p / name).is_file():
                raise CheckpointError(p / name, "missing (and the checkpoint has no manifest)")
        return
    files = _read_manifest(p)
    for name in CHECKPOINT_FILES:
        if name not in files:
            raise CheckpointError(p / MANIFEST, f"does not list {name}")
    for name, entry in files.items():
        f = p / name
        if not f.is_file():
            raise CheckpointError(f, "missing")
        size = f.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(f, f"has {size} bytes, the manifest says {entry['bytes']} (truncated?)")


def verify_checkpoint(path: str | Path) -> None:
    """Full check: :func:`check_complete`, then every file's SHA-256 against the manifest.

    Checkpoints without a manifest (older format) cannot be verified; a warning says so.
    """
    p = Path(path)
    check_complete(p)
    if not (p / MANIFEST).exists():
        log.warning("%s has no %s (older format): its files cannot be verified", p, MANIFEST)
        return
    for name, entry in _read_manifest(p).items():
        digest = sha256_file(p / name)
        if digest != entry["sha256"]:
            raise CheckpointError(
                p / name,
                f"SHA-256 {digest[:12]}... does not match the manifest's {entry['sha256'][:12]}... "
                "(the file changed or is corrupt)",
            )


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``<output_dir>/checkpoints``, oldest first.

    Complete means :func:`check_complete` passes (manifest and files present, sizes right); the
    checksums are verified when a checkpoint is read. A directory holding only some of the files
    (e.g. only ``trainer_state.json``) is not a checkpoint.
    """
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if not (m and p.is_dir()):
            continue
        try:
            check_complete(p)
        except CheckpointError:
            continue
        found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def newest_intact_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest checkpoint that verifies, moving every newer damaged one aside.

    Every ``step_*`` directory is considered, complete or not, newest first; each that fails
    :func:`verify_checkpoint` (a missing or truncated file, a checksum mismatch, unreadable JSON)
    is moved into ``checkpoints/rejected/`` and reported as ``(original path, reason)``, so the
    caller can say which one was skipped and why. Returns ``(path or None, rejected)``.
    """
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return None, []
    candidates = sorted(
        ((int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()),
        reverse=True,
    )
    rejected: list[tuple[Path, str]] = []
    for _, path in candidates:
        try:
            verify_checkpoint(path)
            read_trainer_state(path)
        except CheckpointError as exc:
            reason = str(exc)
            reject_checkpoint(path, f"not resumable: {reason}")
            rejected.append((path, reason))
            continue
        return path, rejected
    return None, rejected


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """``trainer_state.json`` of a checkpoint directory (``CheckpointError`` naming the file otherwise)."""
    state = _load_json(Path(path) / TRAINER_STATE)
    if not isinstance(state.get("step"), int):
        raise CheckpointError(Path(path) / TRAINER_STATE, "has no integer 'step'")
    return state


def remove_partial(output_dir: str | Path) -> None:
    """Delete leftovers of checkpoint writes or prunes that were interrupted (``.tmp-*`` directories)."""
    root = Path(output_dir) / "checkpoints"
    if root.is_dir():
        for p in root.glob(".tmp-*"):
            shutil.rmtree(p, ignore_errors=True)


def _delete_atomically(path: Path) -> None:
    """Rename ``path`` out of the checkpoint namespace, then delete it: never half a checkpoint."""
    trash = path.parent / f".tmp-delete-{path.name}-{uuid.uuid4().hex[:8]}"
    os.replace(path, trash)
    _fsync_dir(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def reject_checkpoint(path: str | Path, reason: str) -> Path:
    """Move a checkpoint aside into ``checkpoints/rejected/`` (kept for inspection, never resumed).

    ``REJECTED.txt`` inside says why. Returns the new path.
    """
    p = Path(path)
    root = p.parent / REJECTED_DIR
    root.mkdir(exist_ok=True)
    dest = root / p.name
    n = 1
    while dest.exists():
        n += 1
        dest = root / f"{p.name}-{n}"
    os.replace(p, dest)
    _fsync_dir(p.parent)
    try:
        (dest / "REJECTED.txt").write_text(reason + "\n", encoding="utf-8")
    except OSError:  # pragma: no cover - a read-only or vanished directory: the move is what matters
        pass
    return dest


def write_checkpoint(
    output_dir: str | Path,
    step: int,
    *,
    model_state: Mapping[str, torch.Tensor],
    optim_tensors: Mapping[str, torch.Tensor],
    optim_meta: Mapping[str, Any],
    trainer_state: Mapping[str, Any],
) -> Path:
    """Write one checkpoint atomically (temporary directory + manifest + rename) and return its path."""
    final = checkpoint_dir(output_dir, step)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    save_file(dict(model_state), str(tmp / MODEL_FILE), metadata={"format": "pt", "step": str(step)})
    save_file(dict(optim_tensors), str(tmp / OPTIM_TENSORS), metadata={"format": "pt"})
    (tmp / OPTIM_META).write_text(json.dumps(optim_meta), encoding="utf-8")
    (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state), encoding="utf-8")
    files = {}
    for name in CHECKPOINT_FILES:  # make the bytes durable, and record what they are
        with open(tmp / name, "rb") as fh:
            os.fsync(fh.fileno())
        files[name] = {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
    manifest = {"format": "mpm-train-checkpoint", "version": 1, "step": step, "files": files}
    with open(tmp / MANIFEST, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(manifest, indent=1))
        fh.flush()
        os.fsync(fh.fileno())
    if final.exists():  # re-writing the same step (e.g. a resumed run reaching it again)
        _delete_atomically(final)
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def prune_checkpoints(output_dir: str | Path, keep_last: int, *, protect: Path | None = None) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (and ``protect``); returns the deleted paths.

    Each one is renamed to a ``.tmp-`` name first, so a kill in the middle of the deletion leaves no
    partial ``step_*`` directory behind.
    """
    found = list_checkpoints(output_dir)
    doomed = [p for _, p in found[:-keep_last]] if keep_last > 0 else []
    doomed = [p for p in doomed if protect is None or p.resolve() != Path(protect).resolve()]
    for p in doomed:
        _delete_atomically(p)
    return doomed


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise CheckpointError(path, "missing") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            path, f"not a readable safetensors file (truncated or corrupt?): {exc}"
        ) from None


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(path, "missing") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(path, f"not readable JSON (truncated or corrupt?): {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(path, f"expected a JSON object, got {type(data).__name__}")
    return data


def read_checkpoint(
    path: str | Path, *, verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """``(model_state, optim_tensors, optim_meta, trainer_state)`` of a checkpoint directory.

    ``verify`` checks every file against the manifest first (:func:`verify_checkpoint`); any
    problem raises ``CheckpointError`` naming the file.
    """
    p = Path(path)
    if verify:
        verify_checkpoint(p)
    else:
        check_complete(p)
    return (
        _load_safetensors(p / MODEL_FILE),
        _load_safetensors(p / OPTIM_TENSORS),
        _load_json(p / OPTIM_META),
        _load_json(p / TRAINER_STATE),
    )


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The trainable weights of a checkpoint directory or a ``.safetensors`` file.

    A checkpoint's ``model.safetensors`` is checked against its manifest's SHA-256 (a file inside a
    checkpoint directory too); a file that is truncated, corrupt or holds no tensor raises
    ``CheckpointError`` naming it.
    """
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise FileNotFoundError(f"no weights at {p}")
    if (p.parent / MANIFEST).is_file():
        entry = _read_manifest(p.parent).get(p.name)
        if entry is not None:
            size = p.stat().st_size
            if size != entry["bytes"]:
                raise CheckpointError(p, f"has {size} bytes, the manifest says {entry['bytes']} (truncated?)")
            if sha256_file(p) != entry["sha256"]:
                raise CheckpointError(p, "SHA-256 does not match the checkpoint manifest (corrupt)")
    weights = _load_safetensors(p)
    if not weights:
        raise CheckpointError(p, "holds no tensors")
    return weights


def non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [n for n, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
