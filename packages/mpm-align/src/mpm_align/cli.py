"""``mpm-align``: the command line.

    mpm-align report --model PATH --data cldr:territories,emoji --langs en,zh,de,fr,ja --layers all --out DIR
    mpm-align sources

``report`` sweeps every ``--template`` x ``--pooling`` (default: plain text, mean pooling) over the chosen
layers and writes report.md, report.json and PNGs into ``--out``. Errors (an unknown language code, an
empty corpus, unequal lengths, a model path that does not exist) are printed as one line, exit status 2.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from mpm_align.data import SOURCES, check_languages, check_sources, load_corpora
from mpm_align.encoders import POOLINGS, TEMPLATES, SentenceTransformerEncoder, TransformersEncoder
from mpm_align.interfaces import Encoder
from mpm_align.report import HEADLINE, align_report

__all__ = [
    "add_report_arguments",
    "build_encoders",
    "build_parser",
    "check_model_dir",
    "check_report_args",
    "main",
    "parse_layers",
    "run_report",
]


def parse_layers(spec: str) -> list[int] | None:
    """``"all"`` -> ``None``; ``"0,6,-1"`` -> ``[0, 6, -1]``; ``"4-8"`` -> ``[4, 5, 6, 7, 8]``."""
    spec = spec.strip()
    if spec in ("", "all"):
        return None
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        try:
            out.extend(range(int(m.group(1)), int(m.group(2)) + 1) if m else [int(part)])
        except ValueError:
            raise ValueError(f"bad --layers value {part!r}: use 'all', '0,6,-1' or '4-8'") from None
    return out


def _templates(values: Sequence[str] | None) -> dict[str, str | None]:
    if not values:
        return {"plain": None}
    out: dict[str, str | None] = {}
    for i, v in enumerate(values):
        if v in TEMPLATES:
            out[v] = TEMPLATES[v]
        elif "{text}" in v:
            out[f"template{i + 1}"] = v
        else:
            raise ValueError(
                f"--template {v!r} is neither a known name ({', '.join(TEMPLATES)}) nor contains '{{text}}'"
            )
    return out


def add_report_arguments(p: argparse.ArgumentParser, *, model_help: str | None = None) -> None:
    """The ``report`` options (shared with the integrated ``mpm align report``)."""
    p.add_argument(
        "--model", required=True, help=model_help or "a local transformers or sentence-transformers directory"
    )
    p.add_argument(
        "--data",
        default="cldr:territories,emoji",
        help=f"comma-separated sources: {', '.join(SOURCES)}, cldr, pycountry, tsv:PATH, jsonl:PATH, lines:A+B",
    )
    p.add_argument(
        "--langs", default="en,zh,de,fr,ja", help="comma-separated language codes; the first is the pivot"
    )
    p.add_argument("--layers", default="all", help="'all', a list '0,6,-1' or a range '4-8'")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--pooling", default="mean", help=f"comma-separated poolings from {', '.join(POOLINGS)}")
    p.add_argument(
        "--template",
        action="append",
        help=f"a prompt template with {{text}} or a name ({', '.join(TEMPLATES)}); repeat to sweep",
    )
    p.add_argument("--kind", choices=["auto", "transformers", "sentence-transformers"], default="auto")
    p.add_argument("--skip-special-tokens", action="store_true", help="leave BOS/CLS/SEP out of the pooling")
    p.add_argument(
        "--max-pairs", type=int, default=None, help="subsample each language pair to at most N pairs"
    )
    p.add_argument(
        "--drop-identical", action="store_true", help="drop pairs that read the same in both languages"
    )
    p.add_argument("--no-merge", action="store_true", help="keep each source as its own corpus")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-probe", action="store_true", help="skip the language-ID probe and isotropy")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_encoders(model: Any, tokenizer: Any, args: argparse.Namespace, *, name: str) -> dict[str, Encoder]:
    """Every template x pooling variant of one loaded transformers model, from the parsed options."""
    poolings = [p.strip() for p in args.pooling.split(",") if p.strip()]
    base = TransformersEncoder(
        model, tokenizer, name=name, skip_special_tokens=args.skip_special_tokens, progress=not args.quiet
    )
    return dict(base.variants(templates=_templates(args.template), poolings=poolings))


def _encoders_from_path(args: argparse.Namespace) -> tuple[str, Mapping[str, Encoder]]:
    path = Path(args.model)
    kind = check_model_dir(path, args.kind)
    if kind == "sentence-transformers":
        templates = _templates(args.template)
        return path.name, {
            name: SentenceTransformerEncoder.from_pretrained(path, template=t, progress=not args.quiet)
            for name, t in templates.items()
        }
    enc = TransformersEncoder.from_pretrained(path, progress=not args.quiet)
    return path.name, build_encoders(enc.model, enc.tokenizer, args, name=path.name)


def check_report_args(args: argparse.Namespace) -> list[str]:
    """Validate every option that needs no model (languages, data sources and files, poolings,
    templates, layers, sizes, the output directory), so that a bad one fails in a second, not after
    the model has loaded. Returns the language codes."""
    langs = check_languages([code.strip() for code in args.langs.split(",") if code.strip()])
    if len(langs) < 2:
        raise ValueError(f"--langs needs a pivot and at least one other language, got {args.langs!r}")
    check_sources(args.data)
    poolings = [p.strip() for p in args.pooling.split(",") if p.strip()]
    if not poolings:
        raise ValueError(f"--pooling names no pooling ({args.pooling!r}); choose from {', '.join(POOLINGS)}")
    for p in poolings:
        if p not in POOLINGS:
            raise ValueError(f"unknown pooling {p!r}; choose from {', '.join(POOLINGS)}")
    _templates(args.template)
    parse_layers(args.layers)
    if args.max_pairs is not None and args.max_pairs < 2:
        raise ValueError(f"--max-pairs must be at least 2, got {args.max_pairs}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    _check_out_dir(Path(args.out))
    return langs


def _check_out_dir(out: Path) -> None:
    """``--out`` is a directory or can become one (checked up front: it is written last)."""
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a directory")
        parent = out
    else:
        parent = out.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise ValueError(f"--out {out}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out}: {parent} is not writable")


def check_model_dir(path: Path, kind: str) -> str:
    """The kind of model directory at ``path`` (``"transformers"`` or ``"sentence-transformers"``),
    checked before loading: it exists and holds the file that kind needs."""
    if not path.exists():
        raise FileNotFoundError(f"model path does not exist: {path}")
    if not path.is_dir():
        raise ValueError(f"--model {path} is a file; give a model directory")
    has_config = (path / "config.json").is_file()
    has_modules = (path / "modules.json").is_file()
    if kind == "auto":
        if not (has_config or has_modules):
            raise ValueError(
                f"{path} is neither a transformers (config.json) nor a sentence-transformers "
                "(modules.json) model directory"
            )
        return "transformers" if has_config else "sentence-transformers"
    if kind == "transformers" and not has_config:
        raise ValueError(f"{path} is not a transformers model directory (no config.json)")
    if kind == "sentence-transformers" and not (has_modules or has_config):
        raise ValueError(f"{path} is not a sentence-transformers model directory (no modules.json)")
    return kind


def run_report(
    args: argparse.Namespace,
    *,
    encoders: Mapping[str, Encoder] | None = None,
    model_name: str | None = None,
) -> int:
    """Run ``report`` from parsed options; ``encoders`` (e.g. from a model zoo) replace ``--model``."""
    langs = check_report_args(args)
    layers = parse_layers(args.layers)
    if encoders is None:
        check_model_dir(Path(args.model), args.kind)
    corpora = load_corpora(
        args.data,
        langs,
        merge=not args.no_merge,
        drop_identical=args.drop_identical,
        max_pairs=args.max_pairs,
    )
    print(
        f"mpm-align: {len(corpora)} corpora: " + ", ".join(f"{c.name} {c.pair} ({len(c)})" for c in corpora),
        flush=True,
    )
    if encoders is None:
        model_name, encoders = _encoders_from_path(args)
    report = align_report(
        encoders,
        corpora,
        layers,
        batch_size=args.batch_size,
        probe=not args.no_probe,
        model_name=model_name,
        progress=not args.quiet,
    )
    files = report.save(args.out)
    best = report.best_layers([HEADLINE])
    for pair, per in best.items():
        b = per[HEADLINE]
        print(f"  {pair}: best {HEADLINE} {b['value']:.3f} ({b['variant']}, layer {b['layer']})")
    print(f"mpm-align: wrote {', '.join(str(p) for p in files.values())}")
    return 0


class _OneLineErrors(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``mpm-align report: error: ...``) and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(
        prog="mpm-align", description="Per-layer cross-lingual alignment of any encoder or LLM."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    rep = sub.add_parser("report", help="every metric at every layer for every language pair")
    add_report_arguments(rep)
    rep.set_defaults(func=run_report)
    src = sub.add_parser("sources", help="list the built-in parallel-data sources")
    src.set_defaults(func=lambda a: print("\n".join(SOURCES)) or 0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, KeyError) as e:  # OSError: also transformers' "not a model directory"
        print(f"mpm-align: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
