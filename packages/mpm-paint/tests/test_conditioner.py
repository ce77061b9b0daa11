"""LLMConditioner: LM hidden states -> Linear(no bias) -> LayerNorm, masks, freezing, save/load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mpm_paint import Conditioning, LLMConditioner, tokenize_prompts


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2"])
def test_any_causal_lm_gives_projected_conditioning(arch: str, tiny_lm: Any, tiny_tokenizer: Any) -> None:
    cond = LLMConditioner(tiny_lm(arch), tiny_tokenizer, out_dim=24)
    out = cond(["a red apple", "红苹果", "un gato rojo muy grande"])
    assert isinstance(out, Conditioning)
    assert out.hidden_states.shape[0] == 3 and out.dim == 24
    assert out.attention_mask.shape == out.hidden_states.shape[:2]
    lengths = out.attention_mask.sum(1)
    assert lengths.max() == out.length and bool((lengths >= 1).all())
    # LayerNorm output: zero mean, unit variance over the feature axis (fresh affine params).
    real = out.hidden_states[out.attention_mask.bool()]
    assert torch.allclose(real.mean(-1), torch.zeros(len(real)), atol=1e-5)


def test_structure_is_linear_without_bias_then_layernorm(conditioner: LLMConditioner) -> None:
    lin, norm = conditioner.projection
    assert isinstance(lin, nn.Linear) and lin.bias is None
    assert (lin.in_features, lin.out_features) == (32, 32)
    assert isinstance(norm, nn.LayerNorm)


def test_lm_frozen_projection_trainable(conditioner: LLMConditioner) -> None:
    conditioner.train()
    assert not conditioner.language_model.training, "the frozen LM must stay in eval mode"
    out = conditioner(["a red apple", "the cat"])
    out.hidden_states.pow(2).sum().backward()
    assert all(p.grad is None for p in conditioner.language_model.parameters())
    assert all(not p.requires_grad for p in conditioner.language_model.parameters())
    assert all(p.grad is not None for p in conditioner.projection.parameters())
    assert conditioner.trainable_parameters() == list(conditioner.projection.parameters())


def test_right_padding_keeps_hidden_states(conditioner: LLMConditioner) -> None:
    alone = conditioner(["a red apple"])
    both = conditioner(["a red apple", "a green tree in the park and the cat sits on the mat"])
    n = alone.length
    assert both.length > n
    assert torch.allclose(both.hidden_states[0, :n], alone.hidden_states[0], atol=1e-5)
    assert both.attention_mask[0, n:].sum() == 0


def test_layer_selection_and_range(tiny_lm: Any, tiny_tokenizer: Any) -> None:
    lm = tiny_lm("llama")
    ids, mask = tokenize_prompts(tiny_tokenizer, ["a red apple"])
    last = LLMConditioner(lm, tiny_tokenizer, out_dim=8).lm_hidden_states(ids, mask)
    first = LLMConditioner(lm, tiny_tokenizer, out_dim=8, layer=1).lm_hidden_states(ids, mask)
    ref = lm.base_model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert torch.allclose(last, ref[-1]) and torch.allclose(first, ref[1])
    with pytest.raises(ValueError, match=r"layer=5 is out of range.*2 layers"):
        LLMConditioner(lm, tiny_tokenizer, out_dim=8, layer=5)


def test_tokenize_prompts_never_empty_and_right_padded(tiny_tokenizer: Any) -> None:
    ids, mask = tokenize_prompts(tiny_tokenizer, ["", "a red apple"], max_length=4)
    assert ids.shape == (2, 4) and mask[0].tolist() == [1, 0, 0, 0]
    assert ids[0, 0] == tiny_tokenizer.bos_token_id
    ids, mask = tokenize_prompts(tiny_tokenizer, ["a"], max_length=6, padding="max_length")
    assert ids.shape == (1, 6) and mask[0, -1] == 0
    with pytest.raises(ValueError, match="empty"):
        tokenize_prompts(tiny_tokenizer, [])


def test_save_and_load_with_lm_weights(conditioner: LLMConditioner, tmp_path: Path) -> None:
    with torch.no_grad():
        conditioner.projection[0].weight.mul_(3.0)
    conditioner.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert "projection.safetensors" in files and "model.safetensors" in files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".ckpt")) for f in files)
    loaded = LLMConditioner.from_pretrained(tmp_path)
    prompts = ["a red apple", "小猫"]
    a, b = conditioner(prompts), loaded(prompts)
    assert torch.allclose(a.hidden_states, b.hidden_states, atol=1e-6)
    assert torch.equal(a.attention_mask, b.attention_mask)


def test_save_referencing_lm_by_path(tiny_lm: Any, tiny_tokenizer: Any, tmp_path: Path) -> None:
    lm_dir = tmp_path / "lm"
    lm = tiny_lm("qwen2")
    lm.save_pretrained(lm_dir)
    tiny_tokenizer.save_pretrained(lm_dir)
    cond = LLMConditioner(lm, tiny_tokenizer, out_dim=16, language_model_path=str(lm_dir))
    cond.save_pretrained(tmp_path / "cond")
    assert not (tmp_path / "cond" / "language_model").exists()
    loaded = LLMConditioner.from_pretrained(tmp_path / "cond")
    assert type(loaded.language_model).__name__ == "Qwen2ForCausalLM"
    assert torch.allclose(cond(["a cat"]).hidden_states, loaded(["a cat"]).hidden_states, atol=1e-6)
    with pytest.raises(ValueError, match="language_model_path"):
        LLMConditioner(lm, tiny_tokenizer, out_dim=16).save_pretrained(
            tmp_path / "x", save_language_model=False
        )


def test_conditioning_helpers() -> None:
    a = Conditioning.from_embeds(torch.ones(2, 3, 4))
    b = Conditioning(torch.ones(1, 5, 4), torch.ones(1, 5, dtype=torch.long))
    c = Conditioning.cat([a, b])
    assert c.hidden_states.shape == (3, 5, 4) and c.attention_mask[:2, 3:].sum() == 0
    assert len(a.repeat_interleave(3)) == 6
    with pytest.raises(ValueError, match=r"attention_mask shape \(2, 2\) does not match"):
        Conditioning(torch.ones(2, 3, 4), torch.ones(2, 2))
    with pytest.raises(ValueError, match="different widths"):
        Conditioning.cat([a, Conditioning.from_embeds(torch.ones(1, 3, 8))])
