"""Bad input gets a clear error: sizes, guidance, non-finite conditioning, empty images, pickled weights."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler

from mpm_paint import Conditioning, LLMConditioner, MPMPaintPipeline
from mpm_paint.training import collate


def _pipe(unet: Any, conditioner: Any = None) -> MPMPaintPipeline:
    pipe = MPMPaintPipeline(unet=unet, scheduler=DDIMScheduler(), conditioner=conditioner)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_zero_size_is_an_error_not_the_default(small_unet: Any) -> None:
    """Before: height=0 (falsy) silently became the default size."""
    pipe = _pipe(small_unet())
    embeds = torch.randn(1, 3, 32)
    for kw, name in (({"height": 0}, "height=0"), ({"width": 0}, "width=0"), ({"height": -8}, "height=-8")):
        with pytest.raises(ValueError, match=rf"{name}: the image size must be a positive multiple of 2"):
            pipe(prompt_embeds=embeds, num_inference_steps=1, output_type="latent", **kw)
    with pytest.raises(TypeError, match=r"height must be an integer number of pixels, got 8\.0"):
        pipe(prompt_embeds=embeds, num_inference_steps=1, height=8.0)  # type: ignore[arg-type]
    out = pipe(prompt_embeds=embeds, num_inference_steps=1, output_type="latent")  # None: the default
    assert out.images.shape[-2:] == (8, 8)


@pytest.mark.parametrize("scale", [math.nan, math.inf, -math.inf, "7.5", True])
def test_guidance_scale_must_be_a_finite_number(small_unet: Any, scale: Any) -> None:
    """Before: guidance_scale=NaN failed `> 1`, so guidance was silently off."""
    pipe = _pipe(small_unet())
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        pipe(prompt_embeds=torch.randn(1, 3, 32), num_inference_steps=1, guidance_scale=scale)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_conditioning_is_refused(small_unet: Any, conditioner: LLMConditioner, bad: float) -> None:
    """Before: NaN prompt_embeds painted NaN (black) images without a word."""
    pipe = _pipe(small_unet(), conditioner)
    embeds = torch.randn(3, 4, 32)
    embeds[1, 2, 5] = bad
    kw: dict[str, Any] = {"num_inference_steps": 1, "output_type": "latent"}
    with pytest.raises(ValueError, match=r"^prompt_embeds holds NaN or inf values in item\(s\) 1 of 3"):
        pipe(prompt_embeds=embeds, **kw)
    with pytest.raises(ValueError, match=r"^prompt_embeds holds NaN"):
        pipe(prompt_embeds=Conditioning.from_embeds(embeds), **kw)
    with pytest.raises(ValueError, match=r"^negative_prompt_embeds holds NaN or inf values in item\(s\) 1"):
        pipe(prompt_embeds=torch.randn(3, 4, 32), negative_prompt_embeds=embeds, **kw)
    latents = torch.randn(1, 3, 8, 8)
    latents[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match=r"^latents holds NaN or inf values in item\(s\) 0 of 1"):
        pipe(prompt_embeds=torch.randn(1, 4, 32), latents=latents, **kw)
    # an LM that overflows: its output is checked too
    conditioner.projection[1].bias.data.fill_(math.nan)
    with pytest.raises(ValueError, match=r"^the conditioner output holds NaN or inf values"):
        pipe("a red apple", **kw)


@pytest.mark.parametrize("size", [(0, 0), (0, 12), (12, 0)])
def test_collate_names_the_sample_with_an_empty_image(size: tuple[int, int]) -> None:
    """Before: ZeroDivisionError in the resize (and a [1, 3, 0, 0] batch without resolution=)."""
    ok = PIL.Image.new("RGB", (12, 12))
    samples = [
        {"image": ok, "caption": "a"},
        {"image": PIL.Image.new("RGBA", size), "caption": "b", "__key__": "e7"},
    ]
    w, h = size
    for resolution in (8, None):
        with pytest.raises(ValueError, match=rf"^sample 1 \('e7'\): the image is empty \({w}x{h} pixels\)"):
            collate(samples, resolution=resolution)
    with pytest.raises(ValueError, match="resolution must be a positive number of pixels, got 0"):
        collate(samples[:1], resolution=0)


def test_pickled_unet_is_refused(small_unet: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: unet/diffusion_pytorch_model.bin loaded through torch.load(weights_only=True), silently."""
    from safetensors.torch import load_file

    _pipe(small_unet()).save_pretrained(tmp_path / "pipe")
    unet_dir = tmp_path / "pipe" / "unet"
    (st,) = unet_dir.glob("*.safetensors")
    torch.save(load_file(st), unet_dir / "diffusion_pytorch_model.bin")
    st.unlink()

    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("torch.load (the pickle machinery) was called")

    monkeypatch.setattr(torch, "load", refuse)
    with pytest.raises(
        ValueError,
        match=r"unet has only pickled weights \(diffusion_pytorch_model\.bin\).*"
        r"from diffusers import UNet2DConditionModel as C",
    ):
        MPMPaintPipeline.from_pretrained(tmp_path / "pipe")
    with pytest.raises(ValueError, match="use_safetensors=False is not supported"):
        MPMPaintPipeline.from_pretrained(tmp_path / "pipe", use_safetensors=False)
