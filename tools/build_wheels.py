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
            [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(proj)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        new = sorted(set(out.glob("*.whl")) - before) or sorted(
            out.glob(f"{proj.name.replace('-', '_')}-*.whl")
        )
        wheels.append(new[-1])
        print(f"built {new[-1].name}")
    return wheels


def check(wheel: Path, all_wheels: list[Path]) -> None:
    """Install ``wheel`` alone (``--no-deps``) into a fresh virtualenv and import it there.

    Third-party dependencies come from this interpreter's site-packages through a plain path entry
    (so the pinned torch is not reinstalled per wheel); a plain path entry does not process the
    ``.pth`` files of editable installs, so sibling mpm packages stay invisible unless installed. The
    integration wheel gets the five package wheels too (they are its dependencies).
    """
    import sysconfig

    module = wheel.name.split("-")[0].replace("mpm_integration", "mpm")
    with tempfile.TemporaryDirectory() as tmp:
        venv.create(tmp, with_pip=True)
        py = Path(tmp) / "bin" / "python"
        site = subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        Path(site, "_third_party.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        to_install = [str(wheel)]
        if module == "mpm":
            to_install += [str(w) for w in all_wheels if w != wheel]
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", *to_install], check=True)
        siblings = (
            []
            if module == "mpm"
            else [
                m
                for m in ("mpm_align", "mpm_vision", "mpm_paint", "mpm_train", "mpm_bench", "mpm")
                if m != module
            ]
        )
        code = (
            "import importlib, importlib.util, pathlib\n"
            f"m = importlib.import_module({module!r})\n"
            f"assert pathlib.Path(m.__file__).is_relative_to({tmp!r}), m.__file__\n"
            f"leaked = [s for s in {siblings!r} if importlib.util.find_spec(s)]\n"
            "assert not leaked, f'siblings importable: {leaked}'\n"
            "print(f'{m.__name__} {m.__version__} imports alone')\n"
        )
        subprocess.run([str(py), "-c", code], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=ROOT / "dist")
    ap.add_argument("--check", action="store_true", help="install each wheel alone and import it")
    args = ap.parse_args()
    wheels = build(args.out)
    if args.check:
        for w in wheels:
            check(w, wheels)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
