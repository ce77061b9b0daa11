"""mpm-vision on real pretrained LMs (CPU cost of the reproduction's training and decoding steps).

A small from-scratch ViT (32 px, patch 8, 4 blocks, width 192) and a 16-query ``query`` bridge on top of
a real causal LM given as a local transformers directory (e.g. the ``mpm`` zoo's converted
Gemma-3-270M and SmolLM2-135M in ``~/.cache/mpm``). EmojiCap-shaped batch: 8 images, a short
question, 2-5 token answers. Measures the ``align`` step (LM frozen) and ``instruct`` step (LM
trained) forward+backward, and greedy generation, in process CPU time (fastest of N).

Run:  python benchmarks/vision/bench_real_lm.py [--model DIR ...] [--threads 1]
Writes benchmarks/results/vision_real_lm.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForCausalLM, AutoTokenizer

from mpm_vision import VisionLanguageModel, create_bridge, create_encoder

RESULTS = Path(__file__).resolve().parents[1] / "results" / "vision_real_lm.json"
DEFAULT_MODELS = [Path.home() / ".cache/mpm/gemma3-270m", Path.home() / ".cache/mpm/smollm2-135m"]
NAMES = ["red apple", "grinning face", "cat face", "flag: Japan", "rocket", "sun", "dog face", "snowman"]


def best(fn: Any, reps: int) -> float:
    """Fastest process CPU time of ``reps`` calls (after one warm-up call), in seconds."""
    fn()
    times = []
    for _ in range(reps):
        c0 = time.process_time()
        fn()
        times.append(time.process_time() - c0)
    return min(times)


def run(model_dir: Path, reps: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    load_s = time.perf_counter() - t0
    torch.manual_seed(0)
    enc = create_encoder(
        "vit_tiny_patch16_224", image_size=32, patch_size=8, depth=4, embed_dim=192, num_heads=3
    )
    bridge = create_bridge("query", in_dim=enc.feature_dim, out_dim=lm.config.hidden_size, num_queries=16)
    vlm = VisionLanguageModel(enc, bridge, lm, tok, train_encoder=True)
    images = []
    for i in range(8):
        im = Image.new("RGBA", (48, 48), (0, 0, 0, 0))
        ImageDraw.Draw(im).ellipse((4 + i, 4, 40, 40 + i // 2), fill=(255, 30 * i, 0, 255))
        images.append(im)
    batch = vlm.collate(
        [{"image": im, "prompt": "What is this emoji?", "answer": n} for im, n in zip(images, NAMES)]
    )
    assert batch.labels is not None
    vlm.train()

    def step() -> None:
        vlm.zero_grad(set_to_none=True)
        vlm.training_step(batch).backward()

    def freeze_all_but(stage: str) -> None:  # stage_parameters is a query; freezing is the trainer's step
        keep = {id(p) for p in vlm.stage_parameters(stage)}
        for p in vlm.parameters():
            p.requires_grad_(id(p) in keep)

    freeze_all_but("align")
    align = best(step, reps)
    freeze_all_but("instruct")
    instruct = best(step, reps)
    vlm.eval()
    new_tokens = 8

    def gen() -> None:
        vlm.generate(
            images[:4], ["What is this emoji?"] * 4, max_new_tokens=new_tokens, min_new_tokens=new_tokens
        )

    g = best(gen, reps)
    return {
        "model": model_dir.name,
        "lm_class": type(lm).__name__,
        "lm_params": sum(p.numel() for p in lm.parameters()),
        "vocab_size": int(lm.config.vocab_size),
        "load_seconds": load_s,
        "batch": list(batch.input_ids.shape),
        "answer_tokens": int((batch.labels[:, 1:] != -100).sum()),
        "visual_tokens_per_image": vlm.num_image_tokens,
        "align_fwd_bwd_cpu_s": align,
        "instruct_fwd_bwd_cpu_s": instruct,
        "generate_4x8_tokens_cpu_s": g,
        "generate_tok_per_cpu_s": 4 * new_tokens / g,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, action="append", help="a local transformers model directory")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = [m for m in (args.model or DEFAULT_MODELS) if (m / "config.json").is_file()]
    if not models:
        raise SystemExit("no model directory found; pass --model DIR (e.g. from `mpm.zoo.zoo_path`)")
    results = []
    for m in models:
        r = run(m, args.reps)
        results.append(r)
        print(
            f"{r['model']:14s} {r['lm_params'] / 1e6:5.0f}M params, batch {r['batch']}: "
            f"align fwd+bwd {r['align_fwd_bwd_cpu_s']:.2f} s, instruct fwd+bwd {r['instruct_fwd_bwd_cpu_s']:.2f} s, "
            f"generate {r['generate_tok_per_cpu_s']:.1f} tok/s (CPU time, {args.threads} thread)"
        )
    payload = {
        "command": "python benchmarks/vision/bench_real_lm.py",
        "threads": args.threads,
        "timing": "fastest process CPU time of N calls",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
