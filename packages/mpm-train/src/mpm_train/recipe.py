"""The stage recipe: ``run_stage`` reads top to bottom as the training loop it is.

    model (Trainable) --policy.select-----> what trains          (per part; policy.freeze: the rest)
    ShardReader       --collate_fn-------->  batch               (the model side's collate)
    for step: accumulate micro-batches -> all-reduce loss -> NaN / divergence guard -> clip ->
              optimizer -> scheduler -> log (JSONL, TensorBoard, tqdm) / eval / checkpoint
              (atomic, checksummed, finite weights only, keep last N + the last known-good one)

The same code runs in one process and under ``torchrun`` (DDP or FSDP2); see ``distributed.py``.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint as ckpt
from . import policy
from .config import (
    RESUME_SAFE_KEYS,
    ConfigError,
    PlanConfig,
    StageConfig,
    changed_keys,
    fingerprint_hash,
    stage_fingerprint,
)
from .data import ShardReader
from .distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    no_grad_sync,
    resolved_strategy,
    wrap_model,
)
from .interfaces import CollateFn, DataStats, EvalFn, PlanResult, StageResult
from .metrics import MetricsLogger

log = logging.getLogger("mpm_train")


class StageStoppedError(RuntimeError):
    """A guard stopped the stage before the optimizer step of ``step``.

    ``last_checkpoint`` is the newest good checkpoint (``None`` when there is none): its weights are
    finite and the step after it had a finite, non-divergent loss. Checkpoints written after it are
    moved aside into ``checkpoints/rejected/`` (``rejected``), so ``resume=True`` never picks them.
    """

    def __init__(
        self, message: str, *, step: int, last_checkpoint: Path | None, rejected: Sequence[Path] = ()
    ) -> None:
        super().__init__(message)
        self.step = step
        self.last_checkpoint = last_checkpoint
        self.rejected = list(rejected)


class NonFiniteLossError(StageStoppedError):
    """The loss, the gradient norm or the weights became NaN/inf."""


class DivergenceError(StageStoppedError):
    """The loss stayed above ``divergence_factor`` x its running minimum for ``divergence_steps`` steps."""


class ConfigChangedError(ValueError):
    """Resuming with a config that changes the steps already taken; ``keys`` are the dotted paths."""

    def __init__(self, message: str, *, keys: Sequence[str]) -> None:
        super().__init__(message)
        self.keys = list(keys)


# ------------------------------------------------------------------------------------------------
# Small helpers (each one does one thing the loop needs)
# ------------------------------------------------------------------------------------------------
def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_lambda(config: StageConfig) -> Callable[[int], float]:
    """Multiplier of ``config.lr`` after ``step`` optimizer steps: linear warmup, then the decay."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if config.schedule == "cosine" else 1.0 - progress
        return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * shape

    return factor


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Turn on activation checkpointing through the model's (or its submodules') own switch."""
    fn = getattr(model, "gradient_checkpointing_enable", None)
    if callable(fn):
        fn()
        return 1
    done: list[str] = []
    for name, m in model.named_modules():
        if not name or any(name.startswith(d + ".") for d in done):
            continue
        hf_new = getattr(m, "activation_checkpointing_enable", None)  # transformers >= 5
        hf = getattr(m, "gradient_checkpointing_enable", None)  # transformers < 5
        if callable(hf_new) and getattr(m, "supports_gradient_checkpointing", False):
            hf_new(activation_checkpointing_kwargs={"use_reentrant": False})
            done.append(name)
        elif callable(hf) and getattr(m, "supports_gradient_checkpointing", False):
            hf(gradient_checkpointing_kwargs={"use_reentrant": False})
            done.append(name)
        elif callable(getattr(m, "enable_gradient_checkpointing", None)) and getattr(
            m, "_supports_gradient_checkpointing", False
        ):
            m.enable_gradient_checkpointing()  # diffusers
            done.append(name)
    if not done:
        raise ValueError(
            "gradient_checkpointing=true, but the model has no gradient_checkpointing_enable() "
            "and no transformers/diffusers submodule that supports it"
        )
    return len(done)


def unpack_step_output(out: Any) -> tuple[torch.Tensor, Mapping[str, Any]]:
    """``training_step`` may return a tensor, an object with ``.loss`` (+ ``.logs``), or a dict."""
    logs: Mapping[str, Any]
    if isinstance(out, torch.Tensor):
        loss, logs = out, {}
    elif isinstance(out, Mapping) and "loss" in out:
        loss, logs = out["loss"], out.get("logs") or {}
    elif hasattr(out, "loss"):
        loss, logs = out.loss, getattr(out, "logs", None) or {}
    else:
        raise TypeError(
            f"training_step must return a loss tensor or an object with .loss, got {type(out).__name__}"
        )
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"training_step loss must be a scalar tensor, got {shape}")
    return loss.reshape(()), logs


def to_device(batch: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return batch  # collate output already lives on the CPU
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return type(batch)({k: to_device(v, device) for k, v in batch.items()})  # type: ignore[call-arg]
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    if hasattr(batch, "to"):
        return batch.to(device)
    return batch


def _autocast(precision: str, device: torch.device) -> Any:
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError("precision 'fp16' needs a GPU; use 'fp32' (or 'bf16', slow on most CPUs) on the CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


def _load_named(model: nn.Module, state: Mapping[str, torch.Tensor], *, what: str) -> None:
    params = dict(model.named_parameters())
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise ValueError(f"{what}: {len(unknown)} weight(s) match no model parameter, e.g. {unknown[:3]}")
    with torch.no_grad():
        for name, tensor in state.items():
            p = params[name]
            if tuple(tensor.shape) != tuple(p.shape):
                raise ValueError(
                    f"{what}: {name} has shape {tuple(tensor.shape)}, the model's is {tuple(p.shape)}"
                )
            p.copy_(tensor.to(dtype=p.dtype, device=p.device))


class DivergenceGuard:
    """Loss above ``factor`` x its running minimum for ``patience`` consecutive steps = divergence.

    Lightning's ``EarlyStopping(divergence_threshold=...)`` compares with a fixed number; a ratio to
    the running minimum needs no knowledge of the loss's scale. Rebuilt from the loss history on
    resume, so a resumed run stops at the same step as an uninterrupted one. Only applies while the
    running minimum is positive.
    """

    def __init__(self, factor: float | None, patience: int, history: Sequence[float] = ()) -> None:
        self.factor = factor
        self.patience = patience
        self.minimum = math.inf
        self.streak = 0
        self.streak_start: int | None = None  # first step of the current run of high losses
        for step, loss in enumerate(history, start=1):
            self.update(step, loss)

    def update(self, step: int, loss: float) -> bool:
        """Record ``loss`` of ``step``; ``True`` when the stage has diverged."""
        high = self.factor is not None and 0 < self.minimum < math.inf and loss > self.factor * self.minimum
        if high:
            self.streak += 1
            self.streak_start = step if self.streak == 1 else self.streak_start
        else:
            self.streak, self.streak_start = 0, None
        self.minimum = min(self.minimum, loss)
        return self.streak >= self.patience

    def last_trusted_weights(self, step: int) -> int:
        """Newest step whose weights are known good after ``step``'s update (its next loss was fine)."""
        return (self.streak_start - 2) if self.streak_start is not None else step - 1


def _value_at(d: Any, path: str) -> Any:
    """The value at a dotted path of ``changed_keys`` (``data.sources[0].weight``), or ``"<absent>"``."""
    cur = d
    for part in path.replace("[", ".[").split("."):
        if not part:
            continue
        try:
            cur = cur[int(part[1:-1])] if part.startswith("[") else cur[part]
        except (KeyError, IndexError, TypeError, ValueError):
            return "<absent>"
    return cur


def check_resume_config(
    stored: Mapping[str, Any],
    config: StageConfig,
    *,
    checkpoint: Path,
    checkpoint_step: int,
    allow_changes: Sequence[str] = (),
    checkpoint_world_size: int = 1,
    world_size: int = 1,
) -> list[str]:
    """Compare the config a checkpoint was written with to the one resuming it.

    Returns one warning per change that is safe (``RESUME_SAFE_KEYS``: intervals, logging, more
    steps); raises ``ConfigChangedError`` naming every other changed key (batch, lr, seed, data...):
    those change the steps already taken, so the resumed run would match neither the old nor the new
    config. ``allow_changes`` lists keys (or key prefixes such as ``data``) to accept anyway.
    ``batch_size`` / ``grad_accum`` may change with the world size as long as the global batch
    (``batch_size * grad_accum * world_size``) stays the same (an elastic resume).
    HF Trainer only warns about a few intervals and the batch size; this refuses by default.
    """
    try:
        old = StageConfig.from_dict(stored).to_dict()  # fills keys added since, with their defaults
    except (ConfigError, TypeError, ValueError):
        old = dict(stored)
    new = config.to_dict()
    if config.steps < checkpoint_step:
        raise ConfigChangedError(
            f"stage {config.name!r}: steps={config.steps}, but the checkpoint to resume ({checkpoint}) is "
            f"already at step {checkpoint_step}; resuming would report step {config.steps} while holding "
            f"step-{checkpoint_step} weights. Use steps >= {checkpoint_step}, resume= an earlier "
            "checkpoint directory, or a fresh output_dir",
            keys=["steps"],
        )

    old_global = int(old.get("batch_size", 0)) * int(old.get("grad_accum", 1)) * checkpoint_world_size
    same_global = old_global == config.batch_size * config.grad_accum * world_size

    def allowed(key: str) -> bool:
        top = key.split(".")[0].split("[")[0]
        if top in ("batch_size", "grad_accum") and same_global:
            return True
        return top in RESUME_SAFE_KEYS or any(
            key == a or key.startswith(f"{a}.") or key.startswith(f"{a}[") for a in allow_changes
        )

    changes = changed_keys(old, new)
    shown = {k: f"{k} {_value_at(old, k)!r} -> {_value_at(new, k)!r}" for k in changes}
    if same_global and checkpoint_world_size != world_size:
        for k in ("batch_size", "grad_accum"):
            if k in shown:
                shown[k] += (
                    f" (world size {checkpoint_world_size} -> {world_size}: same global batch {old_global})"
                )
    refused = [k for k in changes if not allowed(k)]
    if refused:
        flags = " ".join(f"--allow-change {k}" for k in refused)
        raise ConfigChangedError(
            f"stage {config.name!r}: the config differs from the one {checkpoint} was written with: "
            f"{'; '.join(shown[k] for k in refused)}. These change the steps already taken, so the resumed run "
            "would match neither config. Restore them, start a fresh output_dir (init_from= that checkpoint "
            f"keeps its weights), or accept the change: allow_changes={refused} (CLI: {flags})",
            keys=refused,
        )
    return [shown[k] for k in changes]


def _gather_stats(reader: ShardReader) -> DataStats:
    total = DataStats()
    for d in all_gather_objects(reader.stats.to_dict()):
        total = total.merge(DataStats.from_dict(d))
    return total


# ------------------------------------------------------------------------------------------------
# The recipe
# ------------------------------------------------------------------------------------------------
def run_stage(
    model: nn.Module,
    config: StageConfig,
    *,
    collate_fn: CollateFn,
    output_dir: str | Path,
    resume: bool | str | Path = True,
    eval_fn: EvalFn | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    allow_changes: Sequence[str] = (),
    fingerprint: Mapping[str, Any] | None = None,
) -> StageResult:
    """Train ``model`` for one stage; works alone and under ``torchrun`` (DDP or FSDP2).

    Args:
        model: an ``nn.Module`` satisfying ``Trainable``; trained in place.
        config: the stage (``StageConfig``).
        collate_fn: the model side's ``list[sample] -> batch`` (see ``interfaces.CollateFn``).
        output_dir: where ``checkpoints/``, ``metrics.jsonl``, ``config.json`` and ``result.json`` go.
        resume: ``True`` resumes from the newest intact checkpoint in ``output_dir`` when there is
            one (fresh start otherwise; a corrupt or incomplete newer one is moved aside into
            ``checkpoints/rejected/`` with a warning saying why); ``False`` refuses to run over
            existing checkpoints; a path resumes from that checkpoint directory (verified).
            Resuming compares the checkpoint's config with ``config``: see ``check_resume_config``.
        eval_fn: called as ``eval_fn(model)`` (eval mode, ``torch.no_grad``) every ``config.eval_every`` steps
            and at the end, on every rank; its numbers are logged under ``eval/``.
        device: ``None``/``"auto"`` (this rank's GPU if any, else CPU), ``"cpu"``, ``"cuda"``...
        progress: show the tqdm bar (rank 0 only).
        allow_changes: config keys (dotted paths or prefixes) that may differ from the checkpoint's
            when resuming, although they change the steps already taken (e.g. ``["lr"]``).
        fingerprint: what the result depends on (``run_plan`` passes the stage config, the hash of
            the stage it starts from and the plan's context); its hash is stored in the result as
            ``config_hash``. Default: the stage config alone.

    Returns:
        ``StageResult`` (identical on every rank). Raises ``NonFiniteLossError`` when the loss,
        gradient norm or weights become NaN/inf and ``DivergenceError`` when the loss diverges
        (both ``StageStoppedError``: the last good checkpoint stays, later ones are moved aside);
        ``ConfigChangedError`` when resuming with a changed config; ``CheckpointError`` for a
        damaged ``resume=`` path or ``init_from`` file.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module implementing Trainable, got {type(model).__name__}")
    for method in ("stage_parameters", "training_step"):
        if not callable(getattr(model, method, None)):
            raise TypeError(f"model {type(model).__name__} has no {method}(); it does not satisfy Trainable")

    # -- 1. where we run, where we write, where we start from ------------------------------------------
    info: DistInfo = init_distributed(device)
    strategy = resolved_strategy(config.strategy, info)
    out = Path(output_dir)
    # Rank 0 decides where to start (and refuses bad resumes) before anything is written; every
    # rank then raises the same error instead of waiting forever for rank 0.
    plan: dict[str, Any] = {}
    if info.is_main:
        try:
            plan = _prepare_output(out, config, resume, allow_changes, info.world_size)
        except (FileExistsError, FileNotFoundError, ConfigChangedError, ckpt.CheckpointError) as exc:
            broadcast_object({"error": f"{type(exc).__name__}: {exc}"})
            raise
    plan = broadcast_object(plan)
    if "error" in plan:
        raise RuntimeError(f"rank 0 refused to start: {plan['error']}")
    start_from: Path | None = plan["start_from"]
    set_seed(config.seed + info.rank)
    reader = ShardReader(config.data, seed=config.seed, rank=info.rank, world_size=info.world_size)

    # -- 2. what trains --------------------------------------------------------------------------------
    selection = policy.select(model, config)  # per part (adds the LoRA adapters the stage asks for)
    policy.freeze(model, selection)  # the one step that sets requires_grad
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model.to(info.device)
    state: dict[str, Any] | None = None
    optim_tensors: dict[str, torch.Tensor] = {}
    optim_meta: dict[str, Any] = {}
    init_info: dict[str, Any] | None = None
    if start_from is not None:  # verified by rank 0 in _prepare_output
        weights, optim_tensors, optim_meta, state = ckpt.read_checkpoint(start_from, verify=False)
        _load_named(model, weights, what=f"checkpoint {start_from}")
    elif config.init_from:
        init_info = _load_init_from(model, config.init_from)

    mixed = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
    wrapped = wrap_model(
        model, strategy=strategy, info=info, mixed_precision=mixed if strategy == "fsdp" else None
    )
    trainable = [
        (n, p) for n, p in model.named_parameters() if p.requires_grad
    ]  # after wrapping (FSDP swaps)
    groups, names = policy.param_groups(trainable, selection, config)  # one lr per part
    params = [p for _, p in trainable]
    optimizer = torch.optim.AdamW(
        groups,
        lr=config.lr,
        betas=config.betas,
        weight_decay=config.weight_decay,
        foreach=info.device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None

    # -- 3. restore the rest of the state ------------------------------------------------------------------
    start_step, losses = 0, []
    if state is not None:
        ckpt.load_optimizer_state(optimizer, names, optim_tensors, optim_meta)
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        reader.load_state_dict(state["data"])
        if state["world_size"] == info.world_size:
            ckpt.restore_rng(state["rng"][info.rank])
        else:
            log.warning(
                "resuming with world size %d from a checkpoint written with %d: data order is exact, "
                "RNG streams (dropout, augmentation) are re-seeded",
                info.world_size,
                state["world_size"],
            )
            set_seed(config.seed + info.rank + 1000003 * state["step"])
        start_step, losses = int(state["step"]), [float(x) for x in state["losses"]]
    resumed_from = start_step if state is not None else None
    guard = DivergenceGuard(config.divergence_factor, config.divergence_steps, losses)

    metrics = (
        MetricsLogger(
            out / "metrics.jsonl", tensorboard_dir=out / "tensorboard" if config.tensorboard else None
        )
        if info.is_main
        else None
    )
    global_batch = config.batch_size * config.grad_accum * info.world_size
    if metrics is not None:
        metrics.log(
            {
                "event": "start",
                "stage": config.name,
                "step": start_step,
                "world_size": info.world_size,
                "strategy": strategy,
                "global_batch": global_batch,
                "resumed_from": resumed_from,
                "trainable_parameters": sum(p.numel() for p in params),
                "skipped_checkpoints": plan["skipped"],
                "config_changes": plan["changes"],
                "init_from": init_info,
            }
        )

    checkpoint_s = 0.0

    def stop(error: type[StageStoppedError], step: int, what: str, first_bad: int) -> None:
        """Stop before this step's update: keep checkpoints older than ``first_bad``, move the rest aside."""
        outcome = _stop(config, step, what, out, metrics, first_bad=first_bad) if info.is_main else None
        last, rejected, msg = broadcast_object(outcome)
        raise error(msg, step=step, last_checkpoint=last, rejected=rejected)

    def save(step: int) -> Path:
        nonlocal checkpoint_s
        t0 = time.perf_counter()
        # Collective (FSDP gathers shards, every rank reports its RNG and data position); rank 0 writes.
        model_state: dict[str, torch.Tensor] = {}
        o_tensors: dict[str, torch.Tensor] = {}
        o_meta: dict[str, Any] = {}
        if strategy == "fsdp" or info.is_main:  # DDP replicas are identical: only rank 0 copies them
            model_state = {n: ckpt.full_tensor(p) for n, p in trainable}
            o_tensors, o_meta = ckpt.optimizer_state(optimizer, names)
        # A checkpoint is kept only if its weights (and optimizer moments) are finite.
        bad = broadcast_object(
            ckpt.non_finite(model_state) + ckpt.non_finite(o_tensors) if info.is_main else None
        )
        if bad:
            stop(
                NonFiniteLossError,
                step,
                f"the weights became non-finite in step {step} ({', '.join(bad[:3])})",
                step,
            )
        per_rank = all_gather_objects({"rng": ckpt.capture_rng(), "data": reader.state_dict()})
        path = ckpt.checkpoint_dir(out, step)
        if info.is_main:
            streams: dict[str, Any] = {}
            for r in per_rank:
                streams.update(r["data"]["streams"])
            trainer_state = {
                "stage": config.name,
                "step": step,
                "world_size": info.world_size,
                "strategy": strategy,
                "losses": losses,
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "data": {"num_streams": reader.num_streams, "streams": streams},
                "rng": [r["rng"] for r in per_rank],
                "config": config.to_dict(),
            }
            path = ckpt.write_checkpoint(
                out,
                step,
                model_state=model_state,
                optim_tensors=o_tensors,
                optim_meta=o_meta,
                trainer_state=trainer_state,
            )
            # Until the next steps show its loss is fine, the newest checkpoint is unconfirmed: keep
            # the newest confirmed one too (a NaN or divergence later must find it on disk).
            trusted = guard.last_trusted_weights(step) if step < config.steps else step
            confirmed = [p for s, p in ckpt.list_checkpoints(out) if s <= trusted]
            ckpt.prune_checkpoints(out, config.keep_last, protect=confirmed[-1] if confirmed else None)
        barrier()
        checkpoint_s += time.perf_counter() - t0
        return path

    def evaluate(step: int) -> dict[str, float]:
        assert eval_fn is not None
        model.eval()
        fsdp = strategy == "fsdp"
        if fsdp:
            wrapped.unshard()  # type: ignore[operator]
        try:
            with torch.no_grad():
                result = {k: float(v) for k, v in eval_fn(model).items()}
        finally:
            if fsdp:
                wrapped.reshard()  # type: ignore[operator]
            policy.train_mode(model)
        if metrics is not None:
            metrics.log({"step": step, "eval": result})
        return result

    # -- 4. the loop -----------------------------------------------------------------------------------
    policy.train_mode(model)  # frozen batch-norm layers keep their statistics
    bar = tqdm(
        total=config.steps,
        initial=start_step,
        desc=config.name,
        dynamic_ncols=True,
        disable=not (progress and info.is_main),
    )
    t_start = time.perf_counter()
    t_window, steps_window = t_start, 0
    window_losses: list[float] = []
    window_logs: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    last_path = start_from
    sps = 0.0
    try:
        for step in range(start_step + 1, config.steps + 1):
            loss_sum = torch.zeros((), device=info.device)
            for micro in range(config.grad_accum):
                batch = to_device(collate_fn(reader.next_batch(config.batch_size)), info.device)
                last_micro = micro == config.grad_accum - 1
                with no_grad_sync(wrapped, strategy, enabled=not last_micro):
                    with _autocast(config.precision, info.device):
                        loss, logs = unpack_step_output(wrapped(batch))
                    scaled = loss.float() / config.grad_accum
                    (scaler.scale(scaled) if scaler is not None else scaled).backward()
                loss_sum += loss.detach().float()
                for k, v in logs.items():
                    window_logs[k] = window_logs.get(k, 0.0) + float(v) / config.grad_accum
            # one all-reduce gives the global mean loss and, with it, a finiteness check on every rank
            step_loss = float(all_reduce_sum(loss_sum) / (config.grad_accum * info.world_size))
            if not math.isfinite(step_loss):  # the weights of step - 1 gave it: they are not good
                stop(NonFiniteLossError, step, f"loss is {step_loss}", step - 1)
            if guard.update(step, step_loss):
                assert guard.streak_start is not None
                stop(
                    DivergenceError,
                    step,
                    f"the loss diverged: {step_loss:.4g} and above {config.divergence_factor:g} x its running "
                    f"minimum {guard.minimum:.4g} since step {guard.streak_start} ({guard.streak} steps; "
                    f"divergence_factor={config.divergence_factor:g}, divergence_steps={config.divergence_steps})",
                    guard.streak_start - 1,
                )
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = None
            if config.max_grad_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
                if scaler is None and not math.isfinite(grad_norm):
                    stop(NonFiniteLossError, step, f"gradient norm is {grad_norm}", step - 1)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            lr = config.lr * scheduler.get_last_lr()[0] / optimizer.param_groups[0]["initial_lr"]  # base lr
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_loss)
            window_losses.append(step_loss)
            steps_window += 1
            bar.update(1)

            if (config.log_every and step % config.log_every == 0) or step == config.steps:
                now = time.perf_counter()
                sps = steps_window * global_batch / max(now - t_window, 1e-9)
                stats = _gather_stats(reader)
                bar.set_postfix(
                    loss=f"{np.mean(window_losses):.4f}",
                    lr=f"{lr:.2e}",
                    samples_s=f"{sps:.1f}",
                    refresh=False,
                )
                if metrics is not None:
                    metrics.log(
                        {
                            "step": step,
                            "loss": float(np.mean(window_losses)),
                            "lr": lr,
                            "samples_per_s": sps,
                            "grad_norm": grad_norm,
                            "samples": stats.samples,
                            "skipped": stats.skipped,
                            "skipped_total": stats.total_skipped,
                            **{f"logs/{k}": v / steps_window for k, v in window_logs.items()},
                        }
                    )
                t_window, steps_window, window_losses, window_logs = now, 0, [], {}
            if eval_fn is not None and config.eval_every and step % config.eval_every == 0:
                eval_metrics = evaluate(step)
            if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == config.steps:
                last_path = save(step)
        if eval_fn is not None and not (config.eval_every and config.steps % config.eval_every == 0):
            eval_metrics = evaluate(config.steps)
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()

    # -- 5. the result ---------------------------------------------------------------------------------
    elapsed = time.perf_counter() - t_start
    fp = json.loads(json.dumps(dict(fingerprint if fingerprint is not None else stage_fingerprint(config))))
    if last_path is None:
        last_path = ckpt.checkpoint_dir(out, config.steps)
    stats = _gather_stats(reader)
    done = config.steps - start_step
    result = StageResult(
        stage=config.name,
        final_step=config.steps,
        losses=losses,
        checkpoint=last_path,
        weights=last_path / ckpt.MODEL_FILE,
        output_dir=out,
        metrics_path=out / "metrics.jsonl",
        data=stats,
        world_size=info.world_size,
        strategy=strategy,
        resumed_from=resumed_from,
        elapsed_s=elapsed,
        samples_per_s=done * global_batch / elapsed if done else 0.0,
        eval_metrics=eval_metrics,
        checkpoint_s=checkpoint_s,
        config_hash=fingerprint_hash(fp),
        fingerprint=fp,
    )
    if info.is_main:  # run_plan skips a stage by this file: never leave half of it
        ckpt.write_text_atomic(out / "result.json", result.to_json() + "\n")
    barrier()
    return result


def _prepare_output(
    out: Path, config: StageConfig, resume: bool | str | Path, allow_changes: Sequence[str], world_size: int
) -> dict[str, Any]:
    """Rank 0: pick the checkpoint to resume (refusing bad resumes), then write ``config.json``.

    Nothing is written before the decision, so a refused run leaves ``output_dir`` as it was.
    """
    skipped: list[dict[str, str]] = []
    if isinstance(resume, str | Path) and not isinstance(resume, bool):
        explicit = Path(resume)
        ckpt.verify_checkpoint(explicit)
        start_from: Path | None = explicit  # an explicit choice: no fallback, the error names the file
    elif not resume:
        latest = ckpt.latest_checkpoint(out)
        if latest is not None:
            raise FileExistsError(
                f"{out} already holds checkpoints (newest {latest.name}); pass resume=True to "
                "continue from it, or use a fresh output_dir"
            )
        start_from = None
    else:
        start_from, rejected = ckpt.newest_intact_checkpoint(out)
        for path, reason in rejected:
            log.warning(
                "skipping checkpoint %s: %s; moved to %s", path.name, reason, path.parent / ckpt.REJECTED_DIR
            )
            skipped.append({"checkpoint": path.name, "reason": reason})
        if rejected:
            log.warning(
                "resuming from %s instead",
                start_from.name if start_from is not None else "scratch (no intact checkpoint)",
            )
    changes: list[str] = []
    if start_from is not None:
        state = ckpt.read_trainer_state(start_from)
        if "config" in state:
            changes = check_resume_config(
                state["config"],
                config,
                checkpoint=start_from,
                checkpoint_step=int(state["step"]),
                allow_changes=allow_changes,
                checkpoint_world_size=int(state.get("world_size", 1)),
                world_size=world_size,
            )
            for change in changes:
                log.warning("resuming %s with a changed config: %s", start_from.name, change)
    out.mkdir(parents=True, exist_ok=True)
    ckpt.remove_partial(out)
    ckpt.write_text_atomic(out / "config.json", config.to_json() + "\n")
    return {"start_from": start_from, "skipped": skipped, "changes": changes}


def _load_init_from(model: nn.Module, path: str) -> dict[str, Any]:
    """Load ``init_from`` weights: verified, non-empty, finite, every tensor matching a parameter."""
    weights = ckpt.load_weights(path)  # CheckpointError for an empty, truncated or corrupt file
    bad = ckpt.non_finite(weights)
    if bad:
        raise ckpt.CheckpointError(path, f"holds non-finite values in {len(bad)} tensor(s), e.g. {bad[:3]}")
    _load_named(model, weights, what=f"init_from {path}")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    covered = sum(1 for n in trainable if n in weights)
    log.info(
        "init_from %s: loaded %d tensors (%d of the %d trainable ones)",
        path,
        len(weights),
        covered,
        len(trainable),
    )
    return {
        "path": str(path),
        "tensors": len(weights),
        "trainable_covered": covered,
        "trainable": len(trainable),
    }


def _stop(
    config: StageConfig, step: int, what: str, out: Path, metrics: MetricsLogger | None, *, first_bad: int
) -> tuple[Path | None, list[Path], str]:
    """Rank 0: move checkpoints of step >= ``first_bad`` aside, name the newest one left, log it."""
    rejected = []
    for s, p in ckpt.list_checkpoints(out):
        if s >= first_bad:
            reason = f"stage stopped at step {step} ({what}); the weights of step {s} are not trusted"
            rejected.append(ckpt.reject_checkpoint(p, reason))
    last = ckpt.latest_checkpoint(out)
    moved = (
        f" Checkpoints after it were moved to {out / 'checkpoints' / ckpt.REJECTED_DIR}: "
        f"{', '.join(p.name for p in rejected)}."
        if rejected
        else ""
    )
    msg = (
        f"stage {config.name!r} stopped at step {step}: {what}. "
        f"{'Its checkpoint was not written. ' if first_bad == step else 'No update was applied for this step. '}"
        f"Last good checkpoint: {last if last is not None else 'none (no checkpoint before the problem)'}.{moved} "
        "Try a lower lr, gradient clipping (max_grad_norm), fp32, or check the data; to continue from the "
        "last good weights with new settings, start a fresh output_dir with init_from= that checkpoint."
    )
    if metrics is not None:
        event = "diverged" if what.startswith("the loss diverged") else "non_finite"
        metrics.log({"step": step, "event": event, "message": msg, "rejected": [str(p) for p in rejected]})
    log.error(msg)
    return last, rejected, msg


def _finished_result(done: Path) -> StageResult | None:
    """The ``result.json`` of a finished stage, or ``None`` (with a warning) when it cannot be trusted."""
    if not done.is_file():
        return None
    try:
        result = StageResult.load(done)
        ckpt.load_weights(result.weights)  # exists, intact (checksum), non-empty
    except (OSError, ValueError, KeyError, TypeError, ckpt.CheckpointError) as exc:
        log.warning("%s cannot be used (%s); the stage runs (resuming from its checkpoints)", done, exc)
        return None
    return result


class StageConfigChangedError(ConfigChangedError):
    """A finished stage of a plan was trained with another config than the one given now.

    ``changes`` maps each such stage to the dotted keys that differ (``stage.steps``, ``upstream``:
    the stage it starts from changed, ``context.model.bridge.kind``: the plan's context changed);
    ``keys`` lists them as ``<stage>: <key>``.
    """

    def __init__(self, message: str, *, changes: Mapping[str, list[str]]) -> None:
        super().__init__(message, keys=[f"{s}: {k}" for s, ks in changes.items() for k in ks])
        self.changes = dict(changes)


def plan_fingerprints(
    stages: Sequence[StageConfig], context: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The fingerprint of every stage: its config, the hash of the stage before it, the plan's context."""
    out: list[dict[str, Any]] = []
    upstream: str | None = None
    for stage in stages:
        fp = stage_fingerprint(stage, upstream=upstream, context=context)
        out.append(fp)
        upstream = fingerprint_hash(fp)
    return out


def _plan_context(
    plan: PlanConfig | Sequence[StageConfig], context: Mapping[str, Any] | None
) -> dict[str, Any]:
    if context is not None:
        return dict(context)
    if isinstance(plan, PlanConfig):  # the CLI's [model] table and the like; where it runs is no part of it
        return {k: v for k, v in plan.extra.items() if k != "output_dir"}
    return {}


def _changes(stage_dir: Path, fingerprint: Mapping[str, Any]) -> list[str] | None:
    """``None`` when the stage in ``stage_dir`` is not finished; else the keys that changed (may be empty)."""
    done = stage_dir / "result.json"
    if not done.is_file():
        return None
    try:
        old = StageResult.load(done)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged result.json: run_plan re-runs the stage (see _finished_result)
    if old.config_hash == fingerprint_hash(fingerprint):
        return []
    if old.fingerprint is not None:
        return changed_keys(old.fingerprint, fingerprint) or ["(fingerprint)"]
    stored = stage_dir / "config.json"  # a result written before config hashes existed
    if stored.is_file():
        try:
            before = {"stage": stage_fingerprint(StageConfig.load(stored))["stage"]}
        except (ConfigError, OSError, ValueError, TypeError):
            return ["(no config hash stored)"]
        return changed_keys(before, {"stage": fingerprint["stage"]}) or ["(no config hash stored)"]
    return ["(no config hash stored)"]


def _describe(changes: Mapping[str, list[str]], output_dir: Path) -> str:
    parts = []
    for name, keys in changes.items():
        shown = ", ".join(k if k != "upstream" else "upstream (a stage before it changed)" for k in keys[:8])
        more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
        parts.append(f"stage {name!r} ({shown}{more})")
    return (
        f"{output_dir}: finished stage(s) were trained with another config: {'; '.join(parts)}. "
        "Start over in a new output directory, or let the plan re-run them (if_changed='rerun'; the "
        "old directories are kept as <stage>.replaced-N)"
    )


def _set_aside(stage_dir: Path) -> Path:
    """Rename a stage directory out of the way (runs are never deleted) and return the new path."""
    i = 1
    while (target := stage_dir.with_name(f"{stage_dir.name}.replaced-{i}")).exists():
        i += 1
    stage_dir.rename(target)
    return target


def check_plan(
    plan: PlanConfig | Sequence[StageConfig],
    output_dir: str | Path,
    *,
    context: Mapping[str, Any] | None = None,
) -> dict[str, list[str]]:
    """Compare every finished stage under ``output_dir`` with ``plan``; ``{stage: changed keys}`` of those
    that differ (empty when every finished stage matches). Reads only JSON: call it before any work."""
    stages = plan.stages if isinstance(plan, PlanConfig) else tuple(plan)
    fps = plan_fingerprints(stages, _plan_context(plan, context))
    out: dict[str, list[str]] = {}
    for stage, fp in zip(stages, fps, strict=True):
        keys = _changes(Path(output_dir) / stage.name, fp)
        if keys:
            out[stage.name] = keys
    return out


def run_plan(
    model: nn.Module,
    plan: PlanConfig | Sequence[StageConfig],
    *,
    collate_fn: CollateFn | Mapping[str, CollateFn],
    output_dir: str | Path,
    resume: bool = True,
    eval_fn: EvalFn | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    allow_changes: Sequence[str] = (),
    context: Mapping[str, Any] | None = None,
    if_changed: str = "error",
) -> PlanResult:
    """Run stages in order, each in ``<output_dir>/<stage name>``; stage ``i + 1`` starts from stage ``i``.

    Stage ``i + 1`` starts from the final trainable weights of stage ``i``: those in memory when stage
    ``i`` just ran (they are what its final checkpoint holds), loaded from its final checkpoint when
    it had finished before, so a plan restarted at any point trains exactly what an uninterrupted
    one trains.

    A finished stage (an intact ``result.json``) is not re-run: its weights are loaded and the plan
    continues. It is *never* skipped when its config changed: every stage's result stores the hash
    of its fingerprint (its config without bookkeeping keys, the hash of the stage before it, and
    ``context``). Before any work, a changed finished stage raises :class:`StageConfigChangedError`
    naming the changed keys (``if_changed="error"``), or (``"rerun"``) its directory and those of
    every later stage are renamed to ``<name>.replaced-N`` (nothing is deleted) and they run again.

    Args:
        collate_fn: one function or a mapping ``{stage name: function}``.
        allow_changes: passed to ``run_stage`` for stages that resume from a checkpoint.
        context: what else the stages' results depend on (e.g. the model's config); default: a
            ``PlanConfig``'s ``extra`` without ``output_dir`` (the CLI's ``[model]`` table).
        if_changed: ``"error"`` (default) or ``"rerun"``.
    """
    if if_changed not in ("error", "rerun"):
        raise ValueError(f"if_changed must be 'error' or 'rerun', got {if_changed!r}")
    stages = plan.stages if isinstance(plan, PlanConfig) else tuple(plan)
    out = Path(output_dir)
    ctx = _plan_context(plan, context)
    fps = plan_fingerprints(stages, ctx)
    changed = check_plan(stages, out, context=ctx) if resume else {}
    if changed and if_changed == "error":
        raise StageConfigChangedError(_describe(changed, out), changes=changed)
    results: list[StageResult] = []
    rerun_from_here = False
    for stage, fp in zip(stages, fps, strict=True):
        stage_dir = out / stage.name
        collate = collate_fn[stage.name] if isinstance(collate_fn, Mapping) else collate_fn
        rerun_from_here = rerun_from_here or stage.name in changed
        if resume and rerun_from_here and stage_dir.exists():
            moved = _set_aside(stage_dir)
            log.warning(
                "stage %r: config changed, earlier run kept in %s; running it again", stage.name, moved
            )
        finished = _finished_result(stage_dir / "result.json") if resume else None
        if finished is not None:
            result = finished
            policy.select(model, stage)  # the structure the stage trained (LoRA adapters), then its weights:
            _load_named(model, ckpt.load_weights(result.weights), what=f"finished stage {stage.name!r}")
            log.info(
                "stage %r already finished at step %d; loaded its weights", stage.name, result.final_step
            )
        else:  # trained in place: the model ends holding exactly the weights of the final checkpoint
            result = run_stage(
                model,
                stage,
                collate_fn=collate,
                output_dir=stage_dir,
                resume=resume,
                eval_fn=eval_fn,
                device=device,
                progress=progress,
                allow_changes=allow_changes,
                fingerprint=fp,
            )
        results.append(result)  # the next stage starts from this stage's final weights
    return PlanResult(stages=results)


def restore_plan(
    model: nn.Module,
    plan: PlanConfig | Sequence[StageConfig],
    output_dir: str | Path,
    *,
    context: Mapping[str, Any] | None = None,
) -> PlanResult:
    """Load a finished plan's weights into ``model`` without training: every stage's structure (LoRA
    adapters) and final trainable weights, in order. For using a trained run (chat, paint, eval).

    Raises ``FileNotFoundError`` naming the first unfinished stage, and :class:`StageConfigChangedError`
    when a stage was trained with another config than ``plan`` says.
    """
    stages = plan.stages if isinstance(plan, PlanConfig) else tuple(plan)
    out = Path(output_dir)
    changed = check_plan(stages, out, context=_plan_context(plan, context))
    if changed:
        raise StageConfigChangedError(_describe(changed, out), changes=changed)
    results: list[StageResult] = []
    for stage in stages:
        done = out / stage.name / "result.json"
        result = _finished_result(done)
        if result is None:
            raise FileNotFoundError(
                f"stage {stage.name!r} has not finished in {out} (no intact {done.name}); train it first"
            )
        policy.select(model, stage)
        _load_named(model, ckpt.load_weights(result.weights), what=f"stage {stage.name!r} ({result.weights})")
        results.append(result)
    return PlanResult(stages=results)
