"""The ``mpm`` command line.

Subcommands are registered by the modules of this package; ``mpm --help`` lists them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Each entry is "module:register" where register(subparsers) adds one or more subcommands.
_COMMANDS = ["mpm.demo:register", "mpm.align_cli:register", "mpm.zoo_cli:register"]


def build_parser() -> argparse.ArgumentParser:
    from mpm import __version__

    parser = argparse.ArgumentParser(
        prog="mpm", description="mpm: multilingual multimodal models by pivoting through English."
    )
    parser.add_argument("--version", action="version", version=f"mpm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in _COMMANDS:
        mod_name, func = entry.split(":")
        getattr(importlib.import_module(mod_name), func)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
