"""Builders: widths read from the parts, encoder weights passed through, factories for `mpm-train run`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from mpm.builders import (
    build_encoder,
    build_lm,
    build_paint,
    build_vlm,
    check_buildable,
    lm_width,
    resolve_checkpoint,
    tiny_tokenizer,
)
from mpm.config import ConfigError, load_config


def test_widths_are_read_from_the_parts() -> None:
    cfg = load_config(
        "smoke",
        ["model.bridge.kind=perceiver", "model.bridge.num_queries=16", "model.lm.options.hidden_size=48"],
    )
    lm, tok = build_lm(cfg.model.lm, seed=0)
    assert lm_width(lm) == 48
    vlm = build_vlm(cfg.model, lm, tok)
    assert type(vlm.bridge).__name__ == "PerceiverBridge" and vlm.num_image_tokens == 16
    assert vlm.bridge.config.in_dim == vlm.encoder.feature_dim == 32
    assert vlm.bridge.config.out_dim == 48
    paint = build_paint(cfg.paint, lm, tok, resolution=16)
    assert paint.conditioner.in_dim == 48 and paint.conditioner.out_dim == cfg.paint.conditioning.width
    assert paint.unet.config["cross_attention_dim"] == paint.conditioner.out_dim
    assert paint.unet.config["sample_size"] == 16


def test_tiny_lms_are_deterministic_and_offline() -> None:
    a = tiny_tokenizer()
    b = tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab() and len(a) == 320
    cfg = load_config("smoke")
    lm1, _ = build_lm(cfg.model.lm, seed=3)
    lm2, _ = build_lm(cfg.model.lm, seed=3)
    for p, q in zip(lm1.parameters(), lm2.parameters()):
        assert torch.equal(p, q)
    for arch in ("qwen2", "gemma3", "gpt2"):
        lm, _ = build_lm(load_config("smoke", [f"model.lm.name=tiny:{arch}"]).model.lm)
        assert lm.config.model_type.startswith(arch.rstrip("3")) and lm_width(lm) == 32
    with pytest.raises(ConfigError, match=r"model\.lm\.name: unknown tiny architecture 'mamba'"):
        build_lm(load_config("smoke", ["model.lm.name=tiny:mamba"]).model.lm)
    with pytest.raises(ConfigError, match=r"model\.lm\.options\.nope: LlamaConfig has no such setting"):
        build_lm(load_config("smoke", ["model.lm.options.nope=1"]).model.lm)


def test_encoder_checkpoint_and_pretrained_pass_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import save_file

    cfg = load_config("smoke")
    torch.manual_seed(7)
    trained = build_encoder(cfg.model.encoder)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in trained.model.state_dict().items()}, str(path))
    loaded = build_encoder(load_config("smoke", [f"model.encoder.checkpoint={path}"]).model.encoder)
    torch.manual_seed(8)
    fresh = build_encoder(cfg.model.encoder)
    for (name, p), q in zip(trained.model.named_parameters(), loaded.model.parameters()):
        assert torch.equal(p, q), name
    assert not all(torch.equal(p, r) for p, r in zip(trained.model.parameters(), fresh.model.parameters()))

    # zoo:<name> resolves through mpm.zoo.zoo_path (a fake entry here; issue 12 adds efficientnet-lite0)
    from mpm import zoo

    monkeypatch.setitem(
        zoo.ZOO, "tiny-vit", zoo.ZooEntry("tiny-vit", "encoder", "none", "none", "test", False)
    )
    monkeypatch.setattr(zoo, "zoo_path", lambda name, **kw: path if name == "tiny-vit" else None)
    assert resolve_checkpoint("zoo:tiny-vit") == str(path)
    via_zoo = build_encoder(load_config("smoke", ["model.encoder.checkpoint=zoo:tiny-vit"]).model.encoder)
    assert all(torch.equal(p, q) for p, q in zip(trained.model.parameters(), via_zoo.model.parameters()))
    with pytest.raises(ConfigError, match=r"model\.encoder\.checkpoint: unknown zoo entry 'nope'"):
        resolve_checkpoint("zoo:nope")
    with pytest.raises(
        ConfigError, match=r"model\.encoder\.checkpoint: '/no/such\.safetensors' does not exist"
    ):
        check_buildable(load_config("smoke", ["model.encoder.checkpoint=/no/such.safetensors"]))

    seen: dict[str, Any] = {}

    def fake_create_encoder(name: str, **kw: Any) -> str:
        seen.update(kw, name=name)
        return "encoder"

    import mpm_vision

    monkeypatch.setattr(mpm_vision, "create_encoder", fake_create_encoder)
    spec = load_config(
        "smoke", ["model.encoder.pretrained=true", "model.encoder.feature_layer=-2"]
    ).model.encoder
    assert build_encoder(spec) == "encoder"
    assert seen["pretrained"] is True and seen["feature_layer"] == -2 and seen["checkpoint"] is None
    assert seen["image_size"] == 16 and seen["patch_size"] == 8 and seen["name"] == "vit_tiny_patch16_224"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.encoder.name=not_a_timm_model"],
            r"model\.encoder\.name: 'not_a_timm_model' is not a timm model",
        ),
        (["model.bridge.kind=linear"], r"model\.bridge\.kind: 'linear' is not one of mlp, perceiver"),
        (["model.lm.name=no-such-model"], r"model\.lm\.name: 'no-such-model' is neither a zoo model"),
        (["model.lm.name=zoo:nope"], r"model\.lm\.name: unknown zoo model 'nope'"),
        (
            ["model.lm.name=multilingual-e5-small"],
            r"model\.lm\.name: zoo model 'multilingual-e5-small' is an encoder",
        ),
        (
            ["paint.scheduler.sample=EulerScheduler"],
            r"paint\.scheduler\.sample: 'EulerScheduler' is not a diffusers",
        ),
    ],
)
def test_names_are_checked_before_any_model_is_built(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_buildable(load_config("smoke", overrides))


def test_zoo_names_resolve_without_loading() -> None:
    check_buildable(load_config("default"))  # gemma3-270m: recognised, not converted or loaded
    check_buildable(load_config("smollm2"))


@pytest.fixture(scope="module")
def emojicap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mpm_bench import build_emojicap

    root = tmp_path_factory.mktemp("emojicap")
    build_emojicap(root, size=16, limit=16, progress=False)
    return root


def test_builders_are_factories_of_mpm_train_run(tmp_path: Path, emojicap: Path) -> None:
    """`mpm-train run plan.toml` with `[model] factory = "mpm.builders:..."`; sources named <kind>/<lang>."""
    from mpm_train import load_weights
    from mpm_train.cli import main

    shards = str(emojicap / "emojicap-openmoji-train-*.tar")
    plan = tmp_path / "plan.toml"
    plan.write_text(
        f"""
output_dir = "{tmp_path / "chat"}"
[model]
factory = "mpm.builders:vlm_factory"
[model.kwargs]
lm = {{ name = "tiny:qwen2" }}
encoder = {{ name = "vit_tiny_patch16_224", image_size = 16, options = {{ patch_size = 8, depth = 1, embed_dim = 32, num_heads = 2 }} }}
bridge = {{ kind = "mlp" }}

[[stages]]
name = "align"
steps = 2
batch_size = 4
trainable = {{ bridge = true }}
[[stages.data.sources]]
name = "names/en"
shards = ["{shards}"]
weight = 0.9
[[stages.data.sources]]
name = "instructions/de"
shards = ["{shards}"]
weight = 0.1
"""
    )
    assert main(["run", str(plan), "--no-progress"]) == 0
    result = json.loads((tmp_path / "chat" / "align" / "result.json").read_text())
    assert result["final_step"] == 2 and len(result["config_hash"]) == 64
    assert {
        n.split(".")[0] for n in load_weights(tmp_path / "chat" / "align" / "checkpoints" / "step_00000002")
    } == {"bridge"}

    paint = tmp_path / "paint.toml"
    paint.write_text(
        f"""
output_dir = "{tmp_path / "paint"}"
[model]
factory = "mpm.builders:paint_factory"
kwargs = {{ lm = {{ name = "tiny:llama" }}, resolution = 16, paint = {{ unet = {{ block_out_channels = [16, 32] }}, conditioning = {{ width = 32 }} }} }}
[[stages]]
name = "paint"
steps = 2
batch_size = 2
trainable = {{ unet = "attn2", projection = true }}
[[stages.data.sources]]
name = "names/en"
shards = ["{shards}"]
"""
    )
    assert main(["run", str(paint), "--no-progress"]) == 0
    saved = load_weights(tmp_path / "paint" / "paint" / "checkpoints" / "step_00000002")
    # the cached-states conditioner (the default source) trains its projection and output norm
    projection = ("conditioner.projection.", "conditioner.output_norm.")
    assert saved and all(".attn2." in n or n.startswith(projection) for n in saved)


def test_paint_factory_refuses_the_recipe_chosen_space() -> None:
    """``space = "pivot"`` is filled in by the recipe's sweep, which the mpm-train factory does not run."""
    from mpm.builders import paint_factory
    from mpm.config import ConfigError

    with pytest.raises(
        ConfigError, match=r"conditioning\.space: 'pivot' is chosen by the recipe.*space = 'fixed'"
    ):
        paint_factory(lm={"name": "tiny:llama"}, paint={"conditioning": {"space": "pivot"}})
