"""Prove that no mpm package imports another mpm package.

Scans every ``packages/*/src/**/*.py`` with :mod:`ast` (imports inside functions, ``try`` blocks and
``TYPE_CHECKING`` guards included) and every ``pyproject.toml`` dependency list. Only
``integration/`` and ``tests/`` may import several packages.

Run: ``python tools/check_boundaries.py`` (exit 1 and a list of violations when any exist).
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
MPM_MODULE = re.compile(r"^(mpm_[a-z0-9_]+|mpm)$")


@dataclass(frozen=True)
class Violation:
    path: Path
    line: int
    imported: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.imported!r}, another mpm package"


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Name, ast.Attribute))
            and getattr(node.func, "id", getattr(node.func, "attr", "")) in {"import_module", "__import__"}
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def check_package(pkg_dir: Path) -> list[Violation]:
    """Violations of one package directory (``packages/mpm-x``)."""
    own = "mpm_" + pkg_dir.name.removeprefix("mpm-").replace("-", "_")
    out: list[Violation] = []
    for py in sorted((pkg_dir / "src").rglob("*.py")):
        tree = ast.parse(py.read_text(encoding="utf-8"), filename=str(py))
        for line, mod in _imported_modules(tree):
            top = mod.split(".")[0]
            if MPM_MODULE.match(top) and top != own:
                out.append(Violation(py, line, mod))
    pyproject = pkg_dir / "pyproject.toml"
    if pyproject.exists():
        meta = tomllib.loads(pyproject.read_text())["project"]
        deps = list(meta.get("dependencies", []))
        for extra in meta.get("optional-dependencies", {}).values():
            deps += extra
        for dep in deps:
            name = re.split(r"[\s\[<>=!~;]", dep, maxsplit=1)[0].lower().replace("_", "-")
            if name.startswith("mpm-") or name == "mpm":
                out.append(Violation(pyproject, 0, f"dependency {dep}"))
    return out


def check_all(root: Path = ROOT) -> list[Violation]:
    out: list[Violation] = []
    for pkg in sorted((root / "packages").glob("mpm-*")):
        out += check_package(pkg)
    return out


def main() -> int:
    violations = check_all()
    for v in violations:
        print(v)
    n = len(list((ROOT / "packages").glob("mpm-*")))
    print(f"checked {n} packages: {len(violations)} boundary violations")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
