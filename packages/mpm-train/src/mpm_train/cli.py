"""``mpm-train``: run a stage or a plan from a TOML/JSON file, alone or under ``torchrun``.

    mpm-train run plan.toml [--output-dir runs/x] [--no-resume] [--device cpu]
    torchrun --nproc_per_node=4 -m mpm_train run plan.toml
    mpm-train check-shards 'data/en-*.tar'

The file holds ``[[stages]]`` tables (see ``StageConfig``) and a ``[model]`` table naming the factory
that builds the ``Trainable`` and its collate function (both ``"module:attribute"``)::

    output_dir = "runs/demo"
    [model]
    factory = "my_project.models:build"     # called with **kwargs, returns the model
    kwargs = { size = "tiny" }
    collate = "my_project.models:collate"   # optional when the model has a `collate_fn` attribute
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import DataConfig, DataSource, PlanConfig


def _import(spec: str) -> Any:
    module, sep, attr = spec.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{spec!r} is not of the form 'package.module:attribute'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def cmd_run(args: argparse.Namespace) -> int:
    from .recipe import NonFiniteLossError, run_plan

    plan = PlanConfig.load(args.config)
    if args.stage:
        wanted = set(args.stage)
        unknown = wanted - {s.name for s in plan.stages}
        if unknown:
            raise SystemExit(
                f"unknown stage(s) {sorted(unknown)}; the plan has {[s.name for s in plan.stages]}"
            )
        plan = PlanConfig(stages=tuple(s for s in plan.stages if s.name in wanted), extra=plan.extra)
    model_cfg = plan.extra.get("model")
    if not isinstance(model_cfg, dict) or "factory" not in model_cfg:
        raise SystemExit(f"{args.config}: needs a [model] table with factory = 'module:function'")
    model = _import(model_cfg["factory"])(**model_cfg.get("kwargs", {}))
    collate = (
        _import(model_cfg["collate"]) if model_cfg.get("collate") else getattr(model, "collate_fn", None)
    )
    if not callable(collate):
        raise SystemExit(
            f"{args.config}: give [model] collate = 'module:function' (the model has no collate_fn)"
        )
    output_dir = args.output_dir or plan.extra.get("output_dir")
    if not output_dir:
        raise SystemExit("no output directory: pass --output-dir or set output_dir in the config")
    try:
        result = run_plan(
            model,
            plan,
            collate_fn=collate,
            output_dir=output_dir,
            resume=not args.no_resume,
            device=args.device,
            progress=not args.no_progress,
        )
    except NonFiniteLossError as exc:
        print(f"mpm-train: {exc}", file=sys.stderr)
        return 2
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
    """Read every sample of the shards once and report counts, skipped ones by reason."""
    from .data import DataStream, expand_shards

    paths = expand_shards(args.shards)
    data = DataConfig(
        sources=(DataSource(name="check", shards=tuple(paths)),),
        shuffle_buffer=0,
        require_image=not args.text_only,
    )
    stream = DataStream(data, stream=0, num_streams=1, seed=0)
    src = stream.sources[0]
    from .data import decode_sample

    while src.epoch == 0:
        raw = src.next_raw()
        if src.epoch > 0:
            break
        sample, reason = decode_sample(raw, source="check", require_image=data.require_image)
        if sample is None:
            stream._stats.skip(reason or "unknown", "check")
        else:
            stream._stats.ok("check")
    st = stream.stats
    print(json.dumps({"shards": len(paths), "samples": st.samples, "skipped": st.skipped}, indent=2))
    return 1 if st.total_skipped and args.strict else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mpm-train", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the stages of a TOML/JSON plan (also under torchrun)")
    run.add_argument("config", type=Path)
    run.add_argument("--output-dir", type=Path, default=None)
    run.add_argument("--stage", action="append", help="run only this stage (repeatable)")
    run.add_argument("--no-resume", action="store_true", help="refuse to continue from existing checkpoints")
    run.add_argument("--device", default=None, help="auto (default), cpu, cuda")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(func=cmd_run)
    chk = sub.add_parser("check-shards", help="count decodable and skipped samples of shards")
    chk.add_argument("shards", nargs="+")
    chk.add_argument("--text-only", action="store_true", help="samples need no image")
    chk.add_argument("--strict", action="store_true", help="exit 1 when any sample is skipped")
    chk.set_defaults(func=cmd_check_shards)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
