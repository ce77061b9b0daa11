"""LLM stages: peft LoRA (the ``peft`` extra) and gradient checkpointing on a tiny transformers LM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from mpm_train import DataConfig, DataSource, LoraSpec, StageConfig, load_weights, run_stage, write_shards

pytest.importorskip("transformers")  # not a dependency of mpm-train: these tests need the dev environment

TEXTS = [
    "a red apple on the table",
    "the cat sits on the mat",
    "un gato rojo",
    "une pomme rouge",
    "eine grüne Katze",
    "a green tree in the park",
    "红苹果",
    "яблоко",
]


class TinyChat(nn.Module):
    """A Trainable around a causal LM: stage 'lora' trains adapters only, 'full' trains everything."""

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.lm = lm

    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        return [] if stage == "lora" else list(self.lm.parameters())

    def training_step(self, batch: dict[str, torch.Tensor]) -> Any:
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        return self.lm(**batch, labels=labels)  # a transformers ModelOutput: has .loss


@pytest.fixture
def text_shards(tmp_path: Path) -> str:
    write_shards(
        ({"key": f"t{i:03d}", "json": {"text": TEXTS[i % len(TEXTS)]}} for i in range(32)),
        tmp_path / "text" / "t-%04d.tar",
        max_count=8,
    )
    return str(tmp_path / "text" / "t-*.tar")


def _cfg(glob_: str, **kw: Any) -> StageConfig:
    base: dict[str, Any] = {
        "name": "lora",
        "steps": 4,
        "batch_size": 4,
        "lr": 1e-2,
        "log_every": 2,
        "data": DataConfig(sources=(DataSource("text", (glob_,)),), require_image=False),
    }
    base.update(kw)
    return StageConfig(**base)


def _collate(tok: Any) -> Any:
    def collate(samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return dict(tok([s["json"]["text"] for s in samples], padding=True, return_tensors="pt"))

    return collate


def test_lora_trains_adapters_only(
    tmp_path: Path, text_shards: str, tiny_lm: Any, tiny_tokenizer: Any
) -> None:
    pytest.importorskip("peft")
    model = TinyChat(tiny_lm("llama"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = _cfg(text_shards, lora=LoraSpec(r=2, alpha=4, target_modules=("q_proj", "v_proj")))
    res = run_stage(
        model, cfg, collate_fn=_collate(tiny_tokenizer), output_dir=tmp_path / "run", progress=False
    )
    saved = load_weights(res.weights)
    assert saved and all("lora_" in n for n in saved)
    assert len(saved) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    after = dict(model.named_parameters())
    base = {n.replace(".base_layer", ""): p for n, p in after.items()}  # peft wraps targets in base_layer
    for name, p in before.items():
        assert torch.equal(p, base[name]), f"frozen base weight {name} changed"
    assert any(not torch.equal(after[n], torch.zeros_like(after[n])) for n in saved if "lora_B" in n)
    assert res.losses[-1] < res.losses[0]


def test_gradient_checkpointing_gives_the_same_losses(
    tmp_path: Path, text_shards: str, tiny_lm: Any, tiny_tokenizer: Any
) -> None:
    plain, ckpt = TinyChat(tiny_lm("llama")), TinyChat(tiny_lm("llama"))
    cfg = _cfg(text_shards, name="full")
    a = run_stage(plain, cfg, collate_fn=_collate(tiny_tokenizer), output_dir=tmp_path / "a", progress=False)
    b = run_stage(
        ckpt,
        cfg.replace(gradient_checkpointing=True),
        collate_fn=_collate(tiny_tokenizer),
        output_dir=tmp_path / "b",
        progress=False,
    )
    assert ckpt.lm.model.gradient_checkpointing and not plain.lm.model.gradient_checkpointing
    assert b.losses == pytest.approx(a.losses, rel=1e-5)
