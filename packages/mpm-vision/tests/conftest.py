"""Local fixtures for mpm-vision: a tiny vision-language model factory built on the root fixtures."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from mpm_vision import VisionLanguageModel, create_bridge, create_encoder

CLIP_VIT = "vit_base_patch16_clip_quickgelu_224"


@pytest.fixture
def fresh_tokenizer(tiny_tokenizer: Any) -> Any:
    """A private copy: the model adds its image token, which must not leak into other tests."""
    return copy.deepcopy(tiny_tokenizer)


def tiny_encoder(image_size: int = 32, feature_layer: int = -2, **kw: Any) -> Any:
    torch.manual_seed(1)
    args: dict[str, Any] = {"patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 4, "mlp_ratio": 2}
    args.update(kw)
    return create_encoder(CLIP_VIT, image_size=image_size, feature_layer=feature_layer, **args)


@pytest.fixture
def make_vlm(tiny_lm: Callable[..., Any], tiny_tokenizer: Any) -> Callable[..., VisionLanguageModel]:
    def make(
        arch: str = "llama",
        bridge: str = "mlp",
        *,
        vocab_size: int = 336,
        num_queries: int = 4,
        lm_overrides: dict[str, Any] | None = None,
        **vlm_kw: Any,
    ) -> VisionLanguageModel:
        lm = tiny_lm(arch, vocab_size=vocab_size, **(lm_overrides or {}))
        enc = tiny_encoder()
        torch.manual_seed(2)
        hidden = lm.get_input_embeddings().weight.shape[1]
        br = create_bridge(bridge, in_dim=enc.feature_dim, out_dim=hidden, num_queries=num_queries)
        return VisionLanguageModel(enc, br, lm, copy.deepcopy(tiny_tokenizer), **vlm_kw).eval()

    return make


def _image(seed: int, size: tuple[int, int] = (40, 36), mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


@pytest.fixture
def images() -> list[Image.Image]:
    return [_image(i) for i in range(4)]
