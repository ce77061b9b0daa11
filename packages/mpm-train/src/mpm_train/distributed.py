"""torch.distributed plumbing: process-group setup from ``torchrun``'s environment, DDP/FSDP wrapping.

``torchrun --nproc_per_node=N`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_distributed` turns them into a process group (gloo on CPU, nccl on GPU).
Without them everything runs in one process and the collectives below are no-ops.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | torch.device | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` describes (idempotent); pick this rank's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None or str(device) == "auto":
        dev = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    launched = "MASTER_ADDR" in os.environ and "WORLD_SIZE" in os.environ  # torchrun, even with one process
    if (world_size > 1 or launched) and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend, rank=rank, world_size=world_size, device_id=dev if dev.type == "cuda" else None
        )
    if dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class StepModule(nn.Module):
    """Routes ``forward`` to ``model.training_step`` so DDP/FSDP hooks see the step.

    DDP only synchronises gradients for computations that go through ``DDP.forward``; calling
    ``model.module.training_step`` directly would silently skip the all-reduce.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> Any:
        return self.model.training_step(batch)  # type: ignore[operator]


def wrap_model(
    model: nn.Module, *, strategy: str, info: DistInfo, mixed_precision: torch.dtype | None = None
) -> nn.Module:
    """The module the training loop calls: ``StepModule(model)``, wrapped in DDP or FSDP2 when asked.

    ``strategy``: ``none`` (one process), ``ddp``, ``fsdp`` (FSDP2 ``fully_shard``: each module of the
    model's optional ``fsdp_units()`` is sharded separately, then the whole), ``auto`` (DDP when the
    world size is above one, else none).
    """
    step = StepModule(model).to(info.device)
    if strategy == "auto":
        strategy = "ddp" if info.enabled else "none"
    if strategy == "none":
        if info.enabled:
            raise ValueError(f"strategy 'none' with world size {info.world_size}; use 'ddp' or 'fsdp'")
        return step
    if not dist.is_initialized():
        raise RuntimeError(
            f"strategy {strategy!r} needs torch.distributed; launch with torchrun "
            "(or use strategy 'none' / 'auto' in a single process)"
        )
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(step, device_ids=[info.device] if info.device.type == "cuda" else None)
    if strategy == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = (
            MixedPrecisionPolicy(param_dtype=mixed_precision, reduce_dtype=torch.float32)
            if mixed_precision is not None
            else MixedPrecisionPolicy()
        )
        units = getattr(model, "fsdp_units", None)
        for unit in units() if callable(units) else ():
            fully_shard(unit, mp_policy=mp)
        fully_shard(step, mp_policy=mp)
        return step
    raise ValueError(f"unknown strategy {strategy!r}; choose from none, ddp, fsdp, auto")


def resolved_strategy(strategy: str, info: DistInfo) -> str:
    if strategy == "auto":
        return "ddp" if info.enabled else "none"
    return strategy


@contextlib.contextmanager
def no_grad_sync(wrapped: nn.Module, strategy: str, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce of a micro-batch that is not the last of its accumulation."""
    if not enabled or strategy == "none":
        yield
        return
    if strategy == "ddp":
        with wrapped.no_sync():  # type: ignore[operator]
            yield
        return
    # FSDP2
    wrapped.set_requires_gradient_sync(False)  # type: ignore[operator]
    try:
        yield
    finally:
        wrapped.set_requires_gradient_sync(True)  # type: ignore[operator]
