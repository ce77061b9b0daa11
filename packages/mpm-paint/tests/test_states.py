"""StateConditioner: precomputed pivot states -> conditioning; PaintTrainable trains on prompt_embeds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from mpm_paint import LLMConditioner, PaintTrainable, PaintTrainingConfig, StateConditioner


def test_pooled_states_become_num_tokens_tokens() -> None:
    torch.manual_seed(0)
    cond = StateConditioner(in_dim=12, out_dim=8, num_tokens=3)
    out = cond(torch.randn(5, 12))
    assert out.hidden_states.shape == (5, 3, 8) and out.attention_mask.tolist() == [[1, 1, 1]] * 5
    # per-token states with a mask: every input position gives num_tokens tokens, the mask follows
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = cond(torch.randn(2, 3, 12), mask)
    assert out.hidden_states.shape == (2, 9, 8)
    assert out.attention_mask.tolist() == [[1, 1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 0, 0]]


def test_input_normalisation_makes_the_offset_and_scale_of_a_state_irrelevant() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 16)
    normed = StateConditioner(in_dim=16, out_dim=8)
    assert torch.allclose(normed(x).hidden_states, normed(10 * x + 5.0).hidden_states, atol=1e-4)
    raw = StateConditioner(in_dim=16, out_dim=8, normalize_input=False)
    raw.load_state_dict(normed.state_dict())
    assert not torch.allclose(raw(x).hidden_states, raw(10 * x + 5.0).hidden_states, atol=1e-2)


def test_bad_states_are_refused_with_the_fix() -> None:
    cond = StateConditioner(in_dim=16, out_dim=8)
    with pytest.raises(ValueError, match="in_dim=16"):
        cond(torch.randn(2, 10))
    with pytest.raises(ValueError, match=r"\[B, D\] or \[B, L, D\]"):
        cond(torch.randn(16))
    with pytest.raises(ValueError, match="NaN"):
        cond(torch.full((1, 16), float("nan")))
    with pytest.raises(ValueError, match="attention_mask only goes with"):
        cond(torch.randn(2, 16), torch.ones(2, 1))
    with pytest.raises(ValueError, match="num_tokens must be >= 1"):
        StateConditioner(in_dim=16, out_dim=8, num_tokens=0)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cond = StateConditioner(in_dim=16, out_dim=8, num_tokens=2, hidden_dim=24)
    cond.save_pretrained(tmp_path / "c")
    assert (tmp_path / "c" / "diffusion_pytorch_model.safetensors").is_file()
    back = StateConditioner.from_pretrained(tmp_path / "c")
    x = torch.randn(3, 16)
    assert back.num_tokens == 2 and torch.equal(back(x).hidden_states, cond(x).hidden_states)


def test_trainable_needs_prompt_embeds_and_its_parts_cover_the_conditioner(small_unet: Any) -> None:
    cond = StateConditioner(in_dim=16, out_dim=32)
    model = PaintTrainable(unet=small_unet(), conditioner=cond, config=PaintTrainingConfig(cond_dropout=0.5))
    assert model.parts()["projection"] is cond
    assert {id(p) for p in model.stage_parameters("paint-projection")} == {id(p) for p in cond.parameters()}
    pixels = torch.rand(4, 3, 8, 8) * 2 - 1
    with pytest.raises(KeyError, match="prompt_embeds"):
        model.training_step({"pixel_values": pixels, "prompts": ["a"] * 4})
    loss = model.training_step({"pixel_values": pixels, "prompt_embeds": torch.randn(4, 16)})
    loss.backward()
    assert cond.projection[0].weight.grad is not None and loss.item() > 0
    assert model.to_pipeline().conditioner is None  # the pipeline is fed prompt_embeds


def test_llm_conditioner_refuses_prompt_embeds(small_unet: Any, conditioner: LLMConditioner) -> None:
    model = PaintTrainable(unet=small_unet(), conditioner=conditioner)
    with pytest.raises(KeyError, match="StateConditioner"):
        model.training_step({"pixel_values": torch.zeros(1, 3, 8, 8), "prompt_embeds": torch.randn(1, 48)})


def test_a_state_conditioned_model_learns_which_state_is_which_image(small_unet: Any) -> None:
    """Two states, two images: after training, each state paints (nearer to) its own image."""
    size = 4
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    images = torch.stack([torch.stack([xx, yy, -xx]), torch.stack([-yy, -xx, yy])])
    torch.manual_seed(0)
    states = torch.randn(2, 16)
    model = PaintTrainable(
        unet=small_unet(sample_size=size),
        conditioner=StateConditioner(in_dim=16, out_dim=32, num_tokens=2),
        scheduler=DDPMScheduler(prediction_type="v_prediction"),
        config=PaintTrainingConfig(cond_dropout=0.0),
    )
    opt = torch.optim.AdamW(model.stage_parameters("paint-full"), lr=5e-3, weight_decay=0.0)
    batch = {"pixel_values": images.repeat(4, 1, 1, 1), "prompt_embeds": states.repeat(4, 1)}
    torch.manual_seed(1)
    model.train()
    for _ in range(150):
        loss = model.training_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    pipe = model.to_pipeline(DDIMScheduler.from_config(model.scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        prompt_embeds=model.conditioner(states),
        num_inference_steps=20,
        guidance_scale=1.0,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images
    out = out * 2 - 1  # [2, 3, H, W] in [-1, 1]
    err = ((out[:, None] - images[None]) ** 2).mean(dim=(2, 3, 4))  # [painted, target]
    assert err[0, 0] < err[0, 1] and err[1, 1] < err[1, 0], err
