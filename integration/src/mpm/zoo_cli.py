"""``mpm zoo``: the offline model zoo -- language models, sentence encoders and vision backbones.

    mpm zoo                      # every entry: kind, weight package installed?, converted?, description
    mpm zoo list --kind vision   # only one kind
    mpm zoo path efficientnet-lite0   # convert once if needed and print the directory

Entries come from :data:`mpm.zoo.ZOO`; nothing is loaded or converted by listing.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any

from mpm import zoo

__all__ = ["register", "zoo_rows"]

_KINDS = ("causal_lm", "encoder", "vision")


def zoo_rows(kind: str | None = None) -> list[dict[str, Any]]:
    """One dict per zoo entry (sorted by name): name, kind, package, installed, converted (ready to
    load without a conversion), description."""
    rows = []
    for name in zoo.list_models():
        entry = zoo.ZOO[name]
        if kind is not None and entry.kind != kind:
            continue
        installed = importlib.util.find_spec(entry.module) is not None
        rows.append(
            {
                "name": name,
                "kind": entry.kind,
                "package": entry.package,
                "installed": installed,
                "converted": zoo.is_ready(name),
                "description": entry.description,
            }
        )
    return rows


def _list(args: argparse.Namespace) -> int:
    rows = zoo_rows(getattr(args, "kind", None))
    print(f"{'name':<24} {'kind':<10} {'installed':<10} {'converted':<10} description")
    for r in rows:
        yes_no = ("yes" if r["installed"] else "no", "yes" if r["converted"] else "no")
        print(f"{r['name']:<24} {r['kind']:<10} {yes_no[0]:<10} {yes_no[1]:<10} {r['description']}")
    print(f"cache: {zoo.cache_dir()}  (mpm zoo path NAME converts one entry; `pip install PACKAGE` adds one)")
    return 0


def _path(args: argparse.Namespace) -> int:
    try:
        print(zoo.zoo_path(args.name, progress=not args.quiet))
    except (KeyError, ModuleNotFoundError, FileNotFoundError, ValueError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"mpm zoo: error: {msg}", file=sys.stderr)
        return 2
    return 0


def register(sub: Any) -> None:
    """Add ``mpm zoo`` (``list``, ``path``) to the ``mpm`` command line."""
    p = sub.add_parser(
        "zoo", help="the offline model zoo: language models, sentence encoders, vision backbones"
    )
    zsub = p.add_subparsers(dest="zoo_command", metavar="SUBCOMMAND")
    ls = zsub.add_parser("list", help="list the zoo entries (the default)")
    ls.add_argument("--kind", choices=_KINDS, default=None, help="only entries of this kind")
    ls.set_defaults(func=_list)
    path = zsub.add_parser("path", help="convert an entry once (if needed) and print its directory")
    path.add_argument("name", help=f"one of {', '.join(zoo.list_models())}")
    path.add_argument("--quiet", action="store_true", help="no progress messages")
    path.set_defaults(func=_path)
    p.set_defaults(func=_list, kind=None)
