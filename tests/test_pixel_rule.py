"""Same pixels in training and inference: one image conversion rule, three copies that agree.

mpm-train decodes shard images (``data.to_rgb``), mpm-vision preprocesses images for the vision
tower (``processing._to_pil``), mpm-paint collates images for the UNet (``training._to_rgb``). The
packages do not import each other, so each keeps its own copy of the rule; this test proves the
copies give identical pixels on awkward images, and that the rule is the documented one:
transparency composited onto the background (white), 16-bit images scaled (not clipped).
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("mpm_vision")
pytest.importorskip("mpm_paint")

from mpm_paint.training import _to_rgb as paint_rule
from mpm_train.data import decode_sample
from mpm_train.data import to_rgb as train_rule
from mpm_vision.processing import _to_pil as vision_rule

WHITE = (255, 255, 255)
RULES: dict[str, Callable[[Image.Image, tuple[int, int, int]], Image.Image]] = {
    "mpm-train": train_rule,
    "mpm-vision": vision_rule,
    "mpm-paint": paint_rule,
}


def _awkward() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    alpha[0, :] = 0  # a fully transparent row
    gray16 = rng.integers(0, 65536, (6, 5), dtype=np.uint16)
    gray16[0, 0], gray16[0, 1], gray16[0, 2] = 65535, 32768, 256
    p = Image.fromarray(rng.integers(0, 4, (6, 5), dtype=np.uint8), mode="L").convert("P")
    p.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])
    p_trans = p.copy()
    p_trans.info["transparency"] = 2
    p_alpha = p.copy()
    p_alpha.info["transparency"] = bytes([255, 128, 0, 255])  # a per-entry palette alpha
    l_trns = Image.fromarray(rgb[..., 0], mode="L")
    l_trns.info["transparency"] = int(rgb[0, 0, 0])
    rgb_trns = Image.fromarray(rgb, mode="RGB")
    rgb_trns.info["transparency"] = tuple(int(v) for v in rgb[0, 0])
    i16_trns = Image.fromarray(gray16)
    i16_trns.info["transparency"] = 32768
    return {
        "RGB": Image.fromarray(rgb, mode="RGB"),
        "RGBA": Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA"),
        "LA": Image.fromarray(np.dstack([rgb[..., 0], alpha]), mode="LA"),
        "PA": Image.fromarray(np.dstack([rgb[..., 0] % 4, alpha]), mode="LA").convert("PA"),
        "P": p,
        "P+transparency": p_trans,
        "P+palette-alpha": p_alpha,
        "L": Image.fromarray(rgb[..., 1], mode="L"),
        "L+transparency": l_trns,
        "RGB+transparency": rgb_trns,
        "1": Image.fromarray(rgb[..., 2] > 127),
        "I;16": Image.fromarray(gray16),
        "I;16B": Image.fromarray(gray16).convert("I;16B"),
        "I;16+transparency": i16_trns,
        "I": Image.fromarray(np.where(gray16 > 60000, 70000, gray16).astype(np.int32) - 10, mode="I"),
        "F": Image.fromarray(rng.uniform(-20, 300, (6, 5)).astype(np.float32), mode="F"),
        "CMYK": Image.fromarray(rgb, mode="RGB").convert("CMYK"),
        "YCbCr": Image.fromarray(rgb, mode="RGB").convert("YCbCr"),
        "RGBa": Image.fromarray(np.dstack([rgb, alpha]), mode="RGBA").convert("RGBa"),
    }


IMAGES = _awkward()


@pytest.mark.parametrize("mode", sorted(IMAGES))
@pytest.mark.parametrize("background", [WHITE, (0, 40, 200)])
def test_the_three_copies_give_identical_pixels(mode: str, background: tuple[int, int, int]) -> None:
    image = IMAGES[mode]
    out = {name: rule(image.copy(), background) for name, rule in RULES.items()}
    ref = np.asarray(out["mpm-train"])
    for name, im in out.items():
        assert im.mode == "RGB" and im.size == image.size, name
        np.testing.assert_array_equal(np.asarray(im), ref, err_msg=f"{name} differs from mpm-train on {mode}")


def test_the_rule_composites_onto_white_and_scales_16_bit() -> None:
    rgba = train_rule(IMAGES["RGBA"], WHITE)
    assert (np.asarray(rgba)[0] == 255).all()  # fully transparent row -> white, not black
    assert (
        np.asarray(train_rule(IMAGES["P+transparency"], WHITE))[np.asarray(IMAGES["P"]) == 2] == 255
    ).all()
    g = np.asarray(train_rule(IMAGES["I;16"], WHITE))[0, :3, 0]
    assert g.tolist() == [255, 128, 1]  # 65535, 32768, 256 scaled by 1/257; PIL's convert clips to 255
    assert np.asarray(IMAGES["I;16"].convert("RGB"))[0, 1, 0] == 255  # what clipping would have given
    f = np.asarray(IMAGES["F"])
    np.testing.assert_array_equal(
        np.asarray(train_rule(IMAGES["F"], WHITE))[..., 0], np.clip(np.rint(f), 0, 255).astype(np.uint8)
    )


@pytest.mark.parametrize(
    "mode", ["RGBA", "LA", "P+transparency", "L+transparency", "I;16", "I;16B", "1", "L"]
)
def test_training_decode_matches_inference_preprocessing(mode: str) -> None:
    """A PNG in a shard decodes to the pixels mpm-vision/mpm-paint would make of the same file."""
    buf = io.BytesIO()
    IMAGES[mode].save(buf, format="PNG")
    raw = {"__key__": "k", "png": buf.getvalue(), "json": b'{"caption": "x"}'}
    sample, reason = decode_sample(raw, source="s")
    assert reason is None and sample is not None
    opened = Image.open(io.BytesIO(buf.getvalue()))
    for name in ("mpm-vision", "mpm-paint"):
        np.testing.assert_array_equal(
            np.asarray(sample["image"]), np.asarray(RULES[name](opened.copy(), WHITE)), err_msg=name
        )
