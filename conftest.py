"""Shared test conventions for every package, integration and cross-package tests.

Loaded by pytest for any test under the repository root (it is the rootdir ``conftest.py``), so
package tests use these fixtures without importing another mpm package. Everything is offline:
tiny randomly initialised models built from configs, and a tokenizer trained in memory.

Fixtures
--------
``tiny_tokenizer``      a ``PreTrainedTokenizerFast`` (byte-level BPE, 320 tokens, pad/eos/bos set), a
                        fresh copy for each test
``tiny_lm``             factory ``tiny_lm(arch="llama", vocab_size=None, **overrides)`` for the
                        causal-LM architectures ``llama``, ``qwen2``, ``gemma3``, ``gpt2``
``tiny_lm_config``      factory returning the transformers config instead of the model
``tiny_vit``            factory ``tiny_vit(img_size=32, **kw)`` -> a 2-block timm ViT
``tiny_unet``           factory ``tiny_unet(cross_attention_dim=32, sample_size=16, in_channels=3, block_out_channels=(32, 64))``
Heavy libraries are imported lazily so that a package's isolated environment (which may not have
diffusers or timm) can still run its own tests.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CAUSAL_LM_ARCHS = ("llama", "qwen2", "gemma3", "gpt2")

_TOKENIZER_CORPUS = [
    "a red apple on the table",
    "a green tree in the park",
    "the cat sits on the mat",
    "USER: describe the image. ASSISTANT: a smiling face with sunglasses",
    "un gato rojo",
    "eine grüne Katze",
    "une pomme rouge",
    "红苹果",
    "小猫",
    "りんご",
    "사과",
    "яблоко",
    "تفاحة",
    "0123456789 ,.:;!?\"'()[]{}<>/\\-_=+*&^%$#@",
]


def make_tiny_tokenizer() -> Any:
    """A byte-level BPE tokenizer trained in memory (no files, no network)."""
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
    tok.train_from_iterator(_TOKENIZER_CORPUS, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def make_tiny_lm_config(arch: str = "llama", vocab_size: int = 320, **overrides: Any) -> Any:
    """A transformers config for a ~0.2M-parameter causal LM of the given architecture."""
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
    if arch == "llama":
        cfg = transformers.LlamaConfig(**decoder, **common)
    elif arch == "qwen2":
        cfg = transformers.Qwen2Config(**decoder, **common)
    elif arch == "gemma3":
        cfg = transformers.Gemma3TextConfig(**decoder, head_dim=8, sliding_window=16, **common)
    elif arch == "gpt2":
        cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **common)
    else:
        raise ValueError(f"unknown tiny arch {arch!r}; choose from {CAUSAL_LM_ARCHS}")
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def make_tiny_lm(arch: str = "llama", vocab_size: int = 320, seed: int = 0, **overrides: Any) -> Any:
    """A tiny randomly initialised ``AutoModelForCausalLM`` in eval mode (fp32)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(make_tiny_lm_config(arch, vocab_size, **overrides))
    return model.eval()


def make_tiny_vit(img_size: int = 32, seed: int = 0, **kw: Any) -> Any:
    """A 2-block timm ViT (patch 8, width 32) without pretrained weights."""
    import timm
    import torch

    torch.manual_seed(seed)
    args: dict[str, Any] = {
        "img_size": img_size,
        "patch_size": 8,
        "embed_dim": 32,
        "depth": 2,
        "num_heads": 4,
        "num_classes": 0,
    }
    args.update(kw)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args).eval()


def make_tiny_unet(
    cross_attention_dim: int = 32,
    sample_size: int = 16,
    in_channels: int = 3,
    seed: int = 0,
    block_out_channels: tuple[int, int] = (32, 64),
) -> Any:
    """A ~0.8M-parameter diffusers ``UNet2DConditionModel`` (~0.1M with ``block_out_channels=(16, 32)``)."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        layers_per_block=1,
        block_out_channels=block_out_channels,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )


@pytest.fixture(autouse=True)
def _deterministic_threads() -> Iterator[None]:
    """Keep CPU tests single-process friendly and reproducible."""
    try:
        import torch
    except ImportError:  # a package without torch (e.g. mpm-bench alone)
        yield
        return
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def _tiny_tokenizer_template() -> Any:
    return make_tiny_tokenizer()


@pytest.fixture
def tiny_tokenizer(_tiny_tokenizer_template: Any) -> Any:
    """A fresh copy per test: models add tokens (e.g. ``<image>``) to the tokenizer they get."""
    import copy

    return copy.deepcopy(_tiny_tokenizer_template)


@pytest.fixture
def tiny_lm() -> Callable[..., Any]:
    return make_tiny_lm


@pytest.fixture
def tiny_lm_config() -> Callable[..., Any]:
    return make_tiny_lm_config


@pytest.fixture
def tiny_vit() -> Callable[..., Any]:
    return make_tiny_vit


@pytest.fixture
def tiny_unet() -> Callable[..., Any]:
    return make_tiny_unet


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests when CUDA is not available."""
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_sessionstart(session: pytest.Session) -> None:
    """In a per-package environment (``hatch run pkg.<name>:test``), prove the isolation first.

    The matrix environment sets ``MPM_ISOLATED_PACKAGE``; if any sibling mpm package can be imported
    there, the environment does not prove independence and the run stops with an error.
    """
    import importlib.util

    isolated = os.environ.get("MPM_ISOLATED_PACKAGE")
    if not isolated:
        return
    own = "mpm_" + isolated.removeprefix("mpm-").replace("-", "_")
    if importlib.util.find_spec(own) is None:
        raise pytest.UsageError(f"isolated environment for {isolated} cannot import {own}")
    siblings = ["mpm_align", "mpm_vision", "mpm_paint", "mpm_train", "mpm_bench", "mpm"]
    leaked = [m for m in siblings if m != own and importlib.util.find_spec(m) is not None]
    if leaked:
        raise pytest.UsageError(f"isolated environment for {isolated} can import {leaked}: not isolated")
