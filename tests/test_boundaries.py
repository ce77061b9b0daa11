"""Packages stay independent: no mpm package imports (or depends on) another."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["mpm-align", "mpm-vision", "mpm-paint", "mpm-train", "mpm-bench"]


def _checker():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("check_boundaries", ROOT / "tools" / "check_boundaries.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["check_boundaries"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_repository_has_no_boundary_violations() -> None:
    violations = _checker().check_all(ROOT)
    assert violations == [], "\n".join(map(str, violations))


def test_checker_catches_every_import_form(tmp_path: Path) -> None:
    src = tmp_path / "packages" / "mpm-foo" / "src" / "mpm_foo"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text(
        "import mpm_foo.x\n"  # own package: fine
        "import mpm_bar\n"
        "from mpm_baz.sub import thing\n"
        "def f():\n    import mpm\n"
        "import importlib\nimportlib.import_module('mpm_qux')\n"
    )
    (tmp_path / "packages" / "mpm-foo" / "pyproject.toml").write_text(
        '[project]\nname = "mpm-foo"\ndependencies = ["torch>=2", "mpm-bar>=0.1"]\n'
    )
    found = sorted(v.imported for v in _checker().check_all(tmp_path))
    assert found == ["dependency mpm-bar>=0.1", "mpm", "mpm_bar", "mpm_baz.sub", "mpm_qux"]


def test_every_package_has_the_standard_layout() -> None:
    for name in PACKAGES:
        pkg = ROOT / "packages" / name
        mod = "mpm_" + name.removeprefix("mpm-")
        for rel in [
            "pyproject.toml",
            "README.md",
            "CHANGELOG.md",
            "tests",
            f"src/{mod}/__init__.py",
            f"src/{mod}/interfaces.py",
            f"src/{mod}/py.typed",
        ]:
            assert (pkg / rel).exists(), f"{name} is missing {rel}"
        text = (pkg / "pyproject.toml").read_text()
        assert f'tag-pattern = "^{name}-v' in text, f"{name} must version from its own tag {name}-vX.Y.Z"
        assert "fallback-version" in text


def test_integration_is_not_for_upload() -> None:
    text = (ROOT / "integration" / "pyproject.toml").read_text()
    assert "Private :: Do Not Upload" in text
    assert 'mpm = "mpm.cli:main"' in text
