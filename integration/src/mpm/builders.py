"""Builders: config dataclasses (``mpm.config``) -> models, collate functions and mpm-train stages.

    lm, tokenizer = build_lm(cfg.model.lm)
    vlm = build_vlm(cfg.model, lm, tokenizer)            # encoder + bridge + LM
    paint = build_paint(cfg.paint, lm, tokenizer, resolution=32)
    plan = build_plan(cfg, "vlm")                         # mpm_train.PlanConfig of the chat stages

The width of every connection is read from the parts: the bridge's input from the encoder's
``feature_dim``, its output from the LM's embeddings, the conditioner's input from the LM and the
UNet's cross-attention from the conditioner. Nobody types a hidden size.

:func:`vlm_factory` and :func:`paint_factory` build the same models from plain keyword tables, for
the ``[model] factory`` of ``mpm-train run plan.toml``::

    [model]
    factory = "mpm.builders:vlm_factory"
    kwargs = { lm = { name = "tiny:llama" }, encoder = { name = "vit_tiny_patch16_224", image_size = 16 } }
    [[stages]]
    name = "align"
    trainable = { bridge = true }
    [[stages.data.sources]]
    name = "names/en"                 # <kind>/<lang>: the collate adapter and the language
    shards = ["data/emojicap-openmoji-train-*.tar"]
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from mpm.config import (
    MODEL_PARTS,
    ConfigError,
    EncoderSpec,
    LMSpec,
    PaintSpec,
    RecipeConfig,
    SchedulerSpec,
    StageSpec,
    VLMSpec,
    stage_config_error,
)
from mpm.data import PaintCollate, VLMCollate, source_name

__all__ = [
    "TINY_ARCHS",
    "build_branch_plans",
    "build_encoder",
    "build_lm",
    "build_paint",
    "build_plan",
    "build_schedulers",
    "build_stage",
    "build_vlm",
    "check_buildable",
    "lm_width",
    "paint_factory",
    "paint_pipeline",
    "resolve_checkpoint",
    "tiny_tokenizer",
    "vlm_factory",
]

TINY_ARCHS = ("llama", "qwen2", "gemma3", "gpt2")

# A few lines in the EmojiCap languages, so that the tiny byte-level tokenizer has merges for them.
_TINY_CORPUS = [
    "USER: What is this?\nASSISTANT: red apple",
    "grinning face, smiling face with heart-eyes, thumbs up, flag: Japan, rocket, dog face",
    "cara sonriente, manzana roja, visage souriant, pomme rouge, grinsendes Gesicht, roter Apfel",
    "красное яблоко, улыбающееся лицо, 红苹果, 笑脸, りんご, 笑顔, 사과, 웃는 얼굴",
    "تفاحة حمراء, وجه مبتسم, سیب قرمز, apel merah, kırmızı elma, mela rossa, maçã vermelha",
    "0123456789 ,.:;!?\"'()[]{}<>/\\-_=+*&^%$#@",
]


# ------------------------------------------------------------------------------------------------
# the language model
# ------------------------------------------------------------------------------------------------
def tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer (320 tokens) trained in memory on a fixed text: deterministic, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def _tiny_config(arch: str, vocab_size: int, options: dict[str, Any]) -> Any:
    import transformers

    common: dict[str, Any] = {
        "vocab_size": vocab_size,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    decoder: dict[str, Any] = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
    }
    cfg: Any
    if arch == "llama":
        cfg = transformers.LlamaConfig(**decoder, **common)
    elif arch == "qwen2":
        cfg = transformers.Qwen2Config(**decoder, **common)
    elif arch == "gemma3":
        cfg = transformers.Gemma3TextConfig(**decoder, head_dim=8, sliding_window=16, **common)
    else:
        cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **common)
    for key, value in options.items():
        if not hasattr(cfg, key):
            raise ConfigError(f"model.lm.options.{key}: {type(cfg).__name__} has no such setting")
        setattr(cfg, key, value)
    return cfg


def _lm_kind(spec: LMSpec) -> tuple[str, str]:
    """``("tiny", arch)``, ``("zoo", name)`` or ``("path", dir)``; raises ConfigError naming the key."""
    from mpm import zoo

    name = spec.name
    if name.startswith("tiny:"):
        arch = name.removeprefix("tiny:")
        if arch not in TINY_ARCHS:
            raise ConfigError(
                f"model.lm.name: unknown tiny architecture {arch!r}; choose from {', '.join(TINY_ARCHS)}"
            )
        return "tiny", arch
    bare = name.removeprefix("zoo:")
    if bare in zoo.ZOO:
        if zoo.ZOO[bare].kind != "causal_lm":
            raise ConfigError(f"model.lm.name: zoo model {bare!r} is an encoder, not a causal LM")
        return "zoo", bare
    if name.startswith("zoo:"):
        raise ConfigError(
            f"model.lm.name: unknown zoo model {bare!r}; the zoo has {', '.join(zoo.list_models())}"
        )
    if Path(name).is_dir():
        return "path", name
    raise ConfigError(
        f"model.lm.name: {name!r} is neither a zoo model ({', '.join(zoo.list_models())}), "
        f"nor tiny:<{'|'.join(TINY_ARCHS)}>, nor a local directory"
    )


def build_lm(spec: LMSpec, *, seed: int = 0) -> tuple[Any, Any]:
    """``(causal LM, tokenizer)`` for ``spec``: from the offline zoo, a local directory (safetensors only)
    or a tiny random LM built from a config (``tiny:<arch>``, seeded by ``seed``)."""
    kind, ref = _lm_kind(spec)
    if kind == "tiny":
        from transformers import AutoModelForCausalLM

        tok = tiny_tokenizer()
        torch.manual_seed(seed)
        lm = AutoModelForCausalLM.from_config(_tiny_config(ref, len(tok) + 8, dict(spec.options)))
        return lm.eval(), tok
    if spec.options:
        raise ConfigError("model.lm.options: only tiny:<arch> LMs take options")
    if kind == "zoo":
        from mpm.zoo import load_causal_lm

        return load_causal_lm(ref)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lm = AutoModelForCausalLM.from_pretrained(ref, use_safetensors=True, dtype=torch.float32)
    return lm.eval(), AutoTokenizer.from_pretrained(ref)


def lm_width(lm: Any) -> int:
    """The LM's hidden size, read from its input embeddings."""
    return int(lm.get_input_embeddings().weight.shape[1])


# ------------------------------------------------------------------------------------------------
# the chat model
# ------------------------------------------------------------------------------------------------
def resolve_checkpoint(ref: str) -> str | None:
    """An encoder ``checkpoint``: ``""`` -> None, ``zoo:<name>`` -> the zoo entry's path, else a local path."""
    if not ref:
        return None
    if ref.startswith("zoo:"):
        from mpm import zoo

        name = ref.removeprefix("zoo:")
        if name not in zoo.ZOO:
            raise ConfigError(
                f"model.encoder.checkpoint: unknown zoo entry {name!r}; the zoo has {', '.join(zoo.list_models())}"
            )
        return str(zoo.zoo_path(name))
    if not os.path.exists(ref):
        raise ConfigError(f"model.encoder.checkpoint: {ref!r} does not exist")
    return ref


def build_encoder(spec: EncoderSpec) -> Any:
    """A :class:`mpm_vision.VisionEncoder` (timm) from ``spec``."""
    from mpm_vision import create_encoder

    return create_encoder(
        spec.name,
        pretrained=spec.pretrained,
        checkpoint=resolve_checkpoint(spec.checkpoint),
        image_size=spec.image_size,
        feature_layer=spec.feature_layer,
        **spec.options,
    )


def build_vlm(spec: VLMSpec, lm: Any, tokenizer: Any, *, seed: int = 0) -> Any:
    """A :class:`mpm_vision.VisionLanguageModel`: encoder, a bridge as wide as the encoder and the LM, the LM."""
    from mpm_vision import VisionLanguageModel, create_bridge

    torch.manual_seed(seed)
    encoder = build_encoder(spec.encoder)
    bridge = create_bridge(
        spec.bridge.kind,
        in_dim=encoder.feature_dim,
        out_dim=lm_width(lm),
        num_queries=spec.bridge.num_queries,
        **spec.bridge.options,
    )
    return VisionLanguageModel(encoder, bridge, lm, tokenizer, train_encoder=not spec.encoder.frozen)


# ------------------------------------------------------------------------------------------------
# the paint model
# ------------------------------------------------------------------------------------------------
def build_schedulers(spec: SchedulerSpec) -> tuple[Any, Any]:
    """``(training scheduler, sampling scheduler)`` from diffusers class names."""
    import diffusers

    out = []
    for key in ("train", "sample"):
        name = getattr(spec, key)
        cls = getattr(diffusers, name, None)
        if cls is None or not hasattr(cls, "set_timesteps"):
            raise ConfigError(f"paint.scheduler.{key}: {name!r} is not a diffusers scheduler class")
        out.append(cls(num_train_timesteps=spec.num_train_timesteps, **spec.options))
    return out[0], out[1]


def build_paint(spec: PaintSpec, lm: Any, tokenizer: Any, *, resolution: int, seed: int = 0) -> Any:
    """An :class:`mpm_paint.PaintTrainable`: conditioner on the LM, a UNet as wide as its projection.

    ``paint.conditioning.source = "states"``: a ``StateConditioner`` as wide as the LM's hidden states
    (the batches carry the pivot's cached states, ``PaintCollate(states=...)``); ``"lm"``: an
    ``LLMConditioner`` running the LM on the captions.
    """
    from diffusers.models import UNet2DConditionModel

    from mpm_paint import LLMConditioner, PaintTrainable, PaintTrainingConfig, StateConditioner

    torch.manual_seed(seed)
    c = spec.conditioning
    conditioner: Any
    if c.source == "states":
        conditioner = StateConditioner(in_dim=lm_width(lm), out_dim=c.width, num_tokens=c.num_tokens)
    else:
        conditioner = LLMConditioner(lm, tokenizer, layer=c.layer, out_dim=c.width, max_length=c.max_length)
    u = spec.unet
    unet = UNet2DConditionModel(
        sample_size=resolution,
        in_channels=3,
        out_channels=3,
        layers_per_block=u.layers_per_block,
        block_out_channels=u.block_out_channels,
        down_block_types=u.down_block_types,
        up_block_types=u.up_block_types,
        cross_attention_dim=conditioner.out_dim,
        attention_head_dim=u.attention_head_dim,
        norm_num_groups=u.norm_num_groups,
    )
    train_scheduler, _ = build_schedulers(spec.scheduler)
    try:
        loss = PaintTrainingConfig(**spec.loss)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"paint.loss: {err}") from None
    return PaintTrainable(unet=unet, conditioner=conditioner, scheduler=train_scheduler, config=loss)


def paint_pipeline(model: Any, spec: PaintSpec) -> Any:
    """The sampling :class:`mpm_paint.MPMPaintPipeline` of a trained ``PaintTrainable`` (progress bar off)."""
    _, sample = build_schedulers(spec.scheduler)
    pipe = model.to_pipeline(sample)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def paint_resolution(cfg: RecipeConfig) -> int:
    """The paint image side: ``paint.resolution`` or the data's image size."""
    return cfg.paint.resolution or cfg.data.image_size


# ------------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------------
def build_stage(name: str, stage: StageSpec, cfg: RecipeConfig) -> Any:
    """The ``mpm_train.StageConfig`` of one recipe stage: one ``DataSource`` per (kind, language) of its mix."""
    from mpm_train import DataConfig, DataSource, StageConfig

    sources = tuple(
        DataSource(
            source_name(entry.kind, lang),
            (str(Path(cfg.data_root) / f"emojicap-{entry.style}-{entry.split}-*.tar"),),
            weight=entry.weight / len(entry.langs),
        )
        for entry in stage.mix
        for lang in entry.langs
    )
    steps = int(stage.train["steps"])
    train = {
        "warmup_steps": max(1, steps // 10),
        "log_every": max(1, steps // 8),
        "seed": cfg.run.seed,
        **stage.train,
    }
    try:
        return StageConfig(
            name=name,
            data=DataConfig(sources=sources, shuffle_buffer=cfg.data.shuffle_buffer),
            lr=stage.lr.get("default", 1e-3),
            part_lr={k: v for k, v in stage.lr.items() if k != "default"},
            trainable=dict(stage.trainable),
            **train,
        )
    except (TypeError, ValueError) as err:
        raise stage_config_error(f"stages.{name}", err) from None


def plan_context(cfg: RecipeConfig, model: str) -> dict[str, Any]:
    """What a model's stages depend on besides their own configs (stored in each stage's fingerprint)."""
    if model == "vlm":
        return {"model": cfg.model.to_dict(), "data": cfg.data.to_dict()}
    paint = cfg.paint.to_dict()
    context: dict[str, Any] = {"lm": cfg.model.lm.to_dict(), "paint": paint, "data": cfg.data.to_dict()}
    if cfg.paint.conditioning.source == "states" and cfg.paint.conditioning.space == "pivot":
        # the space is chosen from [align] (the sweep) on this LM and data: the fingerprint holds what
        # it is chosen from, so it reads the same before and after the choice is filled in
        paint["conditioning"] = {
            k: v for k, v in paint["conditioning"].items() if k not in ("template", "pooling", "layer")
        }
        context["align"] = cfg.align.to_dict()
    context["seed"] = cfg.run.seed
    return context


def build_plan(cfg: RecipeConfig, model: str) -> Any:
    """The ``mpm_train.PlanConfig`` of the enabled stages of ``model`` (``vlm`` or ``paint``), in order."""
    from mpm_train import PlanConfig

    if model not in MODEL_PARTS:
        raise ValueError(f"model must be one of {sorted(MODEL_PARTS)}, got {model!r}")
    stages = tuple(build_stage(name, s, cfg) for name, s in cfg.stages_of(model).items() if not s.start_from)
    if not stages:
        raise ConfigError(f"stages: no enabled stage trains the {model} model")
    return PlanConfig(stages=stages)


def build_branch_plans(cfg: RecipeConfig, model: str = "vlm") -> dict[str, Any]:
    """``{branch stage: PlanConfig}`` of the branch stages (``start_from``): the main chain up to the
    stage it starts from, then the branch. The shared stages are the main chain's (same directories,
    same fingerprints), so mpm-train loads them instead of training them again."""
    from mpm_train import PlanConfig

    main = cfg.stages_of(model)
    chain = [n for n, s in main.items() if not s.start_from]
    out: dict[str, Any] = {}
    for name, s in main.items():
        if s.start_from:
            shared = chain[: chain.index(s.start_from) + 1]
            stages = [build_stage(n, main[n], cfg) for n in shared] + [build_stage(name, s, cfg)]
            out[name] = PlanConfig(stages=tuple(stages))
    return out


# ------------------------------------------------------------------------------------------------
# checks that need no model
# ------------------------------------------------------------------------------------------------
def check_buildable(cfg: RecipeConfig) -> None:
    """Every name in ``cfg`` resolves (timm model, bridge kind, LM, schedulers, checkpoint) and every stage
    builds, without loading or building a model. Raises :class:`ConfigError` naming the key."""
    import timm

    from mpm_vision import BRIDGES

    if not timm.is_model(cfg.model.encoder.name):
        raise ConfigError(f"model.encoder.name: {cfg.model.encoder.name!r} is not a timm model")
    if cfg.model.bridge.kind not in BRIDGES:
        raise ConfigError(
            f"model.bridge.kind: {cfg.model.bridge.kind!r} is not one of {', '.join(sorted(BRIDGES))}"
        )
    _lm_kind(cfg.model.lm)
    ckpt = cfg.model.encoder.checkpoint
    if ckpt and not ckpt.startswith("zoo:"):
        resolve_checkpoint(ckpt)
    if ckpt.startswith("zoo:"):
        from mpm import zoo

        if ckpt.removeprefix("zoo:") not in zoo.ZOO:
            raise ConfigError(f"model.encoder.checkpoint: unknown zoo entry {ckpt.removeprefix('zoo:')!r}")
    if cfg.stages_of("paint"):
        build_schedulers(cfg.paint.scheduler)
    for model in ("vlm", "paint"):
        if cfg.stages_of(model):
            build_plan(cfg, model)
            build_branch_plans(cfg, model)
    for name in cfg.ablations:
        check_buildable(cfg.ablation(name))


# ------------------------------------------------------------------------------------------------
# factories for `mpm-train run plan.toml`
# ------------------------------------------------------------------------------------------------
def vlm_factory(**kwargs: Any) -> Any:
    """``[model] factory`` for mpm-train: a chat model from a ``[model]``-shaped table (``lm``, ``encoder``,
    ``bridge``, ``prompt``) plus ``seed``; its ``collate_fn`` reads sources named ``<kind>/<lang>``."""
    seed = int(kwargs.pop("seed", 0))
    spec = VLMSpec.from_dict(kwargs, path="model.kwargs")
    lm, tok = build_lm(spec.lm, seed=seed)
    vlm = build_vlm(spec, lm, tok, seed=seed)
    vlm.collate_fn = VLMCollate(vlm, prompt=spec.prompt)
    return vlm


def paint_factory(**kwargs: Any) -> Any:
    """``[model] factory`` for mpm-train: a paint model from ``lm`` (an ``[model.lm]`` table), ``paint`` (a
    ``[paint]`` table), ``resolution`` and ``seed``; its ``collate_fn`` reads sources named ``<kind>/<lang>``."""
    seed = int(kwargs.pop("seed", 0))
    resolution = int(kwargs.pop("resolution", 32))
    lm_spec = LMSpec.from_dict(kwargs.pop("lm", {}), path="model.kwargs.lm")
    spec = PaintSpec.from_dict(kwargs.pop("paint", {}), path="model.kwargs.paint")
    if kwargs:
        raise ConfigError(
            f"model.kwargs: unknown key(s) {sorted(kwargs)}; paint_factory takes lm, paint, resolution, seed"
        )
    lm, tok = build_lm(lm_spec, seed=seed)
    model = build_paint(spec, lm, tok, resolution=resolution, seed=seed)
    c = spec.conditioning
    if c.source == "states" and c.space == "pivot":
        raise ConfigError(
            "model.kwargs.paint.conditioning.space: 'pivot' is chosen by the recipe (mpm train / mpm demo), "
            "which the mpm-train factory does not run; set space = 'fixed' with template, pooling and layer"
        )
    states = None
    if c.source == "states":
        from mpm.painting import PivotStates

        states = PivotStates(
            lm, tok, model_name=lm_spec.name, template=c.template, layer=c.layer, pooling=c.pooling
        )
    model.collate_fn = PaintCollate(
        tokenizer=tok, resolution=resolution, max_length=c.max_length, states=states
    )
    return model


def separate_lm(lm: Any, cfg: RecipeConfig) -> Any:
    """The LM the paint model conditions on: the same object, or a copy when a chat stage changes the LM
    (LoRA adapters or LM training must not reach the paint model's frozen pivot)."""
    changes_lm = any(s.trainable.get("lm", False) is not False for s in cfg.stages_of("vlm").values())
    return copy.deepcopy(lm) if changes_lm and cfg.stages_of("paint") else lm
