"""Bad input gets a clear error naming the sample: empty images, placeholders in answers, pickled weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from mpm_vision import VisionLanguageModel
from mpm_vision.interfaces import ImagePreprocessing
from mpm_vision.processing import ImageProcessor

MakeVLM = Callable[..., VisionLanguageModel]


@pytest.mark.parametrize(
    "empty,size",
    [
        (Image.new("RGB", (0, 0)), "0x0"),
        (Image.new("RGBA", (0, 5)), "0x5"),
        (Image.new("L", (7, 0)), "7x0"),
        (np.zeros((0, 0, 3), np.uint8), "0x0"),
        (torch.zeros(3, 4, 0, dtype=torch.uint8), "0x4"),
    ],
)
def test_empty_image_is_refused_by_name(empty: Any, size: str) -> None:
    """Before: ZeroDivisionError from torchvision's resize."""
    proc = ImageProcessor(ImagePreprocessing(image_size=(32, 32), mean=(0.5,) * 3, std=(0.5,) * 3))
    ok = Image.new("RGB", (9, 9))
    with pytest.raises(ValueError, match=rf"^image 1 is empty \({size} pixels\)"):
        proc([ok, empty])


def test_collator_names_the_sample_with_an_empty_image(make_vlm: MakeVLM, images: list[Any]) -> None:
    vlm = make_vlm()
    samples = [
        {"image": images[0], "prompt": "what?", "answer": "a"},
        {"__key__": "000042", "images": [images[1], Image.new("RGB", (0, 0))], "prompt": "p", "answer": "b"},
    ]
    with pytest.raises(ValueError, match=r"^sample 1 \('000042'\), image 1 is empty \(0x0 pixels\)"):
        vlm.collate(samples)


@pytest.mark.parametrize("form", ["prompt", "conversation"])
def test_image_placeholder_in_an_answer_is_refused(make_vlm: MakeVLM, images: list[Any], form: str) -> None:
    """Before: with one image and '<image>' only in the answer, the image vectors went into the answer."""
    vlm = make_vlm()
    good = {"image": images[0], "prompt": "what is it?", "answer": "a cat"}
    if form == "prompt":
        bad: dict[str, Any] = {"image": images[1], "prompt": "what is it?", "answer": "a <image> cat"}
        where = "message 1"
    else:
        bad = {
            "image": images[1],
            "conversation": [
                {"role": "user", "content": "<image> what is it?"},
                {"role": "assistant", "content": "a cat"},
                {"role": "user", "content": "and now?"},
                {"role": "assistant", "content": "still <image>"},
            ],
        }
        where = "message 3"
    with pytest.raises(
        ValueError, match=rf"^sample 1: {where} \(assistant\) holds the image placeholder '<image>'"
    ):
        vlm.collate([good, bad])
    vlm.collate([good])  # the good sample alone is fine


def _pickle_only(directory: Path, name: str) -> None:
    """Replace the directory's safetensors with a pickled state dict (as old checkpoints have)."""
    from safetensors.torch import load_file

    (st,) = directory.glob("*.safetensors")
    torch.save(load_file(st), directory / name)
    st.unlink()


def _no_torch_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError("torch.load (the pickle machinery) was called")

    monkeypatch.setattr(torch, "load", refuse)


def test_language_model_pickle_is_refused(
    make_vlm: MakeVLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: pytorch_model.bin loaded through torch.load(weights_only=True), silently."""
    make_vlm().save_pretrained(tmp_path / "m")
    _pickle_only(tmp_path / "m" / "language_model", "pytorch_model.bin")
    _no_torch_load(monkeypatch)
    with pytest.raises(
        ValueError, match=r"only pickled weights \(pytorch_model\.bin\).*convert it once: python"
    ):
        VisionLanguageModel.from_pretrained(tmp_path / "m")


def test_lora_adapter_pickle_is_refused(
    make_vlm: MakeVLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("peft")
    from peft import LoraConfig, inject_adapter_in_model

    vlm = make_vlm("qwen2")
    inject_adapter_in_model(
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), vlm.language_model
    )
    vlm.save_pretrained(tmp_path / "m")
    _pickle_only(tmp_path / "m" / "lora", "adapter_model.bin")
    _no_torch_load(monkeypatch)
    with pytest.raises(
        ValueError, match=r"LoRA adapter .* \(adapter_model\.bin\).*adapter_model\.safetensors"
    ):
        VisionLanguageModel.from_pretrained(tmp_path / "m")
