"""The data contract between EmojiCap shards and the models: collate adapters keyed by source and language.

mpm-train reads a stage's mixture as weighted ``DataSource``s and hands the model side samples
``{"image": PIL.Image, "json": {"key", "names": {lang: name}, ...}, "__key__", "__source__"}``. A recipe
names each source ``<kind>/<lang>`` (:func:`source_name`): ``names/en`` ("English names"),
``instructions/en`` ("English instructions"), ``instructions/zh`` (one of the "translated
instructions"). The collate functions below read ``__source__`` and turn every sample into what its
model trains on through the adapter registered for that kind, in that language, so one batch may
mix sources and no code hard-codes a language.

- ``names``: the model's prompt (``model.prompt``, e.g. ``<image>\\nWhat is this?``), answered with
  the emoji's name in the source's language (for paint: the name is the caption);
- ``instructions``: a question written in the source's language (hand-translated templates below),
  answered with the name in that language (CLDR names are the answers).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = [
    "INSTRUCTIONS",
    "PAINT_ADAPTERS",
    "VLM_ADAPTERS",
    "PaintCollate",
    "VLMCollate",
    "parse_source",
    "source_name",
]

#: Questions per language for the ``instructions`` source, translated by hand from the English ones
#: ("What is this?", "Which emoji is this?", "What does this picture show?").
INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "en": ("What is this?", "Which emoji is this?", "What does this picture show?"),
    "es": ("¿Qué es esto?", "¿Qué emoji es este?", "¿Qué muestra esta imagen?"),
    "ja": ("これは何ですか？", "これはどの絵文字ですか？", "この絵には何が描かれていますか？"),
    "ko": ("이것은 무엇입니까?", "이것은 어떤 이모지입니까?", "이 그림은 무엇을 보여 줍니까?"),
    "pt": ("O que é isto?", "Que emoji é este?", "O que esta imagem mostra?"),
    "it": ("Che cos'è questo?", "Che emoji è questa?", "Che cosa mostra questa immagine?"),
    "fr": ("Qu'est-ce que c'est ?", "Quel est cet emoji ?", "Que montre cette image ?"),
    "de": ("Was ist das?", "Welches Emoji ist das?", "Was zeigt dieses Bild?"),
    "fa": ("این چیست؟", "این کدام ایموجی است؟", "این تصویر چه چیزی را نشان می‌دهد؟"),
    "id": ("Apa ini?", "Emoji apa ini?", "Apa yang ditunjukkan gambar ini?"),
    "zh": ("这是什么？", "这是哪个表情符号？", "这张图片显示的是什么？"),
    "ru": ("Что это?", "Что это за эмодзи?", "Что изображено на этой картинке?"),
    "tr": ("Bu nedir?", "Bu hangi emoji?", "Bu resim neyi gösteriyor?"),
    "ar": ("ما هذا؟", "ما هذا الرمز التعبيري؟", "ماذا تُظهر هذه الصورة؟"),
}

Sample = Mapping[str, Any]
Adapter = Callable[[Sample, str, Mapping[str, Any]], dict[str, Any]]


def source_name(kind: str, lang: str) -> str:
    """The ``DataSource`` name of a kind of sample in a language: ``names/en``, ``instructions/zh``."""
    return f"{kind}/{lang}"


def parse_source(name: str) -> tuple[str, str]:
    """``(kind, lang)`` of a source name written by :func:`source_name`."""
    kind, sep, lang = name.partition("/")
    if not sep or not kind or not lang:
        raise ValueError(f"data source {name!r} is not named <kind>/<lang> (e.g. 'names/en')")
    return kind, lang


def _name(sample: Sample, lang: str) -> str:
    names = sample["json"].get("names", {})
    if lang not in names:
        raise ValueError(
            f"sample {sample.get('__key__')!r} of source {sample.get('__source__')!r} has no name in {lang!r} "
            f"(it has {sorted(names)})"
        )
    return str(names[lang])


def _pick(sample: Sample, options: Sequence[str]) -> str:
    """One of ``options``, chosen by the sample's key (deterministic across runs and processes)."""
    return options[zlib.crc32(str(sample.get("__key__", "")).encode()) % len(options)]


def _vlm_names(sample: Sample, lang: str, ctx: Mapping[str, Any]) -> dict[str, Any]:
    return {"image": sample["image"], "prompt": ctx["prompt"], "answer": _name(sample, lang)}


def _vlm_instructions(sample: Sample, lang: str, ctx: Mapping[str, Any]) -> dict[str, Any]:
    if lang not in INSTRUCTIONS:
        raise ValueError(f"no instruction templates in {lang!r}; INSTRUCTIONS has {sorted(INSTRUCTIONS)}")
    question = _pick(sample, INSTRUCTIONS[lang])
    return {
        "image": sample["image"],
        "prompt": f"{ctx['image_token']}\n{question}",
        "answer": _name(sample, lang),
    }


def _paint_names(sample: Sample, lang: str, ctx: Mapping[str, Any]) -> dict[str, Any]:
    return {"image": sample["image"], "caption": _name(sample, lang)}


#: ``kind -> adapter(sample, lang, context)`` for the chat model (``VisionLanguageModel.collate`` samples).
VLM_ADAPTERS: dict[str, Adapter] = {"names": _vlm_names, "instructions": _vlm_instructions}
#: ``kind -> adapter(sample, lang, context)`` for the paint model (``mpm_paint.collate`` samples).
PAINT_ADAPTERS: dict[str, Adapter] = {"names": _paint_names}


def _adapt(
    samples: Sequence[Sample], adapters: Mapping[str, Adapter], ctx: Mapping[str, Any]
) -> list[dict[str, Any]]:
    out = []
    for s in samples:
        kind, lang = parse_source(str(s.get("__source__", "")))
        if kind not in adapters:
            raise ValueError(
                f"data source {s.get('__source__')!r}: no {kind!r} adapter; known: {sorted(adapters)}"
            )
        out.append(adapters[kind](s, lang, ctx))
    return out


class VLMCollate:
    """mpm-train samples -> a ``VisionBatch`` of a :class:`mpm_vision.VisionLanguageModel`, each sample through
    the adapter of its source (``<kind>/<lang>``).

    ``features``: a :class:`mpm_vision.FeatureCache` of the model's frozen encoder; the batch then
    carries the stored encoder features (``image_features``) instead of pixels, so the encoder runs
    once per image rather than at every step.
    """

    def __init__(self, model: Any, *, prompt: str, features: Any = None) -> None:
        self.model = model
        self.features = features
        self.context = {"prompt": prompt, "image_token": model.config.image_token}

    def samples(self, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        """The adapted samples (``{"image", "prompt", "answer"}``), before tokenization."""
        return _adapt(samples, VLM_ADAPTERS, self.context)

    def __call__(self, samples: Sequence[Sample]) -> Any:
        adapted = self.samples(samples)
        if self.features is not None and adapted:
            feats = self.features.features([s.pop("image") for s in adapted])
            for s, f in zip(adapted, feats, strict=True):
                s["image_features"] = f
        return self.model.collate(adapted)


class PaintCollate:
    """mpm-train samples -> an ``mpm_paint`` batch: pixels in [-1, 1] + the caption's token ids, or, with
    ``states`` (``texts -> [B, D]``, e.g. :class:`mpm.painting.PivotStates`), the caption's cached pivot
    state as ``prompt_embeds``."""

    def __init__(
        self,
        *,
        tokenizer: Any,
        resolution: int,
        max_length: int,
        states: Callable[[list[str]], Any] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.resolution = resolution
        self.max_length = max_length
        self.states = states

    def samples(self, samples: Sequence[Sample]) -> list[dict[str, Any]]:
        """The adapted samples (``{"image", "caption"}``)."""
        return _adapt(samples, PAINT_ADAPTERS, {})

    def __call__(self, samples: Sequence[Sample]) -> dict[str, Any]:
        from mpm_paint import collate

        if self.states is not None:
            batch = collate(self.samples(samples), resolution=self.resolution)
            batch["prompt_embeds"] = self.states(batch["prompts"])
            return batch
        return collate(
            self.samples(samples),
            resolution=self.resolution,
            tokenizer=self.tokenizer,
            max_length=self.max_length,
        )
