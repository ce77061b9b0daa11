"""The deterministic augmentation and its disjoint training / held-out seed spaces."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mpm_bench import Augmentation, AugmentConfig, augment, heldout_seed, is_heldout_seed, train_seed
from mpm_bench.augment import HELDOUT_SEED_BASE


def _drawing(size: int = 64) -> Image.Image:
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    d.ellipse((12, 12, 52, 52), fill=(250, 200, 0), outline=(0, 0, 0), width=2)
    d.ellipse((22, 22, 30, 30), fill=(255, 255, 255))  # white inside the drawing: an eye
    return im


def test_training_and_heldout_seeds_never_overlap() -> None:
    keys = [f"{i:04X}" for i in range(300)]
    train = {train_seed(k, v) for k in keys for v in range(20)}
    held = {heldout_seed(k, v) for k in keys for v in range(5)}
    assert len(train) == 300 * 20 and len(held) == 300 * 5
    assert max(train) < HELDOUT_SEED_BASE <= min(held) and max(held) < 2**64
    assert not any(is_heldout_seed(s) for s in train) and all(is_heldout_seed(s) for s in held)
    assert train_seed("1F600", 0) == train_seed("1F600", 0) != train_seed("1F600", 1)


def test_augmentation_is_deterministic_and_varied() -> None:
    img = _drawing()
    aug = Augmentation()
    a, b = aug(img, 123), aug(img, 123)
    assert a.tobytes() == b.tobytes() and a.size == img.size and a.mode == "RGB"
    views = {aug(img, heldout_seed("x", v)).tobytes() for v in range(8)}
    assert len(views) == 8 and img.tobytes() not in views
    assert augment(img, 123).tobytes() == a.tobytes()
    with pytest.raises(ValueError, match="seed must be"):
        aug(img, -1)
    with pytest.raises(ValueError, match="empty image"):
        aug(Image.new("RGB", (0, 3)), 1)


def test_each_parameter_does_what_it_says() -> None:
    img = _drawing()
    # Background only: the white outside the drawing takes the colour, the white eye stays white.
    bg_only = Augmentation(AugmentConfig(scale=(1.0, 1.0), shift=0.0, rotation=0.0, background=1.0, blur=0.0))
    seed = 7
    colour = bg_only.params(seed)["background"]
    out = np.asarray(bg_only(img, seed))
    assert tuple(out[0, 0]) == colour and tuple(out[63, 63]) == colour
    assert tuple(out[26, 26]) == (255, 255, 255)
    # Geometry only: a shifted, scaled, rotated copy on a white background.
    geo = Augmentation(AugmentConfig(scale=(0.5, 0.5), shift=0.0, rotation=0.0, background=0.0, blur=0.0))
    small = np.asarray(geo(img, 1))
    ink = np.argwhere((255 - small.astype(int)).sum(-1) > 30)
    assert 18 <= ink[:, 0].max() - ink[:, 0].min() + 1 <= 22  # the 41-pixel disc at half size
    blur = Augmentation(AugmentConfig(scale=(1.0, 1.0), shift=0.0, rotation=0.0, background=0.0, blur=3.0))
    assert blur.params(2)["blur"] > 0.05 and blur(img, 2).tobytes() != img.tobytes()
    assert Augmentation().cache_id != blur.cache_id == Augmentation(blur.config).cache_id


def test_config_round_trip_and_validation() -> None:
    cfg = AugmentConfig(scale=(0.8, 0.9), rotation=5.0)
    assert AugmentConfig.from_json(cfg.to_json()) == cfg
    for bad, match in [
        ({"scale": (1.2, 0.8)}, "scale"),
        ({"shift": 0.6}, "shift"),
        ({"rotation": 200}, "rotation"),
        ({"background": 1.5}, "background"),
        ({"blur": -1}, "blur"),
    ]:
        with pytest.raises(ValueError, match=match):
            AugmentConfig(**bad)  # type: ignore[arg-type]
