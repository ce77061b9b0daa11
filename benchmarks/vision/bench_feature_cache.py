"""What the frozen-encoder feature cache saves: one training step with and without it, side by side.

Setting: the zoo's EfficientNet-Lite0 (ImageNet weights, frozen) at 64 px on real EmojiCap OpenMoji
renders, each training image seen as one of 4 augmented views (mpm-bench's ``Augmentation``,
training seeds). Two trainable heads on top:

- ``head``: a contrastive head on the pooled 1280-d features (``Linear -> GELU -> Linear`` to 640,
  InfoNCE against fixed random targets), the setting of SCIENCE.md section 3;
- ``vlm``: a VisCPM ``query`` bridge (16 queries; a transformer at the encoder's width, 1280) or
  LLaVA's ``mlp`` bridge into a small Llama (hidden 256, 4 layers), the LM frozen, loss on the answer
  tokens (``VisionLanguageModel.training_step``).

Uncached step: augment -> preprocess -> encoder (no grad) -> head/bridge (+LM) forward+backward.
Cached step: cache lookup by (image, view seed, encoder) -> the same head/bridge (+LM) work.
The cache is filled once beforehand (its cost is reported, and the break-even number of steps).
Losses of the two paths are compared (they must agree to 1e-5). Times are the fastest of
interleaved repetitions in process CPU time, 1 torch thread.

Run: ``python benchmarks/vision/bench_feature_cache.py [--batch 32] [--reps 5]``; writes
``benchmarks/results/vision_feature_cache.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from bench_vision import make_tokenizer, timeit  # noqa: E402  (the same tokenizer and timer)

RESULTS = ROOT.parents[0] / "results" / "vision_feature_cache.json"
VIEWS = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM, LlamaConfig

    from mpm.zoo import zoo_path
    from mpm_bench import Augmentation, build_emojicap, load_emojicap, train_seed
    from mpm_vision import FeatureCache, VisionLanguageModel, create_bridge, create_encoder

    tmp = Path(tempfile.mkdtemp(prefix="mpm-feature-cache-"))
    build_emojicap(tmp / "emojicap", size=64, limit=args.images, progress=False)
    data = load_emojicap(tmp / "emojicap", "train") + load_emojicap(tmp / "emojicap", "test")
    data = data[: args.images]
    encoder = create_encoder("efficientnet_lite0", checkpoint=zoo_path("efficientnet-lite0"), image_size=64)
    encoder.eval().requires_grad_(False)
    aug = Augmentation()

    # ---- fill the caches once (tokens for the bridge, pooled vectors for the head)
    seed_fn = lambda i, v: train_seed(data[i].key, v)  # noqa: E731
    t0 = time.process_time()
    pooled_cache = FeatureCache(tmp / "cache", encoder, pooled=True)
    pooled_cache.fill(
        [ex.image for ex in data], views=VIEWS, seed_fn=seed_fn, view=aug, include_original=False
    )
    fill_pooled = time.process_time() - t0
    t0 = time.process_time()
    token_cache = FeatureCache(tmp / "cache", encoder)
    token_cache.fill(
        [ex.image for ex in data], views=VIEWS, seed_fn=seed_fn, view=aug, include_original=False
    )
    fill_tokens = time.process_time() - t0

    batch = data[: args.batch]
    images = [ex.image for ex in batch]
    seeds = [train_seed(ex.key, i % VIEWS) for i, ex in enumerate(batch)]

    # ---- contrastive head on pooled features
    head = torch.nn.Sequential(torch.nn.Linear(1280, 768), torch.nn.GELU(), torch.nn.Linear(768, 640))
    targets = F.normalize(torch.randn(len(batch), 640), dim=-1)

    def head_loss(feats: torch.Tensor) -> torch.Tensor:
        z = F.normalize(head(feats), dim=-1)
        logits = z @ targets.T / 0.07
        return F.cross_entropy(logits, torch.arange(len(batch)))

    def head_uncached() -> float:
        head.zero_grad(set_to_none=True)
        with torch.no_grad():
            feats = encoder.pooled(encoder.preprocess([aug(im, s) for im, s in zip(images, seeds)]))
        loss = head_loss(feats)
        loss.backward()
        return float(loss.detach())

    def head_cached() -> float:
        head.zero_grad(set_to_none=True)
        loss = head_loss(pooled_cache.features(images, seeds=seeds, view=aug))
        loss.backward()
        return float(loss.detach())

    head_diff = abs(head_uncached() - head_cached())
    t_hu, t_hc = timeit(head_uncached, head_cached, reps=args.reps)

    # ---- a bridge into a frozen LM: VisCPM's query bridge (a transformer at the encoder's width) and
    # LLaVA's 2-layer MLP (light), so the share of the encoder in the step shows in both
    texts = [{"prompt": "What is this?", "answer": ex.names["en"]} for ex in batch]
    vlm_rows: list[tuple[str, Any, Any, float]] = []
    for kind, options, label in [
        ("query", {"num_queries": 16, "depth": 2}, "query bridge (16 queries, depth 2, width 1280)"),
        ("mlp", {}, "mlp bridge (LLaVA, 4 tokens)"),
    ]:
        torch.manual_seed(0)
        lm = AutoModelForCausalLM.from_config(
            LlamaConfig(
                vocab_size=512,
                hidden_size=256,
                intermediate_size=688,
                num_hidden_layers=4,
                num_attention_heads=4,
                num_key_value_heads=4,
                pad_token_id=0,
                bos_token_id=1,
                eos_token_id=2,
                max_position_embeddings=512,
            )
        )
        bridge = create_bridge(kind, in_dim=encoder.feature_dim, out_dim=256, **options)
        vlm = VisionLanguageModel(encoder, bridge, lm, make_tokenizer(), train_encoder=False)
        vlm.stage_parameters("align")
        vlm.train()

        def vlm_uncached(vlm: Any = vlm) -> float:
            vlm.zero_grad(set_to_none=True)
            views = [aug(im, s) for im, s in zip(images, seeds)]
            loss = vlm.training_step(vlm.collate([{"image": v, **t} for v, t in zip(views, texts)]))
            loss.backward()
            return float(loss.detach())

        def vlm_cached(vlm: Any = vlm) -> float:
            vlm.zero_grad(set_to_none=True)
            feats = token_cache.features(images, seeds=seeds, view=aug)
            loss = vlm.training_step(vlm.collate([{"image_features": f, **t} for f, t in zip(feats, texts)]))
            loss.backward()
            return float(loss.detach())

        diff = abs(vlm_uncached() - vlm_cached())
        t_u, t_c = timeit(vlm_uncached, vlm_cached, reps=args.reps)
        vlm_rows.append((f"{label} + frozen Llama h256x4", t_u, t_c, diff))

    def row(name: str, unc: Any, cac: Any, diff: float, fill: float) -> dict[str, Any]:
        u, c = unc.as_dict()["cpu_ms"], cac.as_dict()["cpu_ms"]
        saved = (u - c) / 1e3
        return {
            "step": name,
            "uncached_ms": round(u, 1),
            "cached_ms": round(c, 1),
            "speedup": round(u / c, 2),
            "loss_abs_diff": diff,
            "cache_fill_s": round(fill, 2),
            "break_even_steps": round(fill / saved, 1) if saved > 0 else None,
        }

    rows = [
        row("contrastive head on pooled features", t_hu, t_hc, head_diff, fill_pooled),
        *(row(name, t_u, t_c, diff, fill_tokens) for name, t_u, t_c, diff in vlm_rows),
    ]
    for r in rows:
        print(json.dumps(r))
    out = {
        "command": "python benchmarks/vision/bench_feature_cache.py"
        + (f" --batch {args.batch}" if args.batch != 32 else "")
        + (f" --reps {args.reps}" if args.reps != 5 else ""),
        "encoder": "efficientnet_lite0 (zoo efficientnet-lite0, frozen), 64 px, 4 tokens x 1280",
        "batch": args.batch,
        "images": len(data),
        "views_per_image": VIEWS,
        "cached_features": len(pooled_cache) + len(token_cache),
        "threads": 1,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
