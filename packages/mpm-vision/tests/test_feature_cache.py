"""The frozen-encoder feature cache: keys, storage, and equality with the uncached path."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from mpm_vision import (
    FeatureCache,
    ImageView,
    VisionLanguageModel,
    create_bridge,
    create_encoder,
    encoder_fingerprint,
    image_digest,
)

from .conftest import tiny_encoder


class Shift:
    """A deterministic view: roll the image by ``seed`` pixels (an ImageView)."""

    cache_id = "test-shift/v1"

    def __call__(self, image: Image.Image, seed: int) -> Image.Image:
        return Image.fromarray(np.roll(np.asarray(image), seed % 7 + 1, axis=1))


def _images(n: int, size: int = 32) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_view_protocol_and_digest() -> None:
    assert isinstance(Shift(), ImageView)
    a, b = _images(2)
    assert image_digest(a) == image_digest(np.asarray(a)) != image_digest(b)
    assert image_digest(a) != image_digest(a.convert("L"))
    with pytest.raises(TypeError, match="uint8"):
        image_digest(np.zeros((2, 2), dtype=np.float32))


def test_features_equal_the_encoder_and_are_read_back_without_it(tmp_path: Path) -> None:
    enc = tiny_encoder().eval()
    images = _images(5)
    cache = FeatureCache(tmp_path, enc, batch_size=2)
    with torch.no_grad():
        ref = enc(enc.preprocess(images))
    got = cache.features(images)
    assert got.shape == (5, enc.num_tokens, enc.feature_dim)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    assert (cache.misses, cache.hits, len(cache)) == (5, 5, 5)
    again = cache.features(images[::-1])
    assert cache.misses == 5 and torch.equal(again, got.flip(0))

    # A fresh cache on the same folder reads the stored chunks and never runs the encoder.
    reopened = FeatureCache(tmp_path, enc)
    assert len(reopened) == 5
    enc.model.forward_features = None  # any encoder call now fails
    torch.testing.assert_close(reopened.features(images), ref, atol=1e-6, rtol=0)
    assert reopened.misses == 0
    assert not list(reopened.directory.glob(".chunk-*"))  # no temporary files left


def test_views_are_keyed_by_view_and_seed(tmp_path: Path) -> None:
    enc = tiny_encoder().eval()
    img = _images(1)[0]
    cache = FeatureCache(tmp_path, enc)
    view = Shift()
    keys = {cache.key(img), cache.key(img, seed=1, view=view), cache.key(img, seed=2, view=view)}
    assert len(keys) == 3
    feats = cache.features([img, img, img], seeds=[1, 2, 1], view=view)
    assert cache.misses == 2  # seed 1 twice is one entry
    with torch.no_grad():
        ref = enc(enc.preprocess([view(img, 1), view(img, 2)]))
    torch.testing.assert_close(feats[:2], ref, atol=1e-6, rtol=0)
    assert torch.equal(feats[0], feats[2])
    n = cache.fill(_images(3), views=2, seed_fn=lambda i, v: 10 * i + v, view=view)
    assert n == 3 * 3 - 1  # 3 images x (itself + 2 views), less image 0's seed-1 view cached above
    with pytest.raises(ValueError, match="both view and seed"):
        cache.key(img, seed=1)
    with pytest.raises(ValueError, match="one seed per image"):
        cache.features([img], seeds=[1, 2], view=view)
    with pytest.raises(KeyError, match="1 of 1 keys"):
        cache.lookup(["0" * 64])


def test_pooled_cache_and_weight_changes_change_the_key(tmp_path: Path) -> None:
    enc = tiny_encoder().eval()
    images = _images(3)
    pooled = FeatureCache(tmp_path, enc, pooled=True)
    with torch.no_grad():
        ref = enc.pooled(enc.preprocess(images))
    torch.testing.assert_close(pooled.features(images), ref, atol=1e-6, rtol=0)
    tokens = FeatureCache(tmp_path, enc)
    assert tokens.fingerprint != pooled.fingerprint and len(tokens) == 0
    other = copy.deepcopy(enc)
    with torch.no_grad():
        next(other.model.parameters()).add_(1e-3)
    assert encoder_fingerprint(other) != encoder_fingerprint(enc)
    assert FeatureCache(tmp_path, other, pooled=True).key(images[0]) != pooled.key(images[0])


def _vlm(tiny_lm: Any, tokenizer: Any, encoder: Any) -> VisionLanguageModel:
    lm = tiny_lm("llama")
    torch.manual_seed(3)
    hidden = lm.get_input_embeddings().weight.shape[1]
    bridge = create_bridge("query", in_dim=encoder.feature_dim, out_dim=hidden, num_queries=4, depth=1)
    return VisionLanguageModel(encoder, bridge, lm, copy.deepcopy(tokenizer), train_encoder=False)


@pytest.mark.parametrize("kind", ["vit", "cnn-batchnorm"])
def test_training_on_cached_features_equals_the_uncached_path(
    kind: str, tiny_lm: Any, tiny_tokenizer: Any, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    if kind == "vit":
        enc = tiny_encoder()
    else:  # BatchNorm: the frozen encoder must stay in eval mode while the VLM trains
        enc = create_encoder("efficientnet_lite0", image_size=64)
    vlm = _vlm(tiny_lm, tiny_tokenizer, enc)
    vlm.stage_parameters("align")
    vlm.train()
    assert not vlm.encoder.training and vlm.bridge.training
    images = _images(3, size=48)
    view = Shift()
    views = [view(img, s) for img, s in zip(images, [4, 5, 6])]
    texts = [("what is it?", "a cat"), ("name it", "red apple"), ("and this?", "un gato rojo")]

    stats_before = {k: v.clone() for k, v in vlm.encoder.model.state_dict().items()}
    batch = vlm.collate([{"image": im, "prompt": p, "answer": a} for im, (p, a) in zip(views, texts)])
    torch.manual_seed(1)
    loss_ref = vlm.training_step(batch)
    loss_ref.backward()
    grads_ref = {n: p.grad.clone() for n, p in vlm.bridge.named_parameters() if p.grad is not None}
    vlm.zero_grad(set_to_none=True)
    for k, v in vlm.encoder.model.state_dict().items():
        assert torch.equal(v, stats_before[k]), f"frozen encoder state {k} changed during training"

    cache = FeatureCache(tmp_path, vlm.encoder)
    feats = cache.features(images, seeds=[4, 5, 6], view=view)
    cached = vlm.collate([{"image_features": f, "prompt": p, "answer": a} for f, (p, a) in zip(feats, texts)])
    assert cached.pixel_values is None and cached.image_features is not None
    assert torch.equal(cached.input_ids, batch.input_ids) and torch.equal(cached.labels, batch.labels)
    vlm.encoder.model.forward_features = None  # prove the encoder is not called
    torch.manual_seed(1)
    loss = vlm.training_step(cached)
    loss.backward()
    torch.testing.assert_close(loss, loss_ref, atol=1e-5, rtol=0)
    assert grads_ref
    for n, p in vlm.bridge.named_parameters():
        if n in grads_ref:
            torch.testing.assert_close(p.grad, grads_ref[n], atol=1e-5, rtol=1e-4)


def test_image_features_errors(tiny_lm: Any, tiny_tokenizer: Any) -> None:
    vlm = _vlm(tiny_lm, tiny_tokenizer, tiny_encoder())
    good = torch.zeros(vlm.encoder.num_tokens, vlm.encoder.feature_dim)
    with pytest.raises(ValueError, match="both images and image_features"):
        vlm.collate([{"image": _images(1)[0], "image_features": good, "prompt": "a", "answer": "b"}])
    with pytest.raises(ValueError, match="mixes"):
        vlm.collate(
            [
                {"image": _images(1)[0], "prompt": "a", "answer": "b"},
                {"image_features": good, "prompt": "a", "answer": "b"},
            ]
        )
    batch = vlm.collate([{"image_features": good[:, :3], "prompt": "a", "answer": "b"}])
    with pytest.raises(ValueError, match="image_features must have shape"):
        vlm.training_step(batch)
    pixels = vlm.preprocess(_images(1))
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="pass one of"):
        vlm(pixel_values=pixels, input_ids=ids, image_features=good[None])
