"""mpm-bench's augmentation is an mpm-vision ImageView: cached augmented views equal the encoder's output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mpm_bench import Augmentation, heldout_seed, train_seed
from mpm_vision import FeatureCache, ImageView, create_encoder


def test_augmentation_is_an_image_view_and_caches(tmp_path: Path) -> None:
    aug = Augmentation()
    assert isinstance(aug, ImageView)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(3)]
    enc = create_encoder(
        "vit_tiny_patch16_224", image_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2
    )
    enc.eval()
    cache = FeatureCache(tmp_path, enc, pooled=True)
    seeds = [train_seed("a", 0), train_seed("b", 1), heldout_seed("a", 0)]
    got = cache.features(images, seeds=seeds, view=aug)
    with torch.no_grad():
        ref = enc.pooled(enc.preprocess([aug(im, s) for im, s in zip(images, seeds)]))
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    assert cache.key(images[0], seed=seeds[0], view=aug) != cache.key(images[0], seed=seeds[2], view=aug)
