"""``mpm-train``: run a stage or a plan from a TOML/JSON file, alone or under ``torchrun``.

    mpm-train run plan.toml [--output-dir runs/x] [--no-resume] [--device cpu]
    torchrun --nproc_per_node=4 -m mpm_train run plan.toml
    mpm-train check-shards 'data/en-*.tar' [--strict]

The file holds ``[[stages]]`` tables (see ``StageConfig``) and a ``[model]`` table naming the factory
that builds the ``Trainable`` and its collate function (both ``"module:attribute"``)::

    output_dir = "runs/demo"
    [model]
    factory = "my_project.models:build"     # called with **kwargs, returns the model
    kwargs = { size = "tiny" }
    collate = "my_project.models:collate"   # optional when the model has a `collate_fn` attribute

Every subcommand checks its input before any model is built or any shard is read: a bad key,
value, path or shard glob prints one line naming it by its dotted path (``mpm-train: plan.toml:
stages[0].steps: expected an integer, got 'ten' (str)``) and exits with 2. So do a refused resume,
a damaged checkpoint and a stopped stage (NaN, divergence, a source over its skip budget).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError, PlanConfig

MODEL_KEYS = ("factory", "kwargs", "collate")


class UsageError(Exception):
    """A one-line problem with the command line or the config file; the CLI prints it and exits 2."""


def _import(spec: Any, key: str) -> Any:
    """The object named ``"package.module:attribute"``; ``ConfigError`` at ``key`` otherwise."""
    if not isinstance(spec, str):
        raise ConfigError(key, f"expected a string 'package.module:attribute', got {spec!r}")
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(key, f"{spec!r} is not of the form 'package.module:attribute'")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(key, f"cannot import module {module!r} ({exc})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(key, f"module {module!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(key, f"{spec!r} is not callable")
    return obj


def _load_plan(args: argparse.Namespace) -> PlanConfig:
    try:
        plan = PlanConfig.load(args.config)
    except (ConfigError, ValueError, FileNotFoundError) as exc:
        msg = str(exc)  # load_mapping's own errors already name the file
        named = isinstance(exc, FileNotFoundError) or msg.startswith(str(args.config))
        raise UsageError(msg if named else f"{args.config}: {msg}") from None
    if args.stage:
        names = [s.name for s in plan.stages]
        unknown = [s for s in args.stage if s not in names]
        if unknown:
            raise UsageError(f"--stage: unknown stage(s) {unknown}; the plan has {names}")
        plan = PlanConfig(stages=tuple(s for s in plan.stages if s.name in set(args.stage)), extra=plan.extra)
    return plan


def _model_table(plan: PlanConfig) -> dict[str, Any]:
    model_cfg = plan.extra.get("model")
    if model_cfg is None:
        raise ConfigError("model", "missing: add a [model] table with factory = 'package.module:function'")
    if not isinstance(model_cfg, Mapping):
        raise ConfigError("model", f"expected a table, got {model_cfg!r}")
    unknown = [k for k in model_cfg if k not in MODEL_KEYS]
    if unknown:
        raise ConfigError(f"model.{unknown[0]}", f"unknown key; valid keys of [model] are {list(MODEL_KEYS)}")
    if "factory" not in model_cfg:
        raise ConfigError(
            "model.factory", "missing: the function that builds the model, 'package.module:function'"
        )
    if not isinstance(model_cfg.get("kwargs", {}), Mapping):
        raise ConfigError("model.kwargs", f"expected a table, got {model_cfg['kwargs']!r}")
    return dict(model_cfg)


def _preflight(plan: PlanConfig, output_dir: Path) -> None:
    """What would otherwise fail after the model is built: shard globs, init_from paths, batch splits."""
    from .data import expand_shards

    world = int(os.environ.get("WORLD_SIZE", "1"))
    for i, st in enumerate(plan.stages):
        for j, src in enumerate(st.data.sources):
            try:
                expand_shards(src.shards)
            except FileNotFoundError as exc:
                raise ConfigError(f"stages[{i}].data.sources[{j}].shards", str(exc)) from None
        if st.init_from is not None:
            p = Path(st.init_from)
            inside = output_dir.resolve() in p.resolve().parents  # written by an earlier stage of this plan
            if not inside and not (p.is_file() or (p / "model.safetensors").is_file()):
                raise ConfigError(
                    f"stages[{i}].init_from",
                    f"no weights at {p} (a checkpoint directory or .safetensors file)",
                )
        streams = st.data.num_streams or world
        if streams % world:
            raise ConfigError(
                f"stages[{i}].data.num_streams", f"{streams} is not a multiple of the world size {world}"
            )
        if st.batch_size % (streams // world):
            raise ConfigError(
                f"stages[{i}].batch_size",
                f"{st.batch_size} is not divisible by the {streams // world} data streams of each process "
                f"(data.num_streams={streams}, world size {world})",
            )


def _build(model_cfg: Mapping[str, Any]) -> tuple[Any, Callable[..., Any]]:
    factory = _import(model_cfg["factory"], "model.factory")
    kwargs = dict(model_cfg.get("kwargs", {}))
    try:
        inspect.signature(factory).bind(**kwargs)
    except TypeError as exc:
        raise ConfigError("model.kwargs", f"do not fit {model_cfg['factory']}: {exc}") from None
    except ValueError:  # pragma: no cover - builtins without a signature: let the call decide
        pass
    collate = _import(model_cfg["collate"], "model.collate") if model_cfg.get("collate") else None
    model = factory(**kwargs)
    if collate is None:
        collate = getattr(model, "collate_fn", None)
        if not callable(collate):
            raise ConfigError(
                "model.collate", "missing: the model has no collate_fn, give 'package.module:function'"
            )
    return model, collate


def cmd_run(args: argparse.Namespace) -> int:
    from .recipe import run_plan

    plan = _load_plan(args)
    try:
        model_cfg = _model_table(plan)
        output_dir = args.output_dir or plan.extra.get("output_dir")
        if not output_dir:
            raise ConfigError("output_dir", "missing: set output_dir in the config or pass --output-dir")
        if not isinstance(output_dir, str | Path):
            raise ConfigError("output_dir", f"expected a path string, got {output_dir!r}")
        _preflight(plan, Path(output_dir))
        if model_cfg.get("collate") is not None:
            _import(model_cfg["collate"], "model.collate")  # fail before the (slow) model build
    except ConfigError as exc:
        raise UsageError(f"{args.config}: {exc}") from None
    try:
        model, collate = _build(model_cfg)
    except ConfigError as exc:
        raise UsageError(f"{args.config}: {exc}") from None
    try:
        result = run_plan(
            model,
            plan,
            collate_fn=collate,
            output_dir=output_dir,
            resume=not args.no_resume,
            device=args.device,
            progress=not args.no_progress,
            allow_changes=tuple(args.allow_change or ()),
        )
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    for r in result.stages:
        print(
            json.dumps(
                {
                    "stage": r.stage,
                    "final_step": r.final_step,
                    "final_loss": r.final_loss,
                    "checkpoint": str(r.checkpoint),
                    "skipped": r.data.total_skipped,
                }
            )
        )
    return 0


def cmd_check_shards(args: argparse.Namespace) -> int:
    """Read every sample of the shards once and report counts, skipped ones by reason, damaged shards."""
    from .data import scan_shards

    try:
        report = scan_shards(args.shards, require_image=not args.text_only)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps(report, indent=2))
    broken = sum(report["skipped"].values()) or report["damaged"]
    return 1 if broken and args.strict else 0


def _one_line_errors() -> tuple[type[BaseException], ...]:
    """Errors that are about the input (config, checkpoints, data), not bugs: one line, exit 2."""
    from .checkpoint import CheckpointError
    from .data import DataError
    from .recipe import ConfigChangedError, StageStoppedError

    return (
        UsageError,
        ConfigError,
        ConfigChangedError,
        CheckpointError,
        DataError,
        StageStoppedError,
        FileExistsError,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpm-train", description=(__doc__ or "").split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the stages of a TOML/JSON plan (also under torchrun)")
    run.add_argument("config", type=Path)
    run.add_argument("--output-dir", type=Path, default=None)
    run.add_argument("--stage", action="append", help="run only this stage (repeatable)")
    run.add_argument("--no-resume", action="store_true", help="refuse to continue from existing checkpoints")
    run.add_argument(
        "--allow-change",
        action="append",
        metavar="KEY",
        help="resume although this config key (dotted path, e.g. lr or data.sources) changed (repeatable)",
    )
    run.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(func=cmd_run)
    chk = sub.add_parser(
        "check-shards", help="count decodable and skipped samples of shards, find damaged ones"
    )
    chk.add_argument("shards", nargs="+")
    chk.add_argument("--text-only", action="store_true", help="samples need no image")
    chk.add_argument(
        "--strict", action="store_true", help="exit 1 when any sample is skipped or a shard is damaged"
    )
    chk.set_defaults(func=cmd_check_shards)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except _one_line_errors() as exc:
        print(f"mpm-train: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
