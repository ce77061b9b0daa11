"""``VLMScorer`` with and without the shared-prefix cache, side by side, on the real Gemma-3-270M pivot.

Zero-shot classification scores every (image, candidate name) pair by the mean log-probability of the
name as the answer (``VisionLanguageModel.answer_logprobs`` in mpm-vision; ``VLMScorer`` adapts it to
mpm-bench). The cached path runs the image tokens + prompt once per image and only the answer tokens
per pair; the whole-row path runs every pair's full sequence. Same scores (max abs difference
reported), time ratio saved as JSON. Second, the classification shape (each image against its own 8
candidates): one ``score([image], candidates)`` call per image vs one ``score_candidates`` call.

    python benchmarks/integration/bench_scorer.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]

NAMES = [
    "red apple", "grinning face", "flag: Japan", "面带笑容的脸", "Flagge: Japan", "pomme rouge", "犬",
    "thumbs up", "собака", "قلب أحمر", "smiling face with heart-eyes", "rocket",
]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--names", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "integration_scorer.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mpm.adapters import VLMScorer
    from mpm.zoo import load_causal_lm
    from mpm_vision import VisionLanguageModel, create_bridge, create_encoder

    lm, tok = load_causal_lm("gemma3-270m")
    torch.manual_seed(0)
    enc = create_encoder(
        "vit_tiny_patch16_224", image_size=32, patch_size=8, depth=2, embed_dim=96, num_heads=3
    )
    hidden = int(lm.get_input_embeddings().weight.shape[1])
    bridge = create_bridge("query", in_dim=enc.feature_dim, out_dim=hidden, num_queries=8)
    vlm = VisionLanguageModel(enc, bridge, lm, tok).eval()  # the demo's chat model shape
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in range(args.images)]
    names = (NAMES * (args.names // len(NAMES) + 1))[: args.names]

    times: dict[str, list[float]] = {"cached": [], "whole_rows": []}
    scores: dict[str, Any] = {}
    scorers = {"cached": VLMScorer(vlm), "whole_rows": VLMScorer(vlm, use_prefix_cache=False)}
    scorers["cached"].score(images[:1], names[:2])  # warm up
    for r in range(args.repeats):  # interleaved, alternating order; best of `repeats`
        for name in ("cached", "whole_rows") if r % 2 == 0 else ("whole_rows", "cached"):
            t0 = time.perf_counter()
            scores[name] = scorers[name].score(images, names)
            times[name].append(time.perf_counter() - t0)
    # Classification-shaped: each image against its own 8 candidates. mpm-bench calls score([image],
    # candidates) once per image for a plain Scorer, score_candidates(images, lists) for a CandidateScorer.
    rng2 = np.random.default_rng(1)
    cand_lists = [list(rng2.permutation(names)[:8]) for _ in images]
    per_image: list[float] = []
    batched: list[float] = []
    for r in range(args.repeats):
        for name in ("per_image", "batched") if r % 2 == 0 else ("batched", "per_image"):
            t0 = time.perf_counter()
            if name == "per_image":
                a = [scorers["cached"].score([im], c)[0] for im, c in zip(images, cand_lists, strict=True)]
                per_image.append(time.perf_counter() - t0)
            else:
                b = scorers["cached"].score_candidates(images, cand_lists)
                batched.append(time.perf_counter() - t0)
    classification = {
        "seconds_score_per_image": min(per_image),
        "seconds_score_candidates": min(batched),
        "speedup": min(per_image) / min(batched),
        "max_abs_score_difference": float(max(np.abs(x - y).max() for x, y in zip(a, b, strict=True))),
    }
    res = {
        "command": "python benchmarks/integration/bench_scorer.py " + " ".join(sys.argv[1:]),
        "machine": {
            "torch_threads": args.threads,
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "model": "gemma3-270m + tiny ViT + 8-query bridge",
        "images": args.images,
        "names": args.names,
        "seconds_cached": min(times["cached"]),
        "seconds_whole_rows": min(times["whole_rows"]),
        "speedup": min(times["whole_rows"]) / min(times["cached"]),
        "max_abs_score_difference": float(np.abs(scores["cached"] - scores["whole_rows"]).max()),
        "same_argmax_per_image": bool((scores["cached"].argmax(1) == scores["whole_rows"].argmax(1)).all()),
        "all_runs": times,
        "classification_shaped": classification,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1), encoding="utf-8")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
