"""The stage recipe: ``run_stage`` reads top to bottom as the training loop it is.

    model (Trainable) --stage_parameters--> what trains          (everything else frozen)
    ShardReader       --collate_fn-------->  batch               (the model side's collate)
    for step: accumulate micro-batches -> all-reduce loss -> clip -> optimizer -> scheduler
              log (JSONL, TensorBoard, tqdm) / eval / checkpoint (atomic, keep last N)

The same code runs in one process and under ``torchrun`` (DDP or FSDP2); see ``distributed.py``.
"""

from __future__ import annotations

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
from .config import LoraSpec, PlanConfig, StageConfig
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


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm) became NaN/inf; the stage stopped before the optimizer step.

    ``last_checkpoint`` is the newest good checkpoint (``None`` when none was written yet).
    """

    def __init__(self, message: str, *, step: int, last_checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.last_checkpoint = last_checkpoint


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


def apply_lora(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Inject peft LoRA adapters into ``model`` (idempotent); returns the adapter parameter names."""
    existing = [n for n, _ in model.named_parameters() if "lora_" in n]
    if existing:
        return existing
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise ImportError("LoRA stages need peft: pip install 'mpm-train[peft]'") from exc
    targets: Any = spec.target_modules if isinstance(spec.target_modules, str) else list(spec.target_modules)
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets)
    inject_adapter_in_model(config, model)
    names = [n for n, _ in model.named_parameters() if "lora_" in n]
    if not names:
        raise ValueError(f"LoRA target_modules {spec.target_modules!r} matched no module of the model")
    return names


def select_trainable(model: nn.Module, stage: str, extra: Sequence[str] = ()) -> list[str]:
    """Freeze everything but ``model.stage_parameters(stage)`` (+ ``extra`` names); returns trainable names."""
    named = dict(model.named_parameters())
    by_id = {id(p): n for n, p in named.items()}
    chosen: set[str] = set(extra)
    for item in model.stage_parameters(stage):  # type: ignore[operator]
        p = item[1] if isinstance(item, tuple) else item
        if id(p) not in by_id:
            raise ValueError(
                f"stage {stage!r}: stage_parameters() returned a parameter that is not in "
                "model.named_parameters()"
            )
        chosen.add(by_id[id(p)])
    if not chosen:
        raise ValueError(f"stage {stage!r}: model.stage_parameters({stage!r}) returned no parameters")
    for name, p in named.items():
        p.requires_grad_(name in chosen)
    return [n for n in named if n in chosen]


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


def _param_groups(
    named: Sequence[tuple[str, nn.Parameter]], weight_decay: float
) -> tuple[list[dict[str, Any]], list[str]]:
    """Weight decay on matrices only (not on biases and norm scales); returns groups and name order."""
    decay = [(n, p) for n, p in named if p.dim() >= 2]
    no_decay = [(n, p) for n, p in named if p.dim() < 2]
    groups = [
        g
        for g in (
            {"params": [p for _, p in decay], "weight_decay": weight_decay},
            {"params": [p for _, p in no_decay], "weight_decay": 0.0},
        )
        if g["params"]
    ]
    return groups, [n for n, _ in decay] + [n for n, _ in no_decay]


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
) -> StageResult:
    """Train ``model`` for one stage; works alone and under ``torchrun`` (DDP or FSDP2).

    Args:
        model: an ``nn.Module`` satisfying ``Trainable``; trained in place.
        config: the stage (``StageConfig``).
        collate_fn: the model side's ``list[sample] -> batch`` (see ``interfaces.CollateFn``).
        output_dir: where ``checkpoints/``, ``metrics.jsonl``, ``config.json`` and ``result.json`` go.
        resume: ``True`` resumes from the newest checkpoint in ``output_dir`` when there is one
            (fresh start otherwise); ``False`` refuses to run over existing checkpoints; a path
            resumes from that checkpoint directory.
        eval_fn: called as ``eval_fn(model)`` (eval mode, ``torch.no_grad``) every ``config.eval_every`` steps
            and at the end, on every rank; its numbers are logged under ``eval/``.
        device: ``None``/``"auto"`` (this rank's GPU if any, else CPU), ``"cpu"``, ``"cuda"``...
        progress: show the tqdm bar (rank 0 only).

    Returns:
        ``StageResult`` (identical on every rank). Raises ``NonFiniteLossError`` when the loss or
        gradient norm becomes NaN/inf; the checkpoints written before stay.
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
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        ckpt.remove_partial(out)
        config.to_json(out / "config.json")
    barrier()
    start_from = _resume_point(out, resume) if info.is_main else None
    start_from = broadcast_object(start_from)
    set_seed(config.seed + info.rank)

    # -- 2. what trains --------------------------------------------------------------------------------
    lora_names = apply_lora(model, config.lora) if config.lora is not None else []
    select_trainable(model, config.name, extra=lora_names)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model.to(info.device)
    state: dict[str, Any] | None = None
    optim_tensors: dict[str, torch.Tensor] = {}
    optim_meta: dict[str, Any] = {}
    if start_from is not None:
        weights, optim_tensors, optim_meta, state = ckpt.read_checkpoint(start_from)
        _load_named(model, weights, what=f"checkpoint {start_from}")
    elif config.init_from:
        _load_named(model, ckpt.load_weights(config.init_from), what=f"init_from {config.init_from}")

    mixed = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
    wrapped = wrap_model(
        model, strategy=strategy, info=info, mixed_precision=mixed if strategy == "fsdp" else None
    )
    trainable = [
        (n, p) for n, p in model.named_parameters() if p.requires_grad
    ]  # after wrapping (FSDP swaps)
    groups, names = _param_groups(trainable, config.weight_decay)
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
    reader = ShardReader(config.data, seed=config.seed, rank=info.rank, world_size=info.world_size)

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
            }
        )

    checkpoint_s = 0.0

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
            ckpt.prune_checkpoints(out, config.keep_last)
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
            model.train()
        if metrics is not None:
            metrics.log({"step": step, "eval": result})
        return result

    # -- 4. the loop -----------------------------------------------------------------------------------
    model.train()
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
    last_path = ckpt.latest_checkpoint(out) if start_from is not None else None
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
            if not math.isfinite(step_loss):
                _stop_non_finite(config, step, f"loss is {step_loss}", out, metrics)
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = None
            if config.max_grad_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
                if scaler is None and not math.isfinite(grad_norm):
                    _stop_non_finite(config, step, f"gradient norm is {grad_norm}", out, metrics)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            lr = scheduler.get_last_lr()[0]
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
    )
    if info.is_main:
        result.to_json(out / "result.json")
    barrier()
    return result


def _resume_point(out: Path, resume: bool | str | Path) -> Path | None:
    if isinstance(resume, str | Path) and not isinstance(resume, bool):
        p = Path(resume)
        if not (p / ckpt.TRAINER_STATE).is_file():
            raise FileNotFoundError(f"resume={str(resume)!r} is not a complete checkpoint directory")
        return p
    latest = ckpt.latest_checkpoint(out)
    if latest is not None and not resume:
        raise FileExistsError(
            f"{out} already holds checkpoints (newest {latest.name}); pass resume=True to "
            "continue from it, or use a fresh output_dir"
        )
    return latest if resume else None


def _stop_non_finite(
    config: StageConfig, step: int, what: str, out: Path, metrics: MetricsLogger | None
) -> None:
    last = ckpt.latest_checkpoint(out)
    msg = (
        f"stage {config.name!r} stopped at step {step}: {what}. No update was applied for this step. "
        f"Last good checkpoint: {last if last is not None else 'none written yet'}. "
        "Try a lower lr, gradient clipping (max_grad_norm), fp32, or check the data."
    )
    if metrics is not None:
        metrics.log({"step": step, "event": "non_finite", "message": msg})
    log.error(msg)
    raise NonFiniteLossError(msg, step=step, last_checkpoint=last)


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
) -> PlanResult:
    """Run stages in order, each in ``<output_dir>/<stage name>``; stage ``i + 1`` starts from stage ``i``.

    The model is trained in place, so the next stage starts from the weights the previous stage
    ended with. A finished stage (``result.json`` present) is not re-run on a restarted plan: its
    final trainable weights are loaded instead and the plan continues. ``collate_fn`` may be one
    function or a mapping ``{stage name: function}``.
    """
    stages = plan.stages if isinstance(plan, PlanConfig) else tuple(plan)
    results: list[StageResult] = []
    for stage in stages:
        stage_dir = Path(output_dir) / stage.name
        collate = collate_fn[stage.name] if isinstance(collate_fn, Mapping) else collate_fn
        done = stage_dir / "result.json"
        if resume and done.is_file():
            result = StageResult.load(done)
            if stage.lora is not None:
                apply_lora(model, stage.lora)
            _load_named(model, ckpt.load_weights(result.weights), what=f"finished stage {stage.name!r}")
            log.info(
                "stage %r already finished at step %d; loaded its weights", stage.name, result.final_step
            )
        else:
            result = run_stage(
                model,
                stage,
                collate_fn=collate,
                output_dir=stage_dir,
                resume=resume,
                eval_fn=eval_fn,
                device=device,
                progress=progress,
            )
        results.append(result)
    return PlanResult(stages=results)
