"""``mpm align``: mpm-align's report on zoo models (by name) or local model directories.

    mpm align report --model gemma3-270m --data cldr:territories,emoji --langs en,zh,de --layers all \\
        --pooling mean,last --template plain --template translate-en --out out/gemma
    mpm align models

A ``--model`` that names a zoo model (see ``mpm.zoo.list_models()``) is loaded offline from its pip
package (converted and cached once); anything else is treated as a local path, as ``mpm-align`` does.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mpm import zoo
from mpm_align.cli import add_report_arguments, build_encoders, check_report_args, run_report

__all__ = ["register", "run_align_report"]


def run_align_report(args: argparse.Namespace) -> int:
    """``mpm align report``: resolve a zoo name, build the encoder variants and run mpm-align's report."""
    try:
        check_report_args(args)
        if args.model in zoo.ZOO:
            entry = zoo.zoo_entry(args.model)
            if entry.kind == "causal_lm":
                model, tokenizer = zoo.load_causal_lm(entry.name)
            else:
                model, tokenizer = zoo.load_encoder(entry.name)
            if not args.template and entry.prompt_prefix:  # e5 expects "query: " before every input
                args.template = [entry.prompt_prefix + "{text}"]
            encoders = build_encoders(model, tokenizer, args, name=entry.name)
            return run_report(args, encoders=encoders, model_name=entry.name)
        return run_report(args)
    except FileNotFoundError as e:
        msg = str(e)
        if "model path does not exist" in msg:
            msg += f" (and it is not a zoo model: {', '.join(zoo.list_models())})"
        print(f"mpm align: error: {msg}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, ModuleNotFoundError) as e:
        print(f"mpm align: error: {e}", file=sys.stderr)
        return 2


def _list_models(args: argparse.Namespace) -> int:
    for name in zoo.list_models():
        e = zoo.ZOO[name]
        print(f"{name:<24} {e.kind:<10} {e.description}")
    return 0


def register(sub: Any) -> None:
    """Add ``mpm align`` (with ``report`` and ``models``) to the ``mpm`` command line."""
    p = sub.add_parser("align", help="cross-lingual alignment per layer (mpm-align) of zoo or local models")
    asub = p.add_subparsers(dest="align_command", metavar="SUBCOMMAND")
    rep = asub.add_parser("report", help="every alignment metric at every layer for every language pair")
    add_report_arguments(
        rep, model_help=f"a zoo model ({', '.join(zoo.list_models())}) or a local model directory"
    )
    rep.set_defaults(func=run_align_report)
    models = asub.add_parser("models", help="list the zoo models")
    models.set_defaults(func=_list_models)
    p.set_defaults(func=lambda a: p.print_help() or 2)
