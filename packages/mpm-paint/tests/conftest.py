"""Local fixtures for mpm-paint tests (tiny, offline, CPU)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch


def make_tiny_vae(seed: int = 0) -> Any:
    """A 2-level AutoencoderKL (x2 downsampling, 4 latent channels)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
    ).eval()


@pytest.fixture
def small_unet(tiny_unet: Callable[..., Any]) -> Callable[..., Any]:
    """The root ``tiny_unet`` at half width (~0.1M parameters, 8x8): faster for training tests."""

    def make(cross_attention_dim: int = 32, sample_size: int = 8, in_channels: int = 3, seed: int = 0) -> Any:
        return tiny_unet(
            cross_attention_dim=cross_attention_dim,
            sample_size=sample_size,
            in_channels=in_channels,
            seed=seed,
            block_out_channels=(16, 32),
        )

    return make


@pytest.fixture
def tiny_vae() -> Callable[..., Any]:
    return make_tiny_vae


@pytest.fixture
def conditioner(tiny_lm: Callable[..., Any], tiny_tokenizer: Any) -> Any:
    from mpm_paint import LLMConditioner

    torch.manual_seed(0)
    return LLMConditioner(tiny_lm("llama"), tiny_tokenizer, out_dim=32)


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """Tiny models run fastest single-threaded on the shared 2-core machine (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
