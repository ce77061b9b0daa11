"""The ``mpm`` command line.

Subcommands are registered by the modules of this package; ``mpm --help`` lists them. A bad argument
is reported as one line (``mpm <command>: error: ...``) with exit status 2, before any model loads.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

# A shared CPU: OpenMP threads that spin-wait for work made torch steps 10-30x slower when other
# processes competed for the cores (../shared/SCIENCE.md); PASSIVE lets idle threads sleep. It must be
# set before torch loads, so here, before any command module is imported. An explicit value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# "module:register" -> the subcommands its register(subparsers) adds. Only the module of the command
# being run is imported (mpm align imports torch at once; mpm demo must fail on a bad key at once).
_COMMANDS = {
    "mpm.demo:register": ("demo",),
    "mpm.commands:register": ("train", "eval", "chat", "paint"),
    "mpm.align_cli:register": ("align",),
    "mpm.zoo_cli:register": ("zoo",),
    "mpm.serve:register": ("serve",),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block): ``mpm demo: error: ...``, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``mpm`` parser; with ``command``, only the module that registers that subcommand is loaded."""
    from mpm import __version__

    parser = _Parser(
        prog="mpm", description="mpm: multilingual multimodal models by pivoting through English."
    )
    parser.add_argument("--version", action="version", version=f"mpm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry, names in _COMMANDS.items():
        if command is not None and command not in names:
            continue
        mod_name, func = entry.split(":")
        getattr(importlib.import_module(mod_name), func)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    known = {name for names in _COMMANDS.values() for name in names}
    parser = build_parser(argv[0] if argv and argv[0] in known else None)
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may come after flags; anything else is an error
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
