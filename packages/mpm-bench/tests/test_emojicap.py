from __future__ import annotations

import hashlib
import json
import shutil
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mpm_bench.emojicap import (
    EmojiCapConfig,
    EmojiRenderer,
    build_emojicap,
    clean_name,
    emoji_entries,
    emojicap_shards,
    load_emojicap,
    load_manifest,
    merge_groups,
    split_of,
    variant_group,
)

SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))


def test_clean_name() -> None:
    assert clean_name(":thumbs_up:") == "thumbs up"
    assert clean_name(":旗_フィジー:") == "旗 フィジー"
    decomposed = ":cafe\u0301_au_lait:"
    assert clean_name(decomposed) == unicodedata.normalize("NFC", "café au lait")


def test_variant_groups_join_skin_tone_and_gender_variants() -> None:
    thumbs = variant_group("1F44D")
    assert variant_group("1F44D-1F3FD") == thumbs == variant_group("1F44D-1F3FF")
    # technologist / man technologist / woman technologist, with a skin tone
    assert (
        variant_group("1F9D1-200D-1F4BB")
        == variant_group("1F468-1F3FE-200D-1F4BB")
        == variant_group("1F469-200D-1F4BB")
    )
    # person / man / woman running
    assert (
        variant_group("1F3C3")
        == variant_group("1F3C3-200D-2642-FE0F")
        == variant_group("1F3C3-1F3FB-200D-2640-FE0F")
    )
    assert variant_group("1F48F") == variant_group("1F469-200D-2764-FE0F-200D-1F48B-200D-1F468")
    assert variant_group("1F600") != variant_group("1F601")


def test_every_variant_lands_in_the_split_of_its_base_emoji() -> None:
    entries = emoji_entries(["en"])
    assert len(entries) > 3000  # all OpenMoji emoji that the emoji package names
    split = {e.key: split_of(e.group, seed=0, fractions=SPLITS) for e in entries}
    tones = ("-1F3FB", "-1F3FC", "-1F3FD", "-1F3FE", "-1F3FF")
    checked = 0
    for e in entries:
        base = e.key
        for t in tones:
            base = base.replace(t, "")
        if base != e.key and base in split:  # a skin-tone variant whose base emoji exists
            assert split[e.key] == split[base], (e.key, base)
            checked += 1
        for gendered in ("1F468-200D", "1F469-200D"):  # man X / woman X vs person X
            if e.key.startswith(gendered):
                neutral = "1F9D1-200D" + e.key[len(gendered) :]
                if neutral in split:
                    assert split[e.key] == split[neutral], (e.key, neutral)
                    checked += 1
    assert checked > 1000
    groups = Counter(e.group for e in entries)
    assert max(groups.values()) >= 6 and len(groups) < 0.6 * len(entries)
    counts = Counter(split.values())
    assert 0.7 < counts["train"] / len(entries) < 0.9 and counts["test"] > 100
    assert split != {e.key: split_of(e.group, seed=1, fractions=SPLITS) for e in entries}


def test_merge_groups_is_transitive() -> None:
    merged = merge_groups([["b", "c"], ["d", "c"], ["a"], ["x", "y"], ["y"]])
    assert merged == {"a": "a", "b": "b", "c": "b", "d": "b", "x": "x", "y": "x"}


def test_renderer_draws_colour_and_detects_tofu_blank_and_unligated() -> None:
    r = EmojiRenderer(size=32, supersample=2)
    img = r.render("\U0001f44d\U0001f3fd")  # thumbs up: medium skin tone
    assert img.size == (32, 32) and img.mode == "RGB"
    arr = np.asarray(img).reshape(-1, 3)
    colours = {tuple(px) for px in arr if len(set(px)) > 1}  # non-grey pixels
    assert len(colours) > 10
    assert r.check("\u0378") == "tofu"  # unassigned code point -> .notdef
    assert r.check(" ") == "blank"
    assert r.check("\U0001f600\U0001f600") == "unligated"
    assert r.check("\U0001f468\u200d\U0001f469\u200d\U0001f467") is None  # ZWJ family is one glyph
    with pytest.raises(ValueError, match=r"renders .* as tofu"):
        r.render("\u0378")


def test_build_writes_manifest_shards_and_attribution(emojicap_small: tuple[Path, dict[str, Any]]) -> None:
    root, manifest = emojicap_small
    assert manifest == load_manifest(root)
    om = manifest["styles"]["openmoji"]
    assert manifest["concepts"] == 40 - manifest["dropped"]["no_name"]["count"]
    assert (
        om["count"] + om["missing"]["count"]
        == manifest["concepts"]
        == manifest["total"] + om["missing"]["count"]
    )
    assert set(om["missing"]["by_reason"]) <= {"blank", "tofu", "unligated"}
    assert om["identical_images"]["count"] == sum(len(g) for g in om["identical_images"]["groups"])
    assert "OpenMoji" in manifest["attribution"] and om["license"] == "CC BY-SA 4.0"
    assert om["license_file"] == "LICENSE-OpenMoji.txt" and om["attribution"] in manifest["attribution"]
    assert (root / "LICENSE-OpenMoji.txt").read_text().startswith("Attribution-ShareAlike 4.0")
    assert not list(root.glob(".emojicap-*"))  # the temporary build folder is gone
    for split, info in om["splits"].items():
        assert info["langs"] == dict.fromkeys(["en", "zh", "ja", "ko", "de"], info["count"])
        assert all((root / s).is_file() for s in info["shards"])
        assert all(s.startswith(f"emojicap-openmoji-{split}-") for s in info["shards"])
        assert len(info["shards"]) == -(-info["count"] // 8)
        assert manifest["splits"][split]["count"] == info["count"]  # OpenMoji draws every concept here
        assert split in ("train", "val", "test")
    assert EmojiCapConfig.from_json(manifest["config"]) == EmojiCapConfig.from_json(
        json.dumps(manifest["config"])
    )


def test_load_records_and_split_invariants(emojicap_small: tuple[Path, dict[str, Any]]) -> None:
    root, manifest = emojicap_small
    seen: dict[str, str] = {}
    for split in ("train", "val", "test"):
        records = load_emojicap(root, split)
        assert len(records) == manifest["splits"][split]["count"]
        for ex in records:
            assert ex.meta["style"] == "openmoji" and ex.meta["concept"] == ex.key
            assert ex.image.size == (32, 32) and ex.image.mode == "RGB"
            assert set(ex.names) == {"en", "zh", "ja", "ko", "de"}
            assert all(":" not in n and "_" not in n for n in ex.names.values())
            assert ex.meta["split"] == split
            assert seen.setdefault(ex.meta["group"], split) == split  # a group never spans two splits
            assert seen.setdefault("pixels:" + hashlib.sha256(ex.image.tobytes()).hexdigest(), split) == split
    zh_only = load_emojicap(root, "train", langs=["zh"], limit=3)
    assert len(zh_only) == 3 and all(set(ex.names) == {"zh"} for ex in zh_only)
    with pytest.raises(ValueError, match="not available in this dataset"):
        load_emojicap(root, "train", langs=["fr"])
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        load_emojicap(root, "dev")


def test_shards_are_readable_by_webdataset(emojicap_small: tuple[Path, dict[str, Any]]) -> None:
    wds = pytest.importorskip("webdataset")
    root, manifest = emojicap_small
    shards = [str(p) for p in emojicap_shards(root, "train")]
    assert shards == [str(root / s) for s in manifest["styles"]["openmoji"]["splits"]["train"]["shards"]]
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode("pil"))
    assert len(samples) == manifest["splits"]["train"]["count"]
    first = samples[0]
    assert first["png"].size == (32, 32) and set(first["json"]["names"]) == {"en", "zh", "ja", "ko", "de"}
    assert first["__key__"] == first["json"]["key"]


def test_missing_shard_and_missing_manifest_are_clear_errors(
    emojicap_small: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, manifest = emojicap_small
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    victim = manifest["styles"]["openmoji"]["splits"]["train"]["shards"][-1]
    (copy / victim).unlink()
    with pytest.raises(FileNotFoundError, match=f"missing shard .*{victim}"):
        load_emojicap(copy, "train")
    with pytest.raises(FileNotFoundError, match="no EmojiCap manifest"):
        load_emojicap(tmp_path / "nowhere", "train")


def test_build_is_deterministic(tmp_path: Path) -> None:
    styles = ("openmoji", "twemoji", "noto")
    cfg = EmojiCapConfig(size=16, langs=("en", "ar"), limit=12, supersample=1, styles=styles)
    build_emojicap(tmp_path / "a", config=cfg, progress=False)
    build_emojicap(tmp_path / "b", config=cfg, progress=False)
    shards = sorted((tmp_path / "a").glob("*.tar"))
    assert {p.name.split("-")[1] for p in shards} == set(styles)
    for shard in shards:
        assert shard.read_bytes() == (tmp_path / "b" / shard.name).read_bytes(), shard.name
    # Rebuilding into the same folder replaces every shard (no stale ones from the first build).
    build_emojicap(tmp_path / "a", size=16, limit=5, progress=False)
    assert {p.name.split("-")[1] for p in (tmp_path / "a").glob("*.tar")} == {"openmoji"}


def test_without_skin_tones(tmp_path: Path) -> None:
    cfg = EmojiCapConfig(size=16, langs=("en",), limit=30, supersample=1, skin_tones=False)
    manifest = build_emojicap(tmp_path, config=cfg, progress=False)
    assert manifest["excluded_skin_tones"] > 2000 and manifest["available"] < 2000
    names = [ex.names["en"] for split in ("train", "val", "test") for ex in load_emojicap(tmp_path, split)]
    assert len(names) == 30 and not any("skin tone" in n for n in names)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="size must be between 8 and 1024"):
        EmojiCapConfig(size=4)
    with pytest.raises(ValueError, match="not available in this dataset"):
        EmojiCapConfig(langs=("en", "sw"))
    with pytest.raises(ValueError, match="unknown language code"):
        EmojiCapConfig(langs=("en", "klingon"))
    with pytest.raises(ValueError, match=r"unknown EmojiCap style\(s\) \['klingon'\]"):
        EmojiCapConfig(styles=("openmoji", "klingon"))
    with pytest.raises(ValueError, match="must not repeat"):
        EmojiCapConfig(styles=("noto", "noto"))
    assert EmojiCapConfig(styles="twemoji").styles == ("twemoji",)
    cfg = EmojiCapConfig(size=48, langs=("zh", "en"), limit=5)
    assert EmojiCapConfig.from_json(cfg.to_json()) == cfg
