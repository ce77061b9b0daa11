"""Build the full EmojiCap (every OpenMoji emoji the ``emoji`` package names, 14 languages) in the
three styles (OpenMoji, Twemoji, Noto) and report time, counts per split, per-style coverage, what
each style misses, and the split invariants (a variant group, a picture and a concept never span two
splits, in any style).

Also renders the same emoji with Pillow's basic layout (no raqm) as the reference renderer, to
show what raqm's shaping buys: how many multi-code-point emoji (ZWJ sequences, flags, skin tones)
collapse to one glyph with raqm but not without it.

Run: ``python benchmarks/bench/bench_emojicap.py [--sizes 32,64] [--styles openmoji,twemoji,noto]
[--out-dir DIR]``; writes
``benchmarks/results/bench_emojicap.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from PIL import ImageFont

from mpm_bench import build_emojicap, load_emojicap
from mpm_bench.emojicap import EmojiCapConfig, emoji_entries, openmoji_dir

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,64")
    parser.add_argument("--styles", default="openmoji,twemoji,noto")
    parser.add_argument("--out-dir", default=None, help="keep the built datasets here (default: temp dir)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_emojicap.json"))
    args = parser.parse_args()
    base = Path(args.out_dir) if args.out_dir else Path(tempfile.mkdtemp(prefix="emojicap-"))

    builds = []
    styles = tuple(x for x in args.styles.split(",") if x)
    plan = [(int(s), True) for s in args.sizes.split(",")] + [(int(args.sizes.split(",")[0]), False)]
    for size, skin_tones in plan:
        out = base / f"emojicap{size}{'' if skin_tones else '-noskin'}"
        start = time.perf_counter()
        manifest = build_emojicap(
            out, config=EmojiCapConfig(size=size, skin_tones=skin_tones, styles=styles), progress=False
        )
        seconds = time.perf_counter() - start
        nbytes = sum(p.stat().st_size for p in out.glob("*.tar"))
        split_of_group: dict[str, set[str]] = defaultdict(set)
        split_of_pixels: dict[bytes, set[str]] = defaultdict(set)
        split_of_concept: dict[str, set[str]] = defaultdict(set)
        start = time.perf_counter()
        for split in manifest["splits"]:
            for ex in load_emojicap(out, split, styles=styles):
                split_of_group[str(ex.meta["group"])].add(split)
                split_of_pixels[ex.image.tobytes()].add(split)
                split_of_concept[str(ex.meta["concept"])].add(split)
        load_s = time.perf_counter() - start
        per_style = {
            name: {
                "images": info["count"],
                "coverage": info["coverage"],
                "missing": {reason: len(keys) for reason, keys in info["missing"]["by_reason"].items()},
                "identical_images": info["identical_images"]["count"],
                "splits": {k: v["count"] for k, v in info["splits"].items()},
            }
            for name, info in manifest["styles"].items()
        }
        builds.append({
            "size": size, "skin_tones": skin_tones, "styles": list(styles), "seconds": round(seconds, 2),
            "images_per_second": round(manifest["total"] / seconds, 1),
            "load_all_seconds": round(load_s, 2), "shard_megabytes": round(nbytes / 2**20, 2),
            "available": manifest["available"], "concepts": manifest["concepts"], "total_images": manifest["total"],
            "splits": {k: {"count": v["count"], "groups": v["groups"]} for k, v in manifest["splits"].items()},
            "dropped_no_name": manifest["dropped"]["no_name"]["count"],
            "per_style": per_style,
            "groups_spanning_two_splits": sum(len(s) > 1 for s in split_of_group.values()),
            "identical_images_spanning_two_splits": sum(len(s) > 1 for s in split_of_pixels.values()),
            "concepts_spanning_two_splits": sum(len(s) > 1 for s in split_of_concept.values()),
        })  # fmt: skip
        print(json.dumps(builds[-1]))

    # Reference: Pillow's basic layout (no shaping) on the same font.
    entries = emoji_entries(["en"])
    font_path = str(openmoji_dir() / "font" / "glyf_colr0.ttf")
    raqm = ImageFont.truetype(font_path, 100, layout_engine=ImageFont.Layout.RAQM)
    basic = ImageFont.truetype(font_path, 100, layout_engine=ImageFont.Layout.BASIC)
    one = raqm.getlength("\U0001f600")
    multi = [e for e in entries if len(e.emoji) > 1]
    single_raqm = sum(raqm.getlength(e.emoji) <= 1.5 * one for e in multi)
    single_basic = sum(basic.getlength(e.emoji) <= 1.5 * one for e in multi)
    shaping = {"multi_codepoint_emoji": len(multi), "one_glyph_with_raqm": single_raqm,
               "one_glyph_with_basic_layout": single_basic}  # fmt: skip
    print(json.dumps(shaping))
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench/bench_emojicap.py" + (
        f" --sizes {args.sizes}" if args.sizes != "32,64" else ""
    )
    out_path.write_text(json.dumps({"command": command, "builds": builds,
                                    "shaping": shaping}, indent=1))  # fmt: skip
    print(f"-> {out_path}")


if __name__ == "__main__":
    main()
