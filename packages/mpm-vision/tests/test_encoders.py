from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from mpm_vision import create_encoder

from .conftest import CLIP_VIT, tiny_encoder


def test_vit_tokens_drop_prefix_and_intermediate_layer() -> None:
    enc = create_encoder(
        "vit_tiny_patch16_224", image_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4
    )
    assert (enc.num_tokens, enc.feature_dim) == (16, 32)
    x = torch.randn(2, 3, 32, 32)
    full = enc.model.forward_features(x)
    assert full.shape == (2, 17, 32)
    assert torch.equal(enc(x), full[:, 1:])
    keep = create_encoder(
        "vit_tiny_patch16_224",
        image_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=4,
        keep_prefix_tokens=True,
    )
    assert keep.num_tokens == 17
    # feature_layer=0: the first block's output, without the final norm
    enc0 = create_encoder(
        "vit_tiny_patch16_224",
        image_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=4,
        feature_layer=0,
    )
    enc0.model.load_state_dict(enc.model.state_dict())
    m = enc.model
    ref = m.blocks[0](m.norm_pre(m._pos_embed(m.patch_embed(x))))[:, 1:]
    torch.testing.assert_close(enc0(x), ref)


def test_cnn_feature_map_is_flattened() -> None:
    enc = create_encoder("resnet18", image_size=64)
    assert enc.feature_dim == 512
    assert enc.num_tokens == 4  # 64 px / stride 32 = 2x2
    out = enc(torch.randn(1, 3, 64, 64))
    fmap = enc.model.forward_features(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 4, 512) and fmap.shape == (1, 512, 2, 2)
    assert enc.preprocessing.image_size == (64, 64)


def test_preprocess_converts_modes_sizes_and_arrays() -> None:
    enc = tiny_encoder()
    rgba = Image.new("RGBA", (50, 40), (255, 0, 0, 0))  # fully transparent -> white background
    imgs = [
        rgba,
        Image.new("L", (20, 20), 128),
        Image.new("P", (33, 33)),
        Image.new("I;16", (16, 16)),
        np.full((10, 12, 3), 7, dtype=np.uint8),
        np.zeros((8, 8), dtype=np.uint8),
        torch.zeros(3, 9, 9, dtype=torch.uint8),
    ]
    px = enc.preprocess(imgs)
    assert px.shape == (7, 3, 32, 32) and px.dtype == torch.float32
    mean = torch.tensor(enc.preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(enc.preprocessing.std).view(3, 1, 1)
    white = (1 - mean) / std
    torch.testing.assert_close(px[0], white.expand(3, 32, 32), atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="uint8"):
        enc.preprocess([np.zeros((4, 4, 3), dtype=np.float32)])
    with pytest.raises(ValueError, match="shape"):
        enc.preprocess([np.zeros((4, 4, 5), dtype=np.uint8)])
    with pytest.raises(ValueError, match="empty"):
        enc.preprocess([])


def test_wrong_pixel_size_is_named() -> None:
    enc = tiny_encoder()
    with pytest.raises(ValueError, match=r"48x48 but .* expects 32x32"):
        enc(torch.zeros(1, 3, 48, 48))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        enc(torch.zeros(1, 1, 32, 32))


def test_checkpoint_round_trip_and_errors(tmp_path: Path) -> None:
    src = tiny_encoder()
    path = tmp_path / "vit.safetensors"
    state = {f"model.{k}": v.contiguous() for k, v in src.model.state_dict().items()}
    state["model.head.weight"] = torch.zeros(10, 32)  # an extra classifier head is ignored
    save_file(state, str(path))
    enc = create_encoder(
        CLIP_VIT,
        image_size=32,
        feature_layer=-2,
        checkpoint=path,
        patch_size=8,
        embed_dim=32,
        depth=3,
        num_heads=4,
        mlp_ratio=2,
    )
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(enc(x), src(x))
    partial = {k: v for k, v in list(state.items())[:3]}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="lacks"):
        tiny_encoder(checkpoint=tmp_path / "partial.safetensors")
    with pytest.raises(FileNotFoundError):
        tiny_encoder(checkpoint=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="unknown timm model"):
        create_encoder("vit_does_not_exist")


def test_pooled_feature_is_timm_head_pooling() -> None:
    enc = create_encoder("efficientnet_lite0", image_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens, pooled = enc(x), enc.pooled(x)
    assert tokens.shape == (2, 4, 1280) and pooled.shape == (2, 1280) == (2, enc.pooled_dim)
    torch.testing.assert_close(pooled, tokens.mean(1), atol=1e-5, rtol=0)  # global average pooling
    vit = create_encoder(
        "vit_tiny_patch16_224", image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=4
    )
    full = vit.model.forward_features(torch.zeros(1, 3, 32, 32))
    torch.testing.assert_close(vit.pooled(torch.zeros(1, 3, 32, 32)), full[:, 0])  # the class token
    mid = tiny_encoder(feature_layer=1)
    torch.testing.assert_close(mid.pooled(torch.ones(1, 3, 32, 32)), mid(torch.ones(1, 3, 32, 32)).mean(1))


def test_checkpoint_directory_brings_weights_and_preprocessing(tmp_path: Path) -> None:
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(0)
    src = timm.create_model("efficientnet_lite0", num_classes=10).eval()
    mean, std = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)
    save_for_hf(src, str(tmp_path / "ckpt"), safe_serialization=True, data_config={"mean": mean, "std": std})
    enc = create_encoder("efficientnet_lite0", checkpoint=tmp_path / "ckpt", image_size=64).eval()
    assert enc.preprocessing.mean == mean and enc.preprocessing.std == std
    assert enc.preprocessing.image_size == (64, 64)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(enc.pooled(x), src.forward_head(src.forward_features(x), pre_logits=True))
    at_224 = create_encoder("efficientnet_lite0", checkpoint=tmp_path / "ckpt")
    assert at_224.preprocessing.image_size == (224, 224) and at_224.num_tokens == 49
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        create_encoder("efficientnet_lite0", checkpoint=tmp_path / "empty")
    (tmp_path / "ckpt" / "model.safetensors").rename(tmp_path / "ckpt" / "weights.bin")
    with pytest.raises(FileNotFoundError, match=r"needs model\.safetensors"):
        create_encoder("efficientnet_lite0", checkpoint=tmp_path / "ckpt")
