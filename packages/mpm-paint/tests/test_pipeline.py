"""MPMPaintPipeline: equality with a plain diffusers loop, batching, save/load, hooks, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UNet2DConditionModel,
)
from diffusers.utils.torch_utils import randn_tensor

from mpm_paint import Conditioning, LLMConditioner, MPMPaintPipeline, PaintHooks

SCHEDULERS = [DDPMScheduler, DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler]


def _pipe(unet: Any, conditioner: Any = None, scheduler: Any = None, vae: Any = None) -> MPMPaintPipeline:
    pipe = MPMPaintPipeline(
        unet=unet, scheduler=scheduler or DDIMScheduler(), vae=vae, conditioner=conditioner
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_loop(
    unet: UNet2DConditionModel,
    scheduler: Any,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    *,
    steps: int,
    guidance: float,
    size: int,
    seed: int,
) -> torch.Tensor:
    """Classifier-free guidance sampling written directly against diffusers components."""
    gen = torch.Generator().manual_seed(seed)
    x = randn_tensor((cond.shape[0], unet.config.in_channels, size, size), generator=gen, dtype=torch.float32)
    scheduler.set_timesteps(steps)
    x = x * scheduler.init_noise_sigma
    extra = {"generator": gen} if isinstance(scheduler, DDPMScheduler) else {}
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(torch.cat([x, x]), t)
        eps = unet(inp, t, encoder_hidden_states=torch.cat([uncond, cond])).sample
        eps_u, eps_c = eps.chunk(2)
        x = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, x, **extra).prev_sample
    return x


@pytest.mark.parametrize("scheduler_cls", SCHEDULERS, ids=lambda c: c.__name__)
def test_pipeline_equals_plain_diffusers_loop(scheduler_cls: Any, tiny_unet: Any) -> None:
    unet = tiny_unet()
    torch.manual_seed(1)
    cond, uncond = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    ref = reference_loop(unet, scheduler_cls(), cond, uncond, steps=4, guidance=5.0, size=16, seed=7)
    pipe = _pipe(unet, scheduler=scheduler_cls())
    out = pipe(
        prompt_embeds=cond,
        negative_prompt_embeds=uncond,
        num_inference_steps=4,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(7),
        output_type="latent",
    ).images
    assert out.shape == ref.shape == (2, 3, 16, 16)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


def test_prompts_batching_and_output_types(tiny_unet: Any, conditioner: LLMConditioner) -> None:
    pipe = _pipe(tiny_unet(), conditioner)
    kw: dict[str, Any] = {"num_inference_steps": 2, "num_images_per_prompt": 2}
    pil = pipe(["a red apple", "红苹果"], **kw, generator=torch.Generator().manual_seed(0)).images
    assert len(pil) == 4 and all(isinstance(i, PIL.Image.Image) and i.size == (16, 16) for i in pil)
    arr = pipe(
        ["a red apple", "红苹果"], **kw, output_type="np", generator=torch.Generator().manual_seed(0)
    ).images
    assert isinstance(arr, np.ndarray) and arr.shape == (4, 16, 16, 3)
    np.testing.assert_allclose(np.asarray(pil[3], dtype=np.float32) / 255, arr[3], atol=1 / 255 + 1e-6)
    pt = pipe("a red apple", output_type="pt", height=32, width=16, num_inference_steps=2).images
    assert pt.shape == (1, 3, 32, 16) and 0 <= float(pt.min()) and float(pt.max()) <= 1


def test_prompt_path_matches_prompt_embeds(tiny_unet: Any, conditioner: LLMConditioner) -> None:
    pipe = _pipe(tiny_unet(), conditioner)
    kw: dict[str, Any] = {"num_inference_steps": 2, "output_type": "latent", "negative_prompt": "the cat"}
    a = pipe(["a red apple", "小猫"], generator=torch.Generator().manual_seed(3), **kw).images
    with torch.no_grad():
        cond, neg = conditioner(["a red apple", "小猫"]), conditioner(["the cat"])
    kw.pop("negative_prompt")
    b = pipe(
        prompt_embeds=cond, negative_prompt_embeds=neg, generator=torch.Generator().manual_seed(3), **kw
    ).images
    assert torch.allclose(a, b, atol=1e-5)
    c = pipe(
        ["a red apple", "小猫"],
        generator=torch.Generator().manual_seed(3),
        num_inference_steps=2,
        output_type="latent",
    ).images
    assert not torch.allclose(a, c, atol=1e-4), "the negative prompt must change the result"


def test_guidance_off_uses_a_single_branch(tiny_unet: Any, conditioner: LLMConditioner) -> None:
    pipe = _pipe(tiny_unet(), conditioner)
    calls: list[int] = []
    hook = pipe.unet.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    pipe(["a", "b"], guidance_scale=1.0, num_inference_steps=3, output_type="latent")
    pipe(["a", "b"], guidance_scale=3.0, num_inference_steps=3, output_type="latent")
    hook.remove()
    assert calls == [2, 2, 2, 4, 4, 4]


def test_latent_space_with_vae(tiny_vae: Any, small_unet: Any, conditioner: LLMConditioner) -> None:
    vae = tiny_vae()
    pipe = _pipe(small_unet(in_channels=4, sample_size=8), conditioner, vae=vae)
    assert pipe.vae_scale_factor == 2 and pipe.downsampling_factor == 4
    gen = torch.Generator().manual_seed(0)
    out = pipe("a red apple", num_inference_steps=2, output_type="pt", generator=gen)
    assert out.images.shape == (1, 3, 16, 16)
    lat = pipe(
        "a red apple", num_inference_steps=2, output_type="latent", generator=torch.Generator().manual_seed(0)
    ).images
    assert lat.shape == (1, 4, 8, 8)
    with torch.no_grad():
        decoded = vae.decode(lat / vae.config.scaling_factor).sample
    assert torch.allclose((decoded / 2 + 0.5).clamp(0, 1), out.images, atol=1e-5)


@pytest.mark.parametrize("save_lm", [True, False])
def test_save_and_load_round_trip(
    save_lm: bool, tiny_unet: Any, tiny_lm: Any, tiny_tokenizer: Any, tmp_path: Path
) -> None:
    lm_dir = tmp_path / "lm"
    lm = tiny_lm("gemma3")
    lm.save_pretrained(lm_dir)
    tiny_tokenizer.save_pretrained(lm_dir)
    cond = LLMConditioner(lm, tiny_tokenizer, out_dim=32, language_model_path=str(lm_dir))
    with torch.no_grad():
        cond.projection[1].bias.fill_(0.3)
    pipe = _pipe(tiny_unet(), cond, scheduler=DPMSolverMultistepScheduler())
    pipe.save_pretrained(tmp_path / "pipe", save_language_model=save_lm)
    assert (tmp_path / "pipe" / "conditioner" / "language_model").exists() == save_lm
    assert cond.save_language_model is None, "the save choice must not stick to the conditioner"
    assert not list((tmp_path / "pipe").rglob("*.bin"))
    loaded = MPMPaintPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.conditioner, LLMConditioner) and isinstance(
        loaded.scheduler, DPMSolverMultistepScheduler
    )
    assert loaded.vae is None
    kw: dict[str, Any] = {"num_inference_steps": 2, "output_type": "latent"}
    a = pipe("红苹果", generator=torch.Generator().manual_seed(0), **kw).images
    b = loaded("红苹果", generator=torch.Generator().manual_seed(0), **kw).images
    for name in ("unet", "conditioner"):
        before, after = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), name
    with torch.no_grad():
        assert torch.equal(cond(["红苹果"]).hidden_states, loaded.conditioner(["红苹果"]).hidden_states)
    # Bit-identical weights; the loaded (memory-mapped) tensors can take other CPU kernels, and a random
    # UNet's 2-step sample reaches |x| ~ 1e2, so the samples are compared relatively.
    torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


def test_hooks_are_off_by_default(tiny_unet: Any, conditioner: LLMConditioner) -> None:
    pipe = _pipe(tiny_unet(), conditioner)
    assert pipe.hooks == PaintHooks()
    out = pipe("a", num_inference_steps=1, output_type="pt")
    assert out.nsfw_content_detected is None and out.scores is None


def test_prompt_filter_blocks_before_generation(tiny_unet: Any, conditioner: LLMConditioner) -> None:
    pipe = _pipe(tiny_unet(), conditioner)
    seen: list[list[str]] = []

    def prompt_filter(prompts: list[str]) -> list[bool]:
        seen.append(prompts)
        return ["bad" in p for p in prompts]

    pipe.hooks = PaintHooks(prompt_filter=prompt_filter)
    batches: list[int] = []
    hook = pipe.unet.register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    out = pipe(
        ["a red apple", "a bad thing"], num_inference_steps=1, num_images_per_prompt=2, output_type="pt"
    )
    hook.remove()
    assert seen == [["a red apple", "a bad thing"]]
    assert batches == [4], "only the allowed prompt (x2 images, x2 guidance branches) is generated"
    assert out.nsfw_content_detected == [False, False, True, True]
    assert float(out.images[2:].abs().sum()) == 0.0 and float(out.images[:2].sum()) > 0
    out = pipe(["bad"], num_inference_steps=1, output_type="pil")
    assert out.nsfw_content_detected == [True] and np.asarray(out.images[0]).max() == 0


def test_image_filter_blacks_out_flagged_images(tiny_unet: Any, conditioner: LLMConditioner) -> None:
    pipe = _pipe(tiny_unet(), conditioner)
    pipe.hooks = PaintHooks(image_filter=lambda images, prompts: [i % 2 == 1 for i in range(len(images))])
    out = pipe("a red apple", num_inference_steps=1, num_images_per_prompt=4, output_type="pt")
    assert out.nsfw_content_detected == [False, True, False, True]
    assert float(out.images[1].abs().sum()) == 0.0 and float(out.images[0].sum()) > 0


def test_reranker_keeps_the_best_of_k(tiny_unet: Any, conditioner: LLMConditioner) -> None:
    pipe = _pipe(tiny_unet(), conditioner)
    kw: dict[str, Any] = {"num_inference_steps": 2, "output_type": "pt"}
    plain = pipe(["a", "b"], num_images_per_prompt=6, generator=torch.Generator().manual_seed(0), **kw).images
    brightness = plain.mean(dim=(1, 2, 3)).view(2, 6)
    pipe.hooks = PaintHooks(scorer=lambda images, prompts: images.mean(dim=(1, 2, 3)), rerank_factor=3)
    out = pipe(["a", "b"], num_images_per_prompt=2, generator=torch.Generator().manual_seed(0), **kw)
    best = brightness.topk(2, dim=1).values.flatten()
    assert out.images.shape == (4, 3, 16, 16)
    assert torch.allclose(out.scores, best, atol=1e-6)
    assert torch.allclose(out.images.mean(dim=(1, 2, 3)), best, atol=1e-6)
    with pytest.raises(ValueError, match="needs a scorer"):
        PaintHooks(rerank_factor=2)


def test_error_height_not_divisible(tiny_unet: Any, conditioner: LLMConditioner) -> None:
    pipe = _pipe(tiny_unet(), conditioner)
    with pytest.raises(ValueError, match=r"height=17 is not divisible by 2"):
        pipe("a", height=17, width=16, num_inference_steps=1)
    with pytest.raises(ValueError, match=r"width=15 is not divisible by 2"):
        pipe("a", height=16, width=15, num_inference_steps=1)


def test_error_cross_attention_width(tiny_unet: Any, tiny_lm: Any, tiny_tokenizer: Any) -> None:
    cond = LLMConditioner(tiny_lm("llama"), tiny_tokenizer, out_dim=48)
    with pytest.raises(ValueError, match=r"cross_attention_dim is 32 .* 48-wide"):
        MPMPaintPipeline(unet=tiny_unet(), scheduler=DDIMScheduler(), conditioner=cond)
    pipe = _pipe(tiny_unet())
    with pytest.raises(
        ValueError, match=r"prompt_embeds has width 40 but the UNet's cross_attention_dim is 32"
    ):
        pipe(prompt_embeds=torch.zeros(1, 3, 40), num_inference_steps=1)


def test_error_empty_prompt_list_and_bad_arguments(tiny_unet: Any, conditioner: LLMConditioner) -> None:
    pipe = _pipe(tiny_unet(), conditioner)
    with pytest.raises(ValueError, match="empty list"):
        pipe([], num_inference_steps=1)
    with pytest.raises(ValueError, match="exactly one of prompt and prompt_embeds"):
        pipe(num_inference_steps=1)
    with pytest.raises(ValueError, match="no conditioner"):
        _pipe(tiny_unet())("a", num_inference_steps=1)
    with pytest.raises(ValueError, match="2 negative prompts for 3 prompts"):
        pipe(["a", "b", "c"], negative_prompt=["x", "y"], num_inference_steps=1)


def test_pipeline_without_conditioner_uses_zero_uncond(tiny_unet: Any) -> None:
    pipe = _pipe(tiny_unet())
    cond = Conditioning.from_embeds(torch.randn(1, 4, 32))
    a = pipe(
        prompt_embeds=cond,
        num_inference_steps=2,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images
    b = pipe(
        prompt_embeds=cond,
        negative_prompt_embeds=torch.zeros(1, 1, 32),
        num_inference_steps=2,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.gpu
def test_pipeline_equals_plain_loop_on_cuda(tiny_unet: Any) -> None:
    unet = tiny_unet().to("cuda")
    cond, uncond = torch.randn(2, 5, 32, device="cuda"), torch.randn(2, 5, 32, device="cuda")
    gen = torch.Generator("cuda").manual_seed(7)
    x = randn_tensor((2, 3, 16, 16), generator=gen, device=torch.device("cuda"), dtype=torch.float32)
    sched = DDIMScheduler()
    sched.set_timesteps(4, device="cuda")
    x = x * sched.init_noise_sigma
    for t in sched.timesteps:
        eps_u, eps_c = unet(
            torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])
        ).sample.chunk(2)
        x = sched.step(eps_u + 5.0 * (eps_c - eps_u), t, x).prev_sample
    pipe = _pipe(unet, scheduler=DDIMScheduler())
    out = pipe(
        prompt_embeds=cond,
        negative_prompt_embeds=uncond,
        num_inference_steps=4,
        guidance_scale=5.0,
        generator=torch.Generator("cuda").manual_seed(7),
        output_type="latent",
    ).images
    assert out.device.type == "cuda" and torch.allclose(out, x, atol=1e-4)
