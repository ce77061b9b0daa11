"""``mpm-bench`` command line: build data, run tasks, render leaderboards.

mpm-bench data emojicap --size 64 --out data/emojicap
mpm-bench run --data data/emojicap --split test --model random --langs en,zh,ja --out runs/random.json
mpm-bench run --data data/emojicap --model my_pkg.adapters:make_model --model-args '{"device": "cpu"}' ...
mpm-bench board runs/*.json --out board/
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from mpm_bench.baselines import OracleBaseline, RandomBaseline
from mpm_bench.emojicap import EmojiCapConfig, build_emojicap, load_emojicap, load_manifest
from mpm_bench.interfaces import Example, Scorer
from mpm_bench.langs import EMOJICAP_LANGS
from mpm_bench.leaderboard import Leaderboard, save_results
from mpm_bench.tasks import TASKS, evaluate


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _resolve_model(spec: str, args_json: str, dataset: Sequence[Example]) -> object:
    """``random``, ``oracle`` or ``package.module:factory`` (called with ``--model-args`` as kwargs)."""
    kwargs: dict[str, Any] = json.loads(args_json) if args_json else {}
    if spec == "random":
        langs = sorted({lang for ex in dataset for lang in ex.names})
        vocab = {lang: sorted({ex.names[lang] for ex in dataset if lang in ex.names}) for lang in langs}
        return RandomBaseline(vocabulary=vocab, **kwargs)
    if spec == "oracle":
        return OracleBaseline(dataset)
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SystemExit(f"--model must be 'random', 'oracle' or 'package.module:factory', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise SystemExit(f"cannot load model factory {spec!r}: {err}") from err
    return factory(**kwargs) if callable(factory) else factory


def _cmd_data(args: argparse.Namespace) -> int:
    if args.dataset != "emojicap":
        raise SystemExit(f"unknown dataset {args.dataset!r}; available: emojicap")
    cfg = EmojiCapConfig(
        size=args.size,
        langs=tuple(_csv(args.langs)),
        seed=args.seed,
        shard_size=args.shard_size,
        limit=args.limit,
        skin_tones=not args.no_skin_tones,
    )
    manifest = build_emojicap(args.out, config=cfg, progress=not args.quiet)
    counts = {name: info["count"] for name, info in manifest["splits"].items()}
    dropped = {reason: info["count"] for reason, info in manifest["dropped"].items()}
    print(
        f"EmojiCap {cfg.size}px -> {args.out}: {manifest['total']} images {counts}, dropped {dropped}, "
        f"{manifest['excluded_skin_tones']} skin-tone variants excluded, {manifest['build_seconds']} s"
    )
    print(manifest["attribution"])
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.data)
    langs = _csv(args.langs) if args.langs else list(manifest["config"]["langs"])
    dataset = load_emojicap(args.data, args.split, langs=langs, limit=args.limit)
    model = _resolve_model(args.model, args.model_args, dataset)
    judge = _resolve_model(args.judge, "", dataset) if args.judge else None
    if judge is not None and not isinstance(judge, Scorer):
        raise SystemExit(f"--judge {args.judge!r} has no score(images, texts) method")
    tasks = _csv(args.tasks)
    options: dict[str, Any] = {
        "classification": {"num_candidates": args.num_candidates, "seed": args.seed},
        "t2i": {"num_candidates": args.num_candidates, "seed": args.seed},
    }
    start = time.perf_counter()
    results = evaluate(
        model, dataset, langs, tasks=tasks, judge=judge, model_name=args.name,
        dataset_name=f"emojicap/{args.split}", **{t: o for t, o in options.items() if t in tasks},
    )  # fmt: skip
    if not results:
        raise SystemExit(f"model {args.model!r} supports none of the tasks {tasks} (no caption/score/paint)")
    save_results(results, args.out)
    print(f"{len(results)} results for {len(dataset)} examples x {len(langs)} languages in "
          f"{time.perf_counter() - start:.1f} s -> {args.out}")  # fmt: skip
    print(Leaderboard(results).to_markdown())
    return 0


def _cmd_board(args: argparse.Namespace) -> int:
    board = Leaderboard.from_files(args.results)
    paths = board.write(args.out, plots=not args.no_plots)
    print(board.to_markdown())
    print(f"wrote {len(paths)} files to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mpm-bench``."""
    parser = argparse.ArgumentParser(prog="mpm-bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="build a dataset (EmojiCap) as webdataset shards")
    data.add_argument("dataset", choices=["emojicap"])
    data.add_argument("--out", required=True, help="output folder")
    data.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    data.add_argument("--langs", default=",".join(EMOJICAP_LANGS), help="comma-separated language codes")
    data.add_argument("--seed", type=int, default=0, help="split seed")
    data.add_argument("--shard-size", type=int, default=1000, help="records per shard")
    data.add_argument("--limit", type=int, default=None, help="keep only this many emoji")
    data.add_argument("--no-skin-tones", action="store_true", help="drop the skin-tone variants")
    data.add_argument("--quiet", action="store_true", help="no progress bar")
    data.set_defaults(func=_cmd_data)

    run = sub.add_parser("run", help="evaluate a model on EmojiCap and save results JSON")
    run.add_argument("--data", required=True, help="EmojiCap folder")
    run.add_argument("--split", default="test")
    run.add_argument("--model", required=True, help="'random', 'oracle' or 'package.module:factory'")
    run.add_argument("--model-args", default="", help="JSON kwargs for the factory")
    run.add_argument("--judge", default="", help="Scorer for t2i (same forms as --model)")
    run.add_argument("--name", default=None, help="model name on the board")
    run.add_argument("--langs", default="", help="comma-separated (default: all in the data)")
    run.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    run.add_argument("--limit", type=int, default=None, help="first N examples of the split")
    run.add_argument("--num-candidates", type=int, default=10)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", required=True, help="results JSON path")
    run.set_defaults(func=_cmd_run)

    board = sub.add_parser("board", help="merge results files into Markdown/HTML/PNG leaderboards")
    board.add_argument("results", nargs="+", help="results JSON files")
    board.add_argument("--out", required=True, help="output folder")
    board.add_argument("--no-plots", action="store_true")
    board.set_defaults(func=_cmd_board)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mpm-bench`` script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (FileNotFoundError, ValueError) as err:
        print(f"mpm-bench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
