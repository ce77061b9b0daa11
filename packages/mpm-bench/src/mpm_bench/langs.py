"""Language codes: validation, normalisation and the sacrebleu tokenizer of each language."""

from __future__ import annotations

from collections.abc import Iterable

#: The 14 languages in which the ``emoji`` package names every emoji (EmojiCap's languages).
EMOJICAP_LANGS: tuple[str, ...] = (
    "en", "es", "ja", "ko", "pt", "it", "fr", "de", "fa", "id", "zh", "ru", "tr", "ar",
)  # fmt: skip

#: ISO 639-1 two-letter codes (the primary subtag we accept; region/script subtags may follow).
ISO_639_1: frozenset[str] = frozenset(
    """aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy
    da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy
    hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li
    ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa
    pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th
    ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu""".split()
)

_BLEU_TOKENIZERS = {"zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab"}


def normalize_lang(lang: str) -> str:
    """Return the lower-case ISO 639-1 primary subtag of ``lang`` (``"zh-Hant"`` -> ``"zh"``).

    Raises:
        ValueError: when ``lang`` is not a string whose primary subtag is an ISO 639-1 code.
    """
    if not isinstance(lang, str) or not lang.strip():
        raise ValueError(f"language code must be a non-empty string like 'en' or 'zh', got {lang!r}")
    primary = lang.strip().replace("_", "-").split("-")[0].lower()
    if primary not in ISO_639_1:
        raise ValueError(
            f"unknown language code {lang!r}: expected an ISO 639-1 code such as 'en', 'zh', 'ja' "
            f"(EmojiCap languages: {', '.join(EMOJICAP_LANGS)})"
        )
    return primary


def check_langs(langs: Iterable[str], *, available: Iterable[str] | None = None) -> list[str]:
    """Validate a list of language codes (normalised, order kept, duplicates removed).

    Args:
        langs: the requested language codes.
        available: when given, every requested language must be one of these.

    Raises:
        ValueError: an empty list, an unknown code, or a code outside ``available``.
    """
    if isinstance(langs, str):
        langs = [part for part in langs.split(",") if part.strip()]
    out: list[str] = []
    for lang in langs:
        code = normalize_lang(lang)
        if code not in out:
            out.append(code)
    if not out:
        raise ValueError("no language given: pass at least one language code such as 'en'")
    if available is not None:
        avail = {normalize_lang(a) for a in available}
        missing = [code for code in out if code not in avail]
        if missing:
            raise ValueError(
                f"language(s) {missing} not available in this dataset (available: {sorted(avail)})"
            )
    return out


def bleu_tokenizer(lang: str) -> str:
    """The sacrebleu tokenizer for ``lang``: ``zh``, ``ja-mecab``, ``ko-mecab``, else ``13a``."""
    return _BLEU_TOKENIZERS.get(normalize_lang(lang), "13a")
