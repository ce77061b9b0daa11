"""Recipe configs: nested frozen dataclasses, loaded from TOML with ``base`` files and ``key=value`` overrides.

A recipe config is one TOML file (presets under ``integration/configs/``)::

    base = "default"                  # optional: start from another file (a preset name or a path)
    [model.bridge]                    # then state only what differs
    kind = "perceiver"
    num_queries = 16
    [stages.instruct.lr]
    bridge = 1e-4

Tables merge key by key over the base (arrays and values replace). On the command line,
``model.bridge.kind=perceiver stages.align.trainable.encoder=true`` apply on top; a value is read as
the field's type (``true``/``false``, numbers, comma-separated lists, ``none`` for an empty optional
field; TOML syntax such as ``[1, 2]`` works too). Unknown keys and wrongly typed values raise
:class:`ConfigError` with the key's dotted path before any work starts. The resolved config is
written into the run as ``config.toml``; loading that file gives the same config back.

Every key is documented once, in the docstring of the dataclass that holds it. The training keys of a
stage (``steps``, ``batch_size``, ``warmup_steps``, ``lora``, ...) are those of
:class:`mpm_train.StageConfig`, documented there.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - python 3.10
    import tomli as tomllib

__all__ = [
    "AlignSpec",
    "BridgeSpec",
    "ConditioningSpec",
    "ConfigError",
    "ContrastiveSpec",
    "DataSpec",
    "EncoderSpec",
    "EvalSpec",
    "LMSpec",
    "MixEntry",
    "PaintSpec",
    "RecipeConfig",
    "RunSpec",
    "SchedulerSpec",
    "StageSpec",
    "UNetSpec",
    "VLMSpec",
    "WarmStartSpec",
    "apply_overrides",
    "configs_dir",
    "load_config",
    "presets",
]

T = TypeVar("T")

#: The parts each kind of stage model has (mpm-vision's ``VisionLanguageModel.parts()``, mpm-paint's
#: ``PaintTrainable.parts()``).
MODEL_PARTS: dict[str, tuple[str, ...]] = {
    "vlm": ("encoder", "bridge", "lm"),
    "paint": ("unet", "projection"),
}
#: The collate adapters each kind of stage model has (see ``mpm.data``).
MODEL_SOURCES: dict[str, tuple[str, ...]] = {"vlm": ("names", "instructions"), "paint": ("names",)}


class ConfigError(ValueError):
    """A problem in a recipe config; the message starts with the key's dotted path."""


class _FieldError(ValueError):
    """Raised by a spec's ``__post_init__`` about one of its fields; the loader adds the dotted path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _check_langs(values: Sequence[str], key: str) -> None:
    from mpm_bench.langs import EMOJICAP_LANGS

    bad = [x for x in values if x not in EMOJICAP_LANGS]
    if bad:
        raise _FieldError(key, f"unknown language(s) {bad}; EmojiCap has {', '.join(EMOJICAP_LANGS)}")
    if not values:
        raise _FieldError(key, "give at least one language")
    if len(set(values)) != len(values):
        raise _FieldError(key, f"a language appears twice in {list(values)}")


# ------------------------------------------------------------------------------------------------
# The config tree
# ------------------------------------------------------------------------------------------------
class _Spec:
    """``to_dict`` / ``from_dict`` for the frozen config dataclasses below."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``type(self).from_dict(d)`` gives an equal config."""
        return _plain(self)

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
        """Build from a (nested) mapping, checking every key and type (errors name the dotted path)."""
        return _build(cls, data, path)


@dataclass(frozen=True)
class RunSpec(_Spec):
    """``[run]``: where the run lives and what is shared by every step.

    ``out_dir``: the run directory (stages, board, ``config.toml``); re-running a config resumes it.
    ``seed``: seeds model initialisation, data order and evaluation draws. ``langs``: the languages
    every evaluation runs in (EmojiCap codes; English first is customary, ``en`` is required for the
    transfer ratios). ``progress``: show progress bars.
    """

    out_dir: str = "outputs/demo"
    seed: int = 0
    langs: tuple[str, ...] = ("en", "zh", "de", "fr", "es", "ja", "ru", "ar")
    progress: bool = True

    def __post_init__(self) -> None:
        _check_langs(self.langs, "langs")
        if not self.out_dir:
            raise _FieldError("out_dir", "give a run directory")


@dataclass(frozen=True)
class DataSpec(_Spec):
    """``[data]``: the EmojiCap dataset (mpm-bench) the stages train and evaluate on.

    ``image_size``: rendering size in pixels. ``limit``: how many emoji to render (``0`` = all,
    about 3,900). ``styles``: the art styles rendered (``openmoji``, ``twemoji``, ``noto``: the same
    concepts and split in each). ``shuffle_buffer``: per-source shuffle buffer of the training reader.
    ``root``: where the shards live; empty = ``<run.out_dir>/emojicap`` (the resolved config records
    the path). Shards whose manifest matches ``image_size``, ``limit`` and ``styles`` are re-used.
    """

    image_size: int = 32
    limit: int = 600
    styles: tuple[str, ...] = ("openmoji",)
    shuffle_buffer: int = 500
    root: str = ""

    def __post_init__(self) -> None:
        if self.image_size < 1:
            raise _FieldError("image_size", f"must be >= 1, got {self.image_size}")
        for key in ("limit", "shuffle_buffer"):
            if getattr(self, key) < 0:
                raise _FieldError(key, f"must be >= 0, got {getattr(self, key)}")
        from mpm_bench.emojicap import STYLES

        bad = [s for s in self.styles if s not in STYLES]
        if bad or not self.styles or len(set(self.styles)) != len(self.styles):
            raise _FieldError(
                "styles", f"give distinct styles among {', '.join(STYLES)}, got {list(self.styles)}"
            )


@dataclass(frozen=True)
class LMSpec(_Spec):
    """``[model.lm]``: the language model (the pivot), shared by chat and paint.

    ``name``: a zoo name (``gemma3-270m``, ``smollm2-135m``; ``zoo:`` prefix optional), a local
    transformers directory with safetensors weights, or ``tiny:<arch>`` (``llama``, ``qwen2``,
    ``gemma3``, ``gpt2``): a tiny randomly initialised LM with a byte-level tokenizer, built from a
    config without the zoo (for smoke runs). ``options``: for ``tiny:`` LMs, transformers config
    overrides (e.g. ``{hidden_size = 64}``).
    """

    name: str = "gemma3-270m"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EncoderSpec(_Spec):
    """``[model.encoder]``: the vision encoder (any timm model, through ``mpm_vision.create_encoder``).

    ``name``: the timm model name. ``pretrained``: let timm load its pretrained weights (needs
    network or a populated cache). ``checkpoint``: a local ``.safetensors`` file (or directory) with
    backbone weights, or ``zoo:<name>`` for a zoo entry (resolved through ``mpm.zoo.zoo_path``);
    empty = none. ``image_size``: input resolution (``none`` = the model's own). ``feature_layer``:
    ``-1`` for the final features, another index for that block's output. ``frozen``: the encoder
    never trains (a stage whose policy trains it is refused). ``options``: keyword arguments for
    ``timm.create_model`` (``patch_size``, ``depth``, ``embed_dim``...).
    """

    name: str = "vit_tiny_patch16_224"
    pretrained: bool = False
    checkpoint: str = ""
    image_size: int | None = 32
    feature_layer: int = -1
    frozen: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BridgeSpec(_Spec):
    """``[model.bridge]``: the bridge from vision features into the LM (``mpm_vision.create_bridge``).

    ``kind``: ``query`` (VisCPM), ``perceiver``, ``qformer``, ``mlp`` or a registered kind.
    ``num_queries``: visual tokens per image for the query-based kinds. ``options``: kind-specific
    options (``depth``, ``num_heads``, ``mlp_ratio``...). Its input and output widths are read from
    the encoder and the LM.
    """

    kind: str = "query"
    num_queries: int = 8
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WarmStartSpec(_Spec):
    """``[model.warm_start]``: before the first chat stage, regress the bridge's visual tokens onto the
    LM's input embeddings of each training image's name (``mpm_vision.regress_bridge``: no LM forward
    pass, seconds on cached features). It runs once and is stored in ``<run>/stages/warm-start``.

    ``steps``: optimizer steps (``0`` = no warm start). ``lr``, ``batch_size``: of that regression.
    ``lang``: the names' language (``en``: English only, as every other chat stage of the recipe).
    ``split``, ``style``: the EmojiCap images regressed (one clean render per emoji).
    """

    steps: int = 0
    lr: float = 1e-3
    batch_size: int = 32
    lang: str = "en"
    split: str = "train"
    style: str = "openmoji"

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or not self.lr > 0:
            raise _FieldError("steps", "steps must be >= 0, batch_size >= 1 and lr > 0")
        _check_langs((self.lang,), "lang")


@dataclass(frozen=True)
class VLMSpec(_Spec):
    """``[model]``: the chat model (``mpm_vision.VisionLanguageModel``) = encoder + bridge + LM.

    ``prompt``: the question the ``names`` data source asks and classification scores the answers
    to (holds the image token ``<image>`` once). ``feature_cache``: when the encoder is frozen, chat
    stages train on its stored features (``mpm_vision.FeatureCache`` under ``<run>/cache``) instead
    of running it at every step. ``warm_start``: see :class:`WarmStartSpec`.
    """

    lm: LMSpec = field(default_factory=LMSpec)
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    bridge: BridgeSpec = field(default_factory=BridgeSpec)
    prompt: str = "<image>\nWhat is this?"
    feature_cache: bool = True
    warm_start: WarmStartSpec = field(default_factory=WarmStartSpec)

    def __post_init__(self) -> None:
        if self.prompt.count("<image>") != 1:
            raise _FieldError(
                "prompt", f"must hold the image token <image> exactly once, got {self.prompt!r}"
            )


@dataclass(frozen=True)
class ConditioningSpec(_Spec):
    """``[paint.conditioning]``: how the pivot LM conditions the UNet.

    ``source``: ``states`` = the pivot's **cached** pooled state of each name (``template``,
    ``pooling``, ``layer``: the shared pivot space, computed once by ``mpm.painting.pivot_states``)
    through a ``mpm_paint.StateConditioner`` that turns it into ``num_tokens`` cross-attention tokens;
    ``lm`` = VisCPM's per-token hidden states of the live LM (``mpm_paint.LLMConditioner``,
    ``max_length`` tokens). ``layer``: which entry of ``hidden_states`` (``-1`` = last).
    ``width``: the projection's output width, which is the UNet's cross-attention width.
    ``space``: ``fixed`` = the ``template``, ``pooling`` and ``layer`` given here; ``pivot`` = the
    pivot space the recipe chooses for stage 1a (``mpm.contrastive.choose_pivot_space`` on the
    ``align.split`` names), so paint, its judge and stage 1a read one state per name from one cache
    (``$MPM_CACHE/pivot-states``); the three keys are then replaced by the chosen ones. Read only with
    ``source = "states"`` (the live LM has no pooled space).
    """

    source: str = "states"
    space: str = "fixed"
    layer: int = -1
    width: int = 64
    max_length: int = 16
    template: str = '"{text}" in English is "'
    pooling: str = "last"
    num_tokens: int = 4

    def __post_init__(self) -> None:
        if self.source not in ("states", "lm"):
            raise _FieldError("source", f"{self.source!r} is not states or lm")
        if self.space not in ("fixed", "pivot"):
            raise _FieldError("space", f"{self.space!r} is not fixed or pivot")
        if self.pooling not in ("last", "mean", "first"):
            raise _FieldError("pooling", f"{self.pooling!r} is not last, mean or first")
        if "{text}" not in self.template:
            raise _FieldError("template", f"must contain {{text}}, got {self.template!r}")
        for key in ("width", "max_length", "num_tokens"):
            if getattr(self, key) < 1:
                raise _FieldError(key, f"must be >= 1, got {getattr(self, key)}")


@dataclass(frozen=True)
class UNetSpec(_Spec):
    """``[paint.unet]``: the diffusers ``UNet2DConditionModel`` (pixel space, 3 channels).

    ``block_out_channels``, ``layers_per_block``, ``down_block_types``, ``up_block_types``,
    ``attention_head_dim``, ``norm_num_groups``: as in diffusers. Its sample size is the paint
    resolution and its cross-attention width the conditioning's.
    """

    block_out_channels: tuple[int, ...] = (32, 64)
    layers_per_block: int = 1
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D")
    up_block_types: tuple[str, ...] = ("CrossAttnUpBlock2D", "UpBlock2D")
    attention_head_dim: int = 8
    norm_num_groups: int = 8


@dataclass(frozen=True)
class SchedulerSpec(_Spec):
    """``[paint.scheduler]``: diffusers scheduler classes (by name) for training and for sampling.

    ``train``: the training noise schedule (``DDPMScheduler``). ``sample``: the sampler
    (``DDIMScheduler``, ``DPMSolverMultistepScheduler``...). ``num_train_timesteps``: shared by both.
    ``options``: extra config for both (e.g. ``{prediction_type = "v_prediction"}``).
    """

    train: str = "DDPMScheduler"
    sample: str = "DDIMScheduler"
    num_train_timesteps: int = 1000
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PaintSpec(_Spec):
    """``[paint]``: the paint model (``mpm_paint.PaintTrainable``) on the same LM as chat.

    ``resolution``: image side (``none`` = ``data.image_size``). ``loss``: ``mpm_paint.PaintTrainingConfig``
    keys (``prediction_type``, ``snr_gamma``, ``cond_dropout``, ``noise_offset``). ``judge``: what
    decides whether a painting shows its concept in the evaluation: ``render`` = the nearest clean
    render among the candidates in frozen EfficientNet-Lite0 features (needs the zoo), ``chat`` = the
    chat model's scores of the candidate names (in ``eval.judge_lang``).
    """

    conditioning: ConditioningSpec = field(default_factory=ConditioningSpec)
    unet: UNetSpec = field(default_factory=UNetSpec)
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    resolution: int | None = None
    loss: dict[str, Any] = field(default_factory=dict)
    judge: str = "render"

    def __post_init__(self) -> None:
        if self.judge not in ("render", "chat", "contrastive"):
            raise _FieldError("judge", f"{self.judge!r} is not render, chat or contrastive")


@dataclass(frozen=True)
class AlignSpec(_Spec):
    """``[align]``: how close the pivot puts each language's emoji names to the English ones (mpm-align),
    and the pivot space that the recipe picks from it.

    The recipe encodes the names of the ``split`` concepts (``val`` by default: never the evaluation
    sets) in every language with each of ``templates`` (``{text}`` marks the name) and ``poolings``,
    at every layer, and keeps the (template, pooling, layer) with the best mean en->X CSLS P@1. The
    contrastive stage and the board use that choice. ``items``: at most this many names per
    language (0 = every concept of the split). ``template``/``pooling``: the pivot space when
    ``enabled = false``.
    """

    enabled: bool = True
    items: int = 0
    split: str = "val"
    templates: tuple[str, ...] = ('"{text}" in English is "', "{text}")
    poolings: tuple[str, ...] = ("last", "mean")
    template: str = '"{text}" in English is "'
    pooling: str = "last"
    layer: int = -1

    def __post_init__(self) -> None:
        for p in (self.pooling, *self.poolings):
            if p not in ("last", "mean", "first"):
                raise _FieldError("poolings", f"{p!r} is not last, mean or first")
        for t in (self.template, *self.templates):
            if "{text}" not in t:
                raise _FieldError("templates", f"must contain {{text}}, got {t!r}")
        if not self.templates or not self.poolings:
            raise _FieldError("templates", "give at least one template and one pooling")
        if self.items and self.items < 2:
            raise _FieldError("items", f"retrieval needs at least 2 names, got {self.items}")


@dataclass(frozen=True)
class ContrastiveSpec(_Spec):
    """``[contrastive]``: stage 1a, a head from the frozen encoder's pooled features to the pivot's
    cached states of the **English** names (InfoNCE), and its zero-shot evaluation in every language.

    ``views``: held-in augmented views per training concept (plus the clean render). ``style_views``:
    more views aimed at unseen art styles: the same augmentation, then a 3-px max filter that thins
    the training style's dark outlines away and a random hue rotation (:class:`mpm.contrastive.StyleView`;
    chosen on val concepts by ``benchmarks/integration/select_style_views.py``). ``steps``,
    ``batch_size``, ``lr``, ``weight_decay``, ``hidden`` (0 = linear head): the head's training.
    ``centre``: centre each language's name states on their mean. ``csls_k``: CSLS hubness
    correction against the training images (0 = off). ``native_langs``: also train one head per
    language on that language's own names (the native-data comparison). ``eval_sets``: named
    evaluation sets (``seen-aug``, ``seen-style:<style>``, ``unseen``). ``eval_items``: concepts
    per seen set (0 = all); ``among_all``: also report accuracy among every name of the set.
    """

    enabled: bool = True
    style: str = "openmoji"
    views: int = 4
    style_views: int = 0
    steps: int = 400
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    hidden: int = 0
    centre: bool = True
    csls_k: int = 0
    native_langs: tuple[str, ...] = ()
    eval_sets: tuple[str, ...] = ("seen-aug", "seen-style:twemoji", "seen-style:noto", "unseen")
    eval_items: int = 0
    among_all: bool = True

    def __post_init__(self) -> None:
        if self.views < 0:
            raise _FieldError("views", f"must be >= 0, got {self.views}")
        if self.style_views < 0:
            raise _FieldError("style_views", f"must be >= 0, got {self.style_views}")
        if self.steps < 1 or self.batch_size < 1:
            raise _FieldError("steps", "steps and batch_size must be >= 1")
        if self.lr <= 0 or self.hidden < 0 or self.csls_k < 0 or self.eval_items < 0:
            raise _FieldError("lr", "lr must be > 0; hidden, csls_k and eval_items >= 0")
        if self.native_langs:
            _check_langs(self.native_langs, "native_langs")
        for name in self.eval_sets:
            base = name.split(":", 1)[0]
            if base not in ("seen-aug", "seen-style", "unseen"):
                raise _FieldError(
                    "eval_sets", f"{name!r}: use seen-aug, seen-style:<style> or unseen[:<style>]"
                )


@dataclass(frozen=True)
class MixEntry(_Spec):
    """One weighted part of a stage's data mixture (``[[stages.<name>.mix]]``).

    ``kind``: the collate adapter: ``names`` (the model's prompt, answered with the emoji's name) or
    ``instructions`` (a question in the language, answered with the name in that language; chat only).
    ``langs``: the language(s); several languages share the entry's ``weight`` equally, one
    ``DataSource`` each (named ``<kind>/<lang>``). ``split``: the EmojiCap split read. ``style``: the
    art style read (one of ``data.styles``).
    """

    kind: str = "names"
    langs: tuple[str, ...] = ("en",)
    weight: float = 1.0
    split: str = "train"
    style: str = "openmoji"

    def __post_init__(self) -> None:
        _check_langs(self.langs, "langs")
        if not self.weight > 0:
            raise _FieldError("weight", f"must be > 0, got {self.weight}")


@dataclass(frozen=True)
class StageSpec(_Spec):
    """``[stages.<name>]``: one training stage; stages run in file order, each model's stages chained.

    ``model``: what trains, ``vlm`` (chat) or ``paint``; a stage starts from the final weights of the
    previous stage of the same model. ``enabled``: ``false`` skips it (variants switch stages off).
    ``trainable``: per part, ``true`` / ``false`` / ``"lora"`` / a regular expression over the part's
    parameter names (vlm parts: ``encoder``, ``bridge``, ``lm``; paint parts: ``unet``,
    ``projection``); parts not named are frozen. ``lr``: learning rates, ``default`` for every trained
    part and optionally one per part (optimizer parameter groups). ``mix``: the data mixture.
    ``train``: every other key of the stage table, passed to ``mpm_train.StageConfig`` (``steps``
    is required; ``warmup_steps`` defaults to a tenth of the steps, ``log_every`` to an eighth,
    ``seed`` to ``run.seed``). ``start_from``: the name of an earlier chat stage this stage starts
    from instead of the previous one: a *branch* (a variant sharing the stages up to that one, which
    are trained once), trained after the main chain and evaluated beside it; empty = the chain.
    """

    model: str = "vlm"
    enabled: bool = True
    start_from: str = ""
    trainable: dict[str, bool | str] = field(default_factory=dict)
    lr: dict[str, float] = field(default_factory=lambda: {"default": 1e-3})
    mix: tuple[MixEntry, ...] = (MixEntry(),)
    train: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalSpec(_Spec):
    """``[eval]``: zero-shot evaluation in every ``run.langs`` language (mpm-bench tasks).

    ``split``: the EmojiCap split (``test`` = emoji never trained on; ``train`` = the trained emoji,
    asked in every language). ``items``: images evaluated. ``num_candidates``: names to choose among.
    ``caption``: also caption in English (BLEU, chrF, answer-language fidelity). ``paint_items``:
    emoji painted per language (0 = no text-to-image). ``paint_inference_steps``, ``guidance_scale``:
    sampling settings. ``judge_lang``: the language of the names the chat model judges paintings by.
    ``style``: the art style evaluated (one of ``data.styles``).

    The chat model's (generative head's) evaluation: ``chat_set``: a named mpm-bench evaluation set
    (``seen-aug``: held-out augmented views of training emoji; ``seen-style``; ``unseen``), or empty
    for ``split``/``style``. ``chat_langs``: its languages (empty = ``run.langs``). ``chat_items``:
    images classified (0 = ``items``), scored by mean log-probability per token of each candidate
    name. ``chat_all``: also among all names of the first ``chat_all`` images (0 = off).
    ``fidelity_items``: images asked in each of ``fidelity_langs`` (empty = ``chat_langs``), of the
    main model and of every branch stage (``stages.*.start_from``), with the oracle's row as the
    detector's ceiling (0 = off). ``max_new_tokens``: answer length when generating.
    """

    split: str = "test"
    style: str = "openmoji"
    items: int = 24
    num_candidates: int = 8
    caption: bool = True
    paint_items: int = 6
    paint_split: str = "train"
    paint_inference_steps: int = 20
    guidance_scale: float = 3.0
    judge_lang: str = "en"
    chat_set: str = ""
    chat_langs: tuple[str, ...] = ()
    chat_items: int = 0
    chat_all: int = 0
    fidelity_items: int = 0
    fidelity_langs: tuple[str, ...] = ()
    max_new_tokens: int = 12

    def __post_init__(self) -> None:
        if self.items < 2:
            raise _FieldError("items", f"classification needs at least 2 items, got {self.items}")
        if self.chat_set not in ("", "seen-aug", "seen-style", "unseen"):
            raise _FieldError("chat_set", f"{self.chat_set!r} is not seen-aug, seen-style, unseen or empty")
        for key in ("chat_langs", "fidelity_langs"):
            if getattr(self, key):
                _check_langs(getattr(self, key), key)
        for key in ("chat_items", "chat_all", "fidelity_items"):
            if getattr(self, key) < 0 or getattr(self, key) == 1:
                raise _FieldError(key, f"must be 0 (off / default) or >= 2, got {getattr(self, key)}")
        if self.max_new_tokens < 1:
            raise _FieldError("max_new_tokens", f"must be >= 1, got {self.max_new_tokens}")
        if self.num_candidates < 2:
            raise _FieldError("num_candidates", f"must be >= 2, got {self.num_candidates}")
        for key in ("paint_items", "paint_inference_steps"):
            if getattr(self, key) < (0 if key == "paint_items" else 1):
                raise _FieldError(
                    key, f"must be >= {0 if key == 'paint_items' else 1}, got {getattr(self, key)}"
                )


@dataclass(frozen=True)
class RecipeConfig(_Spec):
    """The whole recipe: ``[run]``, ``[data]``, ``[model]``, ``[paint]``, ``[align]``, ``[stages.*]``,
    ``[eval]``, ``[ablations.*]``.

    ``ablations``: named variants run through the same recipe on the same data and put on the same
    board; each is a partial config merged over this one (for example
    ``[ablations.smollm2.model.lm] name = "smollm2-135m"``), written into
    ``<run.out_dir>/ablations/<name>``.
    """

    run: RunSpec = field(default_factory=RunSpec)
    data: DataSpec = field(default_factory=DataSpec)
    model: VLMSpec = field(default_factory=VLMSpec)
    paint: PaintSpec = field(default_factory=PaintSpec)
    align: AlignSpec = field(default_factory=AlignSpec)
    contrastive: ContrastiveSpec = field(default_factory=ContrastiveSpec)
    stages: dict[str, StageSpec] = field(default_factory=dict)
    eval: EvalSpec = field(default_factory=EvalSpec)
    ablations: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_recipe(self)

    def __hash__(self) -> int:
        import json

        # key order must not matter: equal configs (dict equality) hash equally
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=str))

    # -- derived ------------------------------------------------------------------------------------
    @property
    def data_root(self) -> str:
        """Where the EmojiCap shards live (``data.root``, or ``<run.out_dir>/emojicap``)."""
        return self.data.root or str(Path(self.run.out_dir) / "emojicap")

    def stages_of(self, model: str) -> dict[str, StageSpec]:
        """The enabled stages that train ``model`` (``vlm`` or ``paint``), in order."""
        return {name: s for name, s in self.stages.items() if s.enabled and s.model == model}

    def resolved(self) -> RecipeConfig:
        """This config with derived values written out (``data.root``), as stored in a run."""
        return dataclasses.replace(self, data=dataclasses.replace(self.data, root=self.data_root))

    def ablation(self, name: str) -> RecipeConfig:
        """The config of ablation ``name``: this config with the ablation's keys merged over it, run in
        ``<run.out_dir>/ablations/<name>`` on the same data, without ablations of its own."""
        if name not in self.ablations:
            raise ConfigError(f"ablations.{name}: no such ablation; this config has {sorted(self.ablations)}")
        base = self.to_dict()
        base.pop("ablations")
        base["data"]["root"] = self.data_root
        merged = _merge(base, self.ablations[name])
        merged.setdefault("run", {})["out_dir"] = str(Path(self.run.out_dir) / "ablations" / name)
        merged["data"]["root"] = self.data_root
        return RecipeConfig.from_dict(merged, path=f"ablations.{name}")

    def to_toml(self) -> str:
        """TOML text that :func:`load_config` reads back into an equal config (``none`` for None)."""
        import tomli_w

        return tomli_w.dumps(_toml_ready(self.to_dict()))

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_toml` to ``path`` (atomically: a temporary file, then a rename)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp")
        tmp.write_text(self.to_toml(), encoding="utf-8")
        tmp.replace(p)
        return p


def stage_config_error(where: str, err: Exception) -> ConfigError:
    """mpm-train's error about a stage key, placed at the stage's dotted path (``stages.align.steps: ...``)."""
    key, problem = getattr(err, "key", None), getattr(err, "problem", None)
    if key and problem:  # mpm_train.ConfigError names the key it is about
        return ConfigError(f"{where}.{key}: {problem}")
    return ConfigError(f"{where}: {err}")


def _check_recipe(cfg: RecipeConfig) -> None:
    """Cross-field checks, each naming the key (single fields were checked when they were built)."""
    if cfg.eval.judge_lang not in cfg.run.langs:
        raise ConfigError(
            f"eval.judge_lang: {cfg.eval.judge_lang!r} is not one of run.langs {list(cfg.run.langs)}"
        )
    if cfg.eval.style not in cfg.data.styles:
        raise ConfigError(f"eval.style: {cfg.eval.style!r} is not one of data.styles {list(cfg.data.styles)}")
    if not cfg.stages_of("vlm") and not cfg.contrastive.enabled:
        raise ConfigError(
            "stages: the recipe needs at least one enabled stage with model = 'vlm' "
            "(or the contrastive stage: contrastive.enabled = true)"
        )
    for name, stage in cfg.stages.items():
        where = f"stages.{name}"
        if stage.model not in MODEL_PARTS:
            raise ConfigError(f"{where}.model: {stage.model!r} is not one of {sorted(MODEL_PARTS)}")
        if stage.start_from and stage.enabled:
            chain = [n for n, s in cfg.stages_of(stage.model).items() if not s.start_from]
            order = list(cfg.stages)
            if stage.start_from not in chain or order.index(stage.start_from) >= order.index(name):
                raise ConfigError(
                    f"{where}.start_from: {stage.start_from!r} is not an earlier enabled {stage.model} stage "
                    f"of the main chain ({', '.join(chain)})"
                )
        parts = MODEL_PARTS[stage.model]
        for part, how in stage.trainable.items():
            if part not in parts:
                raise ConfigError(
                    f"{where}.trainable.{part}: a {stage.model} stage has no part {part!r}; parts are {', '.join(parts)}"
                )
            if part == "encoder" and how is not False and cfg.model.encoder.frozen:
                raise ConfigError(
                    f"{where}.trainable.encoder: model.encoder.frozen = true, so the encoder never trains"
                )
        if not any(how is not False for how in stage.trainable.values()):
            raise ConfigError(
                f"{where}.trainable: the stage trains nothing; set at least one of {', '.join(parts)}"
            )
        for part, lr in stage.lr.items():
            if part != "default" and part not in parts:
                raise ConfigError(
                    f"{where}.lr.{part}: not a part of a {stage.model} stage ({', '.join(parts)}) nor 'default'"
                )
            if part != "default" and stage.trainable.get(part, False) is False:
                raise ConfigError(f"{where}.lr.{part}: the part does not train in this stage")
            if not lr > 0:
                raise ConfigError(f"{where}.lr.{part}: must be > 0, got {lr}")
        if not stage.mix:
            raise ConfigError(f"{where}.mix: give at least one data source")
        seen: set[tuple[str, str]] = set()
        for i, entry in enumerate(stage.mix):
            if entry.kind not in MODEL_SOURCES[stage.model]:
                raise ConfigError(
                    f"{where}.mix.{i}.kind: {entry.kind!r} is not a {stage.model} source "
                    f"({', '.join(MODEL_SOURCES[stage.model])})"
                )
            if entry.style not in cfg.data.styles:
                raise ConfigError(
                    f"{where}.mix.{i}.style: {entry.style!r} is not one of data.styles {list(cfg.data.styles)}"
                )
            for lang in entry.langs:
                if (entry.kind, lang) in seen:
                    raise ConfigError(f"{where}.mix.{i}: {entry.kind}/{lang} appears twice in the mixture")
                seen.add((entry.kind, lang))
        if "steps" not in stage.train:
            raise ConfigError(f"{where}.steps: missing (how many optimizer steps the stage runs)")
        try:  # the training keys are mpm-train's: let StageConfig check their values
            from mpm_train import DataConfig, DataSource, StageConfig

            StageConfig(
                name=name,
                data=DataConfig(sources=(DataSource("check", ("x",)),)),
                trainable=dict(stage.trainable),
                part_lr={k: v for k, v in stage.lr.items() if k != "default"},
                **stage.train,
            )
        except (ValueError, TypeError) as err:
            raise stage_config_error(where, err) from None
    for name in cfg.ablations:
        if not isinstance(cfg.ablations[name], Mapping):
            raise ConfigError(f"ablations.{name}: expected a table of keys to change")
        if "ablations" in cfg.ablations[name]:
            raise ConfigError(f"ablations.{name}.ablations: an ablation cannot have ablations")
        cfg.ablation(name)  # merge and check now, so a bad ablation fails before any work


# ------------------------------------------------------------------------------------------------
# Typed loading (every key checked, errors name the dotted path)
# ------------------------------------------------------------------------------------------------
#: StageConfig keys a stage table may not set (the recipe derives them).
_DERIVED_STAGE_KEYS = ("name", "data", "lr", "part_lr", "trainable")


def _stage_train_hints() -> dict[str, Any]:
    from mpm_train import StageConfig

    hints = typing.get_type_hints(StageConfig)
    return {k: v for k, v in hints.items() if k not in _DERIVED_STAGE_KEYS}


def _is_optional(tp: Any) -> bool:
    return get_origin(tp) in (typing.Union, types.UnionType) and type(None) in get_args(tp)


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (tuple, list, Sequence):
        return "a list"
    if origin in (dict, Mapping) or (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
        return "a table"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp) if a is not type(None))
    return str(tp)


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """``value`` checked (and minimally converted: int -> float, list -> tuple) against annotation ``tp``."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        arms = get_args(tp)
        if type(None) in arms and (value is None or (value == "none" and str not in arms)):
            return None  # TOML has no null: an empty optional field is written "none"
        for arm in arms:
            if arm is not type(None):
                try:
                    return _coerce(value, arm, path)
                except ConfigError:
                    pass
        raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is Literal:
        if value in get_args(tp):
            return value
    elif origin in (tuple, list, Sequence):
        if isinstance(value, list | tuple):
            args = get_args(tp)
            if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
                item = args[0]
            elif origin is tuple and args:
                if len(args) != len(value):
                    raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
                return tuple(_coerce(v, a, f"{path}.{i}") for i, (v, a) in enumerate(zip(value, args)))
            else:
                item = args[0] if args else Any
            return tuple(_coerce(v, item, f"{path}.{i}") for i, v in enumerate(value))
    elif origin in (dict, Mapping):
        if isinstance(value, Mapping):
            _, val_tp = get_args(tp) or (str, Any)
            return {str(k): _coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    else:  # pragma: no cover - an annotation this loader does not know
        return value
    raise ConfigError(f"{path}: expected {_describe(tp)}, got {value!r}")


def _build(cls: type[T], data: Any, path: str) -> T:
    where = path or cls.__name__
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    train_hints = _stage_train_hints() if cls is StageSpec else {}
    if cls is StageSpec:
        names.remove("train")  # the stage's training keys are given inline, not as a table
    for key, value in data.items():
        sub = f"{path}.{key}" if path else str(key)
        if key in names:
            kwargs[key] = _coerce(value, hints[key], sub)
        elif key in train_hints:
            extra[key] = _coerce(value, train_hints[key], sub)
        else:
            raise _unknown(cls, key, sub)
    if cls is StageSpec:
        kwargs["train"] = extra
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except _FieldError as err:
        raise ConfigError(f"{path + '.' if path else ''}{err.key}: {err.message}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from None


def _unknown(cls: Any, key: str, path: str, suffix: str = "") -> ConfigError:
    """The error for a key ``cls`` does not have, listing the keys it has."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        return ConfigError(f"{path}: unknown key{suffix}")
    known = [f.name for f in dataclasses.fields(cls) if not (cls is StageSpec and f.name == "train")]
    if cls is StageSpec:
        known += list(_stage_train_hints())
    hint = (
        f" (mpm_train.StageConfig sets {key!r} from the recipe)"
        if cls is StageSpec and key in _DERIVED_STAGE_KEYS
        else ""
    )
    return ConfigError(
        f"{path}: unknown key{hint}{suffix}; {cls.__name__} keys are {', '.join(sorted(known))}"
    )


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(obj, StageSpec) and f.name == "train":
                out.update(_plain(value))
            else:
                out[f.name] = _plain(value)
        return out
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _toml_ready(obj: Any) -> Any:
    """TOML has no null: ``None`` is written as the string ``"none"`` (read back as None)."""
    if isinstance(obj, Mapping):
        return {k: _toml_ready(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_toml_ready(v) for v in obj]
    return "none" if obj is None else obj


# ------------------------------------------------------------------------------------------------
# Files: presets, base, overrides
# ------------------------------------------------------------------------------------------------
def configs_dir() -> Path:
    """The preset directory: ``integration/configs`` in a checkout (``mpm/configs`` in a wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parents[1] / "configs"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"no preset directory next to {here} (expected integration/configs)")


def presets() -> list[str]:
    """Names of the preset configs (``smoke``, ``default``, ``full`` and the variants)."""
    return sorted(p.stem for p in configs_dir().glob("*.toml"))


def _resolve(ref: str, relative_to: Path | None) -> Path:
    if ref.endswith(".toml") or "/" in ref:
        p = Path(ref)
        if not p.is_absolute() and relative_to is not None and not p.is_file():
            p = relative_to / p
        if not p.is_file():
            raise ConfigError(f"config file not found: {ref}")
        return p
    p = configs_dir() / f"{ref}.toml"
    if not p.is_file():
        raise ConfigError(
            f"unknown preset {ref!r}; presets are {', '.join(presets())} (or give a .toml path)"
        )
    return p


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: tables merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config_file(ref: str | Path, *, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw table of a config file with its ``base`` chain merged in (a preset name or a path)."""
    path = _resolve(str(ref), _seen[-1].parent if _seen else None).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: base files form a cycle: {' -> '.join(str(p) for p in (*_seen, path))}")
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a preset name or a path, got {base!r}")
    return _merge(read_config_file(base, _seen=(*_seen, path)), data)


def _field_type(cls: Any, key: str) -> tuple[Any, bool]:
    """The annotation of ``key`` inside ``cls`` (a dataclass, or a mapping value type); ``(type, found)``."""
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        if key in hints and not (cls is StageSpec and key == "train"):
            return hints[key], True
        if cls is StageSpec:
            train = _stage_train_hints()
            if key in train:
                return train[key], True
        return None, False
    origin = get_origin(cls)
    if origin in (dict, Mapping):
        args = get_args(cls)
        return (args[1] if args else Any), True
    if cls is Any:
        return Any, True
    return None, False


def _parse_value(raw: str, tp: Any) -> Any:
    """A command-line value read as type ``tp``."""
    if tp is str:
        return raw
    if _is_optional(tp) and raw.strip().lower() in ("none", "null"):
        return None
    if get_origin(tp) in (tuple, list, Sequence) and not raw.lstrip().startswith("["):
        items = [x.strip() for x in raw.split(",") if x.strip()]
        args = get_args(tp)
        item = args[0] if args else str
        return [_parse_value(x, item) for x in items]
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word (``perceiver``, ``zoo:gemma3-270m``) is a string


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings applied to a raw config table; keys are checked against the config types
    (and read as the field's type) here, values once the whole config is built."""
    out = _merge({}, data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. model.bridge.kind=perceiver)")
        parts = key.split(".")
        tp: Any = RecipeConfig
        node = out
        for i, part in enumerate(parts):
            path = ".".join(parts[: i + 1])
            if i == 1 and parts[0] == "stages" and part not in node:
                raise ConfigError(
                    f"{path}: no such stage (stages are {', '.join(node) or 'none'}; from {item!r})"
                )
            if isinstance(node, list):  # an element of an array of tables, e.g. stages.x.mix.0.weight
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"{path}: no element {part} (the list has {len(node)}; from {item!r})")
                sub = get_args(tp)[0] if get_args(tp) else Any
                if i == len(parts) - 1:
                    node[int(part)] = _parse_value(raw, sub)
                    break
                node[int(part)] = dict(node[int(part)]) if isinstance(node[int(part)], Mapping) else {}
                node, tp = node[int(part)], sub
                continue
            sub, found = _field_type(tp, part)
            if not found:
                raise _unknown(tp, part, path, f" (from override {item!r})")
            if i == 1 and parts[0] == "ablations":
                sub = RecipeConfig  # an ablation is a partial recipe config
            if i == len(parts) - 1:
                node[part] = _parse_value(raw, sub)
            else:
                child = node.get(part)
                if isinstance(child, list) and get_origin(sub) in (tuple, list):
                    node[part] = list(child)
                else:
                    node[part] = dict(child) if isinstance(child, Mapping) else {}
                node = node[part]
                tp = sub
    return out


def load_config(ref: str | Path | None = None, overrides: Sequence[str] = ()) -> RecipeConfig:
    """A preset name or TOML path (default: the ``default`` preset) with ``overrides`` applied, checked.

    Raises :class:`ConfigError` (with the key's dotted path) for unknown keys, wrong types and values
    that do not fit together.
    """
    data = read_config_file(ref if ref is not None else "default")
    return RecipeConfig.from_dict(apply_overrides(data, overrides))
