"""``mpm demo``: the main job, the MPM recipe on EmojiCap with a real pivot LLM, end to end.

    mpm demo                                   # the default preset (integration/configs/default.toml)
    mpm demo --preset smoke                    # tiny models, seconds (the test suite runs it)
    mpm demo --preset default model.bridge.kind=perceiver model.bridge.num_queries=16
    mpm demo --config outputs/demo/config.toml # reproduce a run from its resolved config

What runs (``mpm.recipe``, readable top to bottom): EmojiCap shards -> the pivot's cross-lingual
alignment (mpm-align) -> chat stages (``align`` on English names, ``instruct`` on English instructions
plus a share of translated ones) and the paint stage, each a per-part policy trained by mpm-train ->
zero-shot evaluation in every language (mpm-bench) -> leaderboard with transfer ratios next to the
pivot's alignment, ablations on the same board. Re-running resumes; ``--fresh`` starts over (the
old run is kept aside). The default step counts are a smoke, far below the paper's budget: read
the numbers against the random baseline on the same board. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["register"]


def overrides_from_flags(args: argparse.Namespace) -> list[str]:
    """The shorthand flags as ``key=value`` overrides (applied before the explicit ones)."""
    out: list[str] = []
    for flag, key in (
        ("out", "run.out_dir"),
        ("langs", "run.langs"),
        ("limit", "data.limit"),
        ("eval_split", "eval.split"),
        ("eval_items", "eval.items"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={value}")
    if getattr(args, "no_ablation", False):
        out.append("ablations={}")
    for name in getattr(args, "ablation", None) or []:
        out += [f"ablations.{name}.model.lm.name={name}", f"ablations.{name}.stages.paint.enabled=false"]
    return out


def run_cli(args: argparse.Namespace, *, evaluation: bool) -> int:
    """``mpm demo`` / ``mpm train``: load and check the config (one-line error, exit 2), then run."""
    from mpm.config import ConfigError, load_config

    given = [r for r in (getattr(args, "preset", None), getattr(args, "config_pos", None), args.config) if r]
    if len(given) > 1:
        print(
            f"mpm {args.command}: error: give one config (a preset or --config), got {given}", file=sys.stderr
        )
        return 2
    ref = given[0] if given else None
    try:
        cfg = load_config(ref, [*overrides_from_flags(args), *args.overrides])
        from mpm.recipe import run_recipe  # torch and the models: only once the config is known to be good

        run_recipe(
            cfg,
            fresh=args.fresh,
            if_changed="rerun" if args.rerun_changed else "error",
            evaluation=evaluation,
        )
    except ConfigError as err:
        print(f"mpm {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments shared by ``mpm demo`` and ``mpm train``."""
    p.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. stages.align.steps=200"
    )
    p.add_argument("--config", help="a config file (e.g. a run's config.toml) instead of a preset")
    p.add_argument(
        "--fresh", action="store_true", help="start over: an existing run directory is renamed aside"
    )
    p.add_argument(
        "--rerun-changed",
        action="store_true",
        help="re-run finished stages whose config changed (their old directories are kept) instead of stopping",
    )
    p.add_argument("--out", help="shorthand for run.out_dir=...")
    p.add_argument("--langs", help="shorthand for run.langs=... (comma-separated codes)")
    p.add_argument("--limit", type=int, help="shorthand for data.limit=... (how many emoji; 0 = all)")
    p.add_argument(
        "--eval-split", help="shorthand for eval.split=... (test: unseen emoji, train: trained ones)"
    )
    p.add_argument("--eval-items", type=int, help="shorthand for eval.items=...")
    p.add_argument(
        "--ablation",
        action="append",
        metavar="ZOO_LM",
        help="add an ablation pivot (e.g. smollm2-135m), paint off",
    )
    p.add_argument("--no-ablation", action="store_true", help="drop the config's ablations")


def register(sub: Any) -> None:
    """Add ``mpm demo`` to the ``mpm`` command line."""
    p = sub.add_parser(
        "demo",
        help="the main job: the MPM recipe end to end on EmojiCap (default preset)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--preset", help="smoke, default (the default), full or a variant (see integration/configs)"
    )
    add_run_arguments(p)
    p.set_defaults(func=lambda a: run_cli(a, evaluation=True))
