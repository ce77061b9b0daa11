"""Build the six wheels (five packages + integration) into ``dist/`` with ``python -m build``.

Usage: ``python tools/build_wheels.py [--out dist] [--check]``. ``--check`` then installs each
wheel alone (``--no-deps``) into a fresh virtualenv that reuses this interpreter's site-packages
for third-party dependencies and imports it, proving every wheel is complete on its own.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECTS = [*sorted((ROOT / "packages").glob("mpm-*")), ROOT / "integration"]


def build(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    wheels: list[Path] = []
    for proj in PROJECTS:
        before = set(out.glob("*.whl"))
        subprocess.run(
            [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(proj)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        new = sorted(set(out.glob("*.whl")) - before) or sorted(
            out.glob(f"{proj.name.replace('-', '_')}-*.whl")
        )
        wheels.append(new[-1])
        print(f"built {new[-1].name}")
    return wheels


def check(wheel: Path) -> None:
    module = wheel.name.split("-")[0].replace("mpm_integration", "mpm")
    with tempfile.TemporaryDirectory() as tmp:
        venv.create(tmp, with_pip=True, system_site_packages=True)
        py = Path(tmp) / "bin" / "python"
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
        code = f"import {module}, pathlib; p = pathlib.Path({module}.__file__); assert '{tmp}' in str(p), p; print({module}.__name__, {module}.__version__)"
        subprocess.run([str(py), "-c", code], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=ROOT / "dist")
    ap.add_argument("--check", action="store_true", help="install each wheel alone and import it")
    args = ap.parse_args()
    wheels = build(args.out)
    if args.check:
        for w in wheels:
            check(w)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
