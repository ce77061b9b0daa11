"""Real parallel phrases, offline: CLDR names (Babel), emoji names, pycountry's catalogues, your files.

Every loader returns a :class:`~mpm_align.interfaces.ParallelCorpus` that is already cleaned (NFC, strip,
empty pairs dropped, each side de-duplicated); ``corpus.stats`` says how many pairs each step kept.
:func:`load_corpora` parses a compact spec such as ``"cldr:territories,emoji"`` for a list of languages
and pairs the first (pivot) language with each of the others.

Sources (``SOURCES``):
``cldr:territories``, ``cldr:languages``, ``cldr:scripts``, ``cldr:currencies``, ``cldr:units`` (``cldr`` =
all five), ``emoji`` (CLDR emoji names from the ``emoji`` package, 14 languages), ``pycountry:countries``,
``pycountry:languages``, ``pycountry:currencies``, ``pycountry:scripts`` (``pycountry`` = all four), and
files: ``tsv:PATH``, ``jsonl:PATH`` or ``lines:SRC_PATH+TGT_PATH`` (a bare path ending in ``.tsv`` or
``.jsonl`` works too).
"""

from __future__ import annotations

import gettext
import json
from collections.abc import Sequence
from pathlib import Path

from mpm_align.interfaces import ParallelCorpus

__all__ = [
    "CLDR_KINDS",
    "EMOJI_LANGUAGES",
    "PYCOUNTRY_KINDS",
    "SOURCES",
    "check_languages",
    "check_sources",
    "corpus_stats",
    "load_cldr",
    "load_corpora",
    "load_emoji",
    "load_line_files",
    "load_pair_file",
    "load_pycountry",
    "merge_corpora",
    "validate_language",
    "validate_pair",
]

CLDR_KINDS = ("territories", "languages", "scripts", "currencies", "units")
PYCOUNTRY_KINDS = {
    "countries": "iso3166-1",
    "languages": "iso639-3",
    "currencies": "iso4217",
    "scripts": "iso15924",
}
EMOJI_LANGUAGES = ("en", "es", "ja", "ko", "pt", "it", "fr", "de", "fa", "id", "zh", "ru", "tr", "ar")
SOURCES = (
    *(f"cldr:{k}" for k in CLDR_KINDS),
    "emoji",
    *(f"pycountry:{k}" for k in PYCOUNTRY_KINDS),
)


def validate_language(code: str) -> str:
    """Check that ``code`` is a language CLDR knows (``en``, ``zh``, ``pt-BR``, ``zh-Hant``) and return it.

    Raises ``ValueError("unknown language code ...")`` otherwise.
    """
    from babel import Locale, UnknownLocaleError

    if not isinstance(code, str) or not code.strip():
        raise ValueError(f"unknown language code {code!r}: empty")
    primary = code.strip().replace("_", "-").split("-")[0].casefold()
    if primary in ("und", "root"):
        # Babel resolves 'und' through likely subtags to en_US, so it would silently pair English
        # with English; 'root' is CLDR's base data, not a language.
        raise ValueError(
            f"language code {code!r} names no language ('und' = undetermined, 'root' = CLDR's base "
            "data); give the language, e.g. en, zh, de, pt-BR"
        )
    try:
        Locale.parse(code.strip().replace("-", "_"))
    except (UnknownLocaleError, ValueError, TypeError):
        raise ValueError(
            f"unknown language code {code!r} (not a CLDR locale; try e.g. en, zh, de, pt-BR)"
        ) from None
    return code.strip()


def _language_key(code: str) -> str:
    """The CLDR locale a (validated) code names: ``"EN"`` and ``"en"`` -> ``"en"``, ``"pt-br"`` -> ``"pt_BR"``."""
    from babel import Locale

    return str(Locale.parse(code.strip().replace("-", "_")))


def validate_pair(src_lang: str, tgt_lang: str) -> tuple[str, str]:
    """Validate both codes and refuse a "pair" of one language (codes compare case-insensitively)."""
    src, tgt = validate_language(src_lang), validate_language(tgt_lang)
    if _language_key(src) == _language_key(tgt):
        raise ValueError(
            f"source and target language are the same ({src!r} and {tgt!r}; language codes are "
            "case-insensitive): a parallel corpus needs two languages"
        )
    return src, tgt


def _read_text(path: Path) -> str:
    """A UTF-8 text file (a leading BOM is dropped); invalid bytes raise an error naming the file."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: not valid UTF-8 (line {line}, byte offset {e.start}: {raw[e.start : e.start + 4]!r}); "
            f"re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed{path.suffix}`"
        ) from None


def _finish(corpus: ParallelCorpus, *, drop_identical: bool) -> ParallelCorpus:
    return corpus.clean(drop_identical=drop_identical)


# ----------------------------------------------------------------------------------------------------
# CLDR through Babel


def _cldr_names(kind: str, lang: str) -> dict[str, str]:
    from babel import Locale

    loc = Locale.parse(lang.replace("-", "_"))
    if kind == "territories":
        return dict(loc.territories)
    if kind == "languages":
        return dict(loc.languages)
    if kind == "scripts":
        return dict(loc.scripts)
    if kind == "currencies":
        return dict(loc.currencies)
    if kind == "units":
        out = {}
        for key, forms in loc._data["unit_display_names"].items():
            name = forms.get("long") or forms.get("short")
            if isinstance(name, str):
                out[key] = name
        return out
    raise ValueError(f"unknown CLDR kind {kind!r}; choose from {CLDR_KINDS}")


def load_cldr(kind: str, src_lang: str, tgt_lang: str, *, drop_identical: bool = False) -> ParallelCorpus:
    """CLDR display names of one kind (``territories``, ``languages``, ``scripts``, ``currencies``,
    ``units``) in two languages, paired by their CLDR key (``DE`` -> "Germany" / "德国")."""
    validate_pair(src_lang, tgt_lang)
    a, b = _cldr_names(kind, src_lang), _cldr_names(kind, tgt_lang)
    keys = [k for k in a if k in b]
    corpus = ParallelCorpus(
        f"cldr:{kind}", src_lang, tgt_lang, tuple(a[k] for k in keys), tuple(b[k] for k in keys)
    )
    return _finish(corpus, drop_identical=drop_identical)


# ----------------------------------------------------------------------------------------------------
# emoji names

_SKIN_TONES = {chr(c) for c in range(0x1F3FB, 0x1F400)}


def _emoji_name(name: str) -> str:
    return name.strip(":").replace("_", " ")


def load_emoji(
    src_lang: str, tgt_lang: str, *, skin_tones: bool = False, drop_identical: bool = False
) -> ParallelCorpus:
    """CLDR emoji names (``:red_apple:`` -> ``red apple``) from the ``emoji`` package, paired by emoji.

    Variants with a skin-tone modifier are left out unless ``skin_tones`` (they repeat a base name with a
    tone suffix, ~3,000 near-duplicates).
    """
    validate_pair(src_lang, tgt_lang)
    for lang in (src_lang, tgt_lang):
        if lang not in EMOJI_LANGUAGES:
            raise ValueError(
                f"emoji names are not available in {lang!r}; available: {', '.join(EMOJI_LANGUAGES)}"
            )
    import emoji

    emoji.config.load_language([src_lang, tgt_lang])
    src, tgt = [], []
    for char, data in emoji.EMOJI_DATA.items():
        if not skin_tones and any(c in _SKIN_TONES for c in char):
            continue
        if src_lang in data and tgt_lang in data:
            src.append(_emoji_name(data[src_lang]))
            tgt.append(_emoji_name(data[tgt_lang]))
    return _finish(
        ParallelCorpus("emoji", src_lang, tgt_lang, tuple(src), tuple(tgt)), drop_identical=drop_identical
    )


# ----------------------------------------------------------------------------------------------------
# pycountry's gettext catalogues


def _pycountry_catalog(domain: str, lang: str) -> dict[str, str] | None:
    """msgid -> translation for ``lang`` (``None`` for English, whose names are the msgids)."""
    import pycountry

    if lang.split("-")[0].split("_")[0] == "en":
        return None
    root = Path(pycountry.LOCALES_DIR)
    code = lang.replace("-", "_")
    candidates = [code, code.split("_")[0]]
    candidates += sorted(p.name for p in root.iterdir() if p.name.startswith(code.split("_")[0] + "_"))
    for c in candidates:
        if (root / c / "LC_MESSAGES" / f"{domain}.mo").is_file():
            t = gettext.translation(domain, str(root), languages=[c])
            catalog = getattr(t, "_catalog", {})
            return {str(k): str(v) for k, v in catalog.items() if isinstance(k, str) and k and v}
    available = sorted(p.name for p in root.iterdir() if (p / "LC_MESSAGES" / f"{domain}.mo").is_file())
    raise ValueError(f"pycountry has no {domain} catalogue for {lang!r}; available: {', '.join(available)}")


def load_pycountry(
    kind: str, src_lang: str, tgt_lang: str, *, drop_identical: bool = False
) -> ParallelCorpus:
    """Names of ISO countries/languages/currencies/scripts from pycountry's translated catalogues.

    Entries a catalogue does not translate are left out (they would pair English with English).
    """
    import pycountry

    if kind not in PYCOUNTRY_KINDS:
        raise ValueError(f"unknown pycountry kind {kind!r}; choose from {sorted(PYCOUNTRY_KINDS)}")
    validate_pair(src_lang, tgt_lang)
    domain = PYCOUNTRY_KINDS[kind]
    db = {
        "countries": pycountry.countries,
        "languages": pycountry.languages,
        "currencies": pycountry.currencies,
        "scripts": pycountry.scripts,
    }[kind]
    names = [str(r.name) for r in db]
    if kind == "languages":  # 7,900 ISO 639-3 codes, mostly untranslated: keep the translated ones
        names = [n for n in names if n]
    ca, cb = _pycountry_catalog(domain, src_lang), _pycountry_catalog(domain, tgt_lang)
    src, tgt = [], []
    for n in names:
        a = n if ca is None else ca.get(n)
        b = n if cb is None else cb.get(n)
        if a and b:
            src.append(a)
            tgt.append(b)
    corpus = ParallelCorpus(f"pycountry:{kind}", src_lang, tgt_lang, tuple(src), tuple(tgt))
    return _finish(corpus, drop_identical=drop_identical)


# ----------------------------------------------------------------------------------------------------
# files


def load_pair_file(
    path: str | Path,
    src_lang: str,
    tgt_lang: str,
    *,
    fmt: str | None = None,
    drop_identical: bool = False,
) -> ParallelCorpus:
    """Pairs from a TSV or JSONL file.

    TSV: tab-separated columns; a first line of language codes (``en<TAB>zh<TAB>de``) names the columns,
    otherwise the two columns are ``src_lang`` and ``tgt_lang``. JSONL: one object per line keyed by
    language code (``{"en": "red apple", "zh": "红苹果"}``); lines without both languages are skipped.
    """
    validate_pair(src_lang, tgt_lang)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"pair file does not exist: {p}")
    fmt = fmt or ("jsonl" if p.suffix in (".jsonl", ".json") else "tsv")
    src: list[str] = []
    tgt: list[str] = []
    lines = _read_text(p).splitlines()
    if fmt == "jsonl":
        for no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{no}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{p}:{no}: expected an object keyed by language code")
            if src_lang in obj and tgt_lang in obj:
                src.append(str(obj[src_lang]))
                tgt.append(str(obj[tgt_lang]))
    elif fmt == "tsv":
        rows = [line.split("\t") for line in lines if line.strip()]
        cols = [src_lang, tgt_lang]
        if rows and all(_looks_like_code(c) for c in rows[0]) and src_lang in rows[0]:
            cols = [c.strip() for c in rows[0]]
            rows = rows[1:]
        if src_lang not in cols or tgt_lang not in cols:
            raise ValueError(f"{p}: columns are {cols}, need {src_lang!r} and {tgt_lang!r}")
        i, j = cols.index(src_lang), cols.index(tgt_lang)
        for no, row in enumerate(rows, 1):
            if len(row) != len(cols):
                raise ValueError(f"{p}: row {no} has {len(row)} column(s), expected {len(cols)}")
            src.append(row[i])
            tgt.append(row[j])
    else:
        raise ValueError(f"unknown pair-file format {fmt!r}; use 'tsv' or 'jsonl'")
    corpus = ParallelCorpus(str(p), src_lang, tgt_lang, tuple(src), tuple(tgt))
    return _finish(corpus, drop_identical=drop_identical)


def _looks_like_code(cell: str) -> bool:
    c = cell.strip()
    if not c or len(c) > 12 or " " in c:
        return False
    try:
        validate_language(c)
    except ValueError:
        return False
    return True


def load_line_files(
    src_path: str | Path, tgt_path: str | Path, src_lang: str, tgt_lang: str, *, drop_identical: bool = False
) -> ParallelCorpus:
    """Two line-aligned text files (Moses style): line ``i`` of one translates line ``i`` of the other."""
    validate_pair(src_lang, tgt_lang)
    a, b = Path(src_path), Path(tgt_path)
    for f in (a, b):
        if not f.is_file():
            raise FileNotFoundError(f"text file does not exist: {f}")
    src = _read_text(a).splitlines()
    tgt = _read_text(b).splitlines()
    if len(src) != len(tgt):
        raise ValueError(f"unequal lengths: {a} has {len(src)} lines, {b} has {len(tgt)}")
    return _finish(
        ParallelCorpus(f"{a.name}+{b.name}", src_lang, tgt_lang, tuple(src), tuple(tgt)),
        drop_identical=drop_identical,
    )


# ----------------------------------------------------------------------------------------------------
# specs


def _expand(spec: str | Sequence[str]) -> list[str]:
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [s.strip() for s in spec]
    items = [s for s in items if s]
    if not items:
        raise ValueError("no data source given (e.g. 'cldr:territories,emoji')")
    out: list[str] = []
    for s in items:
        if s == "cldr":
            out += [f"cldr:{k}" for k in CLDR_KINDS]
        elif s == "pycountry":
            out += [f"pycountry:{k}" for k in PYCOUNTRY_KINDS]
        else:
            out.append(s)
    return out


def check_sources(spec: str | Sequence[str]) -> list[str]:
    """Check a data spec without loading it: every source is known and every named file exists.

    Returns the expanded source list (``"cldr"`` -> its five kinds). Raises ``ValueError`` for an unknown
    source or kind and ``FileNotFoundError`` for a missing file, naming it.
    """
    sources = _expand(spec)
    for source in sources:
        kind, _, arg = source.partition(":")
        files: list[str] = []
        if kind == "cldr":
            if arg not in CLDR_KINDS:
                raise ValueError(f"unknown CLDR kind {arg!r} in {source!r}; choose from {CLDR_KINDS}")
        elif kind == "pycountry":
            if arg not in PYCOUNTRY_KINDS:
                raise ValueError(
                    f"unknown pycountry kind {arg!r} in {source!r}; choose from {sorted(PYCOUNTRY_KINDS)}"
                )
        elif kind in ("tsv", "jsonl"):
            files = [arg]
        elif kind == "lines":
            a, sep, b = arg.partition("+")
            if not sep:
                raise ValueError(f"'lines:' needs two files joined by '+', got {source!r}")
            files = [a, b]
        elif source.endswith((".tsv", ".jsonl")):
            files = [source]
        elif source != "emoji":
            raise ValueError(
                f"unknown data source {source!r}; choose from {', '.join(SOURCES)}, tsv:PATH, jsonl:PATH, "
                "lines:A+B"
            )
        for f in files:
            if not Path(f).is_file():
                raise FileNotFoundError(f"data file does not exist: {f} (in {source!r})")
    return sources


def _load_one(source: str, src: str, tgt: str, drop_identical: bool) -> ParallelCorpus:
    kind, _, arg = source.partition(":")
    if kind == "cldr":
        return load_cldr(arg, src, tgt, drop_identical=drop_identical)
    if source == "emoji":
        return load_emoji(src, tgt, drop_identical=drop_identical)
    if kind == "pycountry":
        return load_pycountry(arg, src, tgt, drop_identical=drop_identical)
    if kind in ("tsv", "jsonl"):
        return load_pair_file(arg, src, tgt, fmt=kind, drop_identical=drop_identical)
    if kind == "lines":
        a, sep, b = arg.partition("+")
        if not sep:
            raise ValueError(f"'lines:' needs two files joined by '+', got {source!r}")
        return load_line_files(a, b, src, tgt, drop_identical=drop_identical)
    if source.endswith((".tsv", ".jsonl")):
        return load_pair_file(source, src, tgt, drop_identical=drop_identical)
    raise ValueError(
        f"unknown data source {source!r}; choose from {', '.join(SOURCES)}, tsv:PATH, jsonl:PATH, lines:A+B"
    )


def merge_corpora(corpora: Sequence[ParallelCorpus]) -> list[ParallelCorpus]:
    """One corpus per language pair: the sources concatenated (``"cldr:territories+emoji"``), de-duplicated."""
    groups: dict[tuple[str, str], list[ParallelCorpus]] = {}
    for c in corpora:
        groups.setdefault((c.src_lang, c.tgt_lang), []).append(c)
    merged = []
    for (s, t), cs in groups.items():
        if len(cs) == 1:
            merged.append(cs[0])
            continue
        raw = sum(c.stats.get("raw", len(c)) for c in cs)
        m = ParallelCorpus(
            "+".join(c.name for c in cs),
            s,
            t,
            tuple(x for c in cs for x in c.src),
            tuple(x for c in cs for x in c.tgt),
        ).clean()
        merged.append(
            ParallelCorpus(
                m.name,
                s,
                t,
                m.src,
                m.tgt,
                stats={"raw": raw, **{k: v for k, v in m.stats.items() if k != "raw"}},
            )
        )
    return merged


def check_languages(langs: Sequence[str]) -> list[str]:
    """Validate a list of language codes: each known to CLDR, none given twice (case-insensitively)."""
    codes = [validate_language(code) for code in langs]
    if not codes:
        raise ValueError("no languages given")
    seen: dict[str, str] = {}
    for code in codes:
        key = _language_key(code)
        if key in seen:
            raise ValueError(
                f"language {code!r} is given twice (as {seen[key]!r} and {code!r}; language codes are "
                "case-insensitive)"
            )
        seen[key] = code
    return codes


def load_corpora(
    spec: str | Sequence[str],
    langs: Sequence[str],
    *,
    pivot: str | None = None,
    drop_identical: bool = False,
    merge: bool = False,
    max_pairs: int | None = None,
    seed: int = 0,
) -> list[ParallelCorpus]:
    """Corpora for every source in ``spec`` and every pair ``pivot``-X, X in ``langs``.

    ``pivot`` defaults to ``langs[0]``. ``merge`` joins the sources of each language pair into one corpus;
    ``max_pairs`` subsamples each corpus (fixed ``seed``). Raises ``ValueError`` for an unknown language
    code, an unknown source, or a corpus that is empty after cleaning.
    """
    langs = check_languages(langs)
    pivot = validate_language(pivot) if pivot else langs[0]
    others = [code for code in langs if _language_key(code) != _language_key(pivot)]
    if not others:
        raise ValueError(f"need at least one language besides the pivot {pivot!r}, got {langs}")
    corpora = [
        _load_one(source, pivot, other, drop_identical) for source in _expand(spec) for other in others
    ]
    if merge:
        corpora = merge_corpora(corpora)
    for c in corpora:
        if len(c) == 0:
            raise ValueError(f"corpus {c.name!r} ({c.pair}) is empty after cleaning (stats: {c.stats})")
    if max_pairs is not None:
        corpora = [c.subsample(max_pairs, seed=seed) for c in corpora]
    return corpora


def corpus_stats(corpora: Sequence[ParallelCorpus]) -> list[dict[str, object]]:
    """Pair counts per corpus: ``[{"corpus", "pair", "raw", ..., "kept", "used"}]``."""
    return [{"corpus": c.name, "pair": c.pair, **c.stats, "used": len(c)} for c in corpora]
