"""Scaffold a new mpm microlibrary under ``packages/``.

Usage::

    python tools/new_package.py NAME "One-line description" [DEP ...]

Creates ``packages/mpm-NAME`` with ``pyproject.toml`` (hatchling + hatch-vcs, own tag
``mpm-NAME-vX.Y.Z``), ``src/mpm_NAME/{__init__,interfaces}.py``, ``py.typed``, ``tests/``,
``README.md`` and ``CHANGELOG.md``. Refuses to overwrite an existing package.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PYPROJECT = """\
[build-system]
requires = ["hatchling>=1.27", "hatch-vcs>=0.4"]
build-backend = "hatchling.build"

[project]
name = "mpm-{name}"
dynamic = ["version"]
description = "{description}"
readme = "README.md"
requires-python = ">=3.10"
license = "Apache-2.0"
authors = [{{ name = "mpm developers" }}]
classifiers = [
  "Programming Language :: Python :: 3",
  "Typing :: Typed",
]
dependencies = [
{deps}]

[project.optional-dependencies]
test = ["pytest>=8"]

[tool.hatch.version]
source = "vcs"
fallback-version = "0.0.0"
tag-pattern = "^mpm-{name}-v(?P<version>.+)$"
raw-options.root = "../.."
raw-options.scm.git.describe_command = ["git", "describe", "--dirty", "--tags", "--long", "--match", "mpm-{name}-v*"]

[tool.hatch.build.targets.wheel]
packages = ["src/mpm_{mod}"]
"""

INIT = '''"""mpm-{name}: {description}"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mpm-{name}")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
'''

INTERFACES = '''"""Public contracts of mpm-{name}: the protocols it consumes and the dataclasses it produces.

This package imports no other mpm package; ``integration/`` wires packages together through
these shapes.
"""

from __future__ import annotations
'''

CHANGELOG = """\
# Changelog — mpm-{name}

All notable changes to this package. Versions come from git tags `mpm-{name}-vX.Y.Z`.

## Unreleased
- Package created.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", help="short name, e.g. 'align' -> packages/mpm-align, import mpm_align")
    parser.add_argument("description")
    parser.add_argument("deps", nargs="*", help="runtime dependencies as version ranges")
    args = parser.parse_args(argv)
    name: str = args.name
    if not name.replace("_", "").replace("-", "").isalnum() or name != name.lower():
        parser.error(f"package name {name!r} must be lower-case letters, digits, '-' or '_'")
    mod = name.replace("-", "_")
    pkg = ROOT / "packages" / f"mpm-{name}"
    if pkg.exists():
        print(f"error: {pkg} already exists", file=sys.stderr)
        return 1
    fmt = {"name": name, "mod": mod, "description": args.description}
    src = pkg / "src" / f"mpm_{mod}"
    (pkg / "tests").mkdir(parents=True)
    src.mkdir(parents=True)
    deps = "".join(f'  "{d}",\n' for d in args.deps)
    (pkg / "pyproject.toml").write_text(PYPROJECT.format(deps=deps, **fmt))
    (src / "__init__.py").write_text(INIT.format(**fmt))
    (src / "interfaces.py").write_text(INTERFACES.format(**fmt))
    (src / "py.typed").write_text("")
    (pkg / "README.md").write_text(
        f"# mpm-{name}\n\n{args.description}\n\n```bash\npip install mpm-{name}\n```\n"
    )
    (pkg / "CHANGELOG.md").write_text(CHANGELOG.format(**fmt))
    print(f"created {pkg.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
