"""What the pretrained vision backbone buys: the same contrastive head on three towers, trained on
OpenMoji training concepts, evaluated on styles and concepts it never saw.

The task of the align stage (DESIGN.md, step 1): map an emoji image onto the frozen pivot LLM's
hidden state of its **English** name. Targets are Gemma-3-270M layer-16 states (mean over the name's
tokens; each language centred by the mean over the training concepts' names, then L2-normalised).
The head is ``Linear(D, 1024) -> GELU -> Linear(1024, 640)`` trained with InfoNCE (in-batch
negatives, temperature 0.05, AdamW 1e-3) on OpenMoji training images, each seen clean and as
``--views`` augmented views (mpm-bench ``Augmentation``, training seeds). Towers:

- ``efficientnet-lite0 ImageNet (frozen)``: the zoo's converted weights; pooled 1280-d features,
  computed once through mpm-vision's ``FeatureCache``;
- ``efficientnet-lite0 random init (frozen)``: the same architecture untrained (is it the weights
  or the architecture?);
- ``vit from scratch (trained)``: the demo's tower until now (timm ViT, patch 8, width 96, depth 2),
  trained end to end with the head, on the same images and views, for the same number of epochs.

Evaluation (named EmojiCap sets): ``seen-aug`` (OpenMoji, training concepts, one held-out view),
``seen-style`` (training concepts drawn by Twemoji / Noto: styles never seen), ``unseen`` (test
concepts, per style). Accuracy among 8 (the right name against 7 names of other concepts of the set,
drawn with a fixed seed) and among all concepts of the set (P@1), in 8 languages through the same
pivot: the head saw English targets only.

Run: ``python benchmarks/vision/bench_pretrained_backbone.py [--epochs 30] [--seeds 0,1]``; writes
``benchmarks/results/vision_pretrained_backbone.json``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
LANGS = ("en", "zh", "de", "fr", "es", "ja", "ru", "ar")
LAYER = 16
TEMPERATURE = 0.05


def make_head(in_dim: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(in_dim, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 640))


def info_nce(z: torch.Tensor, targets: torch.Tensor, concept_ids: torch.Tensor) -> torch.Tensor:
    """Image -> text InfoNCE with in-batch negatives; views of one concept in a batch are not negatives."""
    logits = F.normalize(z, dim=-1) @ targets.T / TEMPERATURE
    same = concept_ids[:, None] == concept_ids[None, :]
    logits = logits.masked_fill(same & ~torch.eye(len(z), dtype=torch.bool), float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(z)))


def evaluate(emb: np.ndarray, concepts: list[str], text: dict[str, dict[str, np.ndarray]], seed: int) -> dict:
    """Among-8 accuracy and among-all P@1 per language for image embeddings ``emb`` of ``concepts``."""
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    pool = sorted(set(concepts))
    index = {c: i for i, c in enumerate(pool)}
    rng = np.random.default_rng(seed)
    distractors = []
    for c in concepts:
        others = [i for i in rng.choice(len(pool), size=min(len(pool), 16), replace=False) if pool[i] != c]
        distractors.append(others[:7])
    out: dict[str, Any] = {}
    for lang in LANGS:
        t = np.stack([text[lang][c] for c in pool])
        sims = emb @ t.T  # [images, concepts]
        own = np.array([index[c] for c in concepts])
        right = sims[np.arange(len(concepts)), own]
        among8 = np.mean([right[i] > sims[i, d].max() for i, d in enumerate(distractors)])
        amongall = np.mean(sims.argmax(1) == own)
        out[lang] = {"among8": round(float(among8), 4), "among_all": round(float(amongall), 4)}
    out["n_images"] = len(concepts)
    out["n_concepts"] = len(pool)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=None, help="an EmojiCap folder with openmoji,twemoji,noto (default: build)"
    )
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--limit", type=int, default=None, help="emoji to build (default: all, no skin tones)"
    )
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/vision_pretrained_backbone.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    from mpm.zoo import load_causal_lm, zoo_path
    from mpm_align import TransformersEncoder
    from mpm_bench import (
        Augmentation,
        EmojiCapConfig,
        build_emojicap,
        emojicap_eval_set,
        load_emojicap,
        train_seed,
    )
    from mpm_vision import FeatureCache, create_encoder

    tmp = Path(tempfile.mkdtemp(prefix="mpm-backbone-"))
    if args.data:
        data = Path(args.data)
    else:
        data = tmp / "emojicap"
        cfg = EmojiCapConfig(
            size=args.size,
            limit=args.limit,
            skin_tones=False,
            langs=LANGS,
            styles=("openmoji", "twemoji", "noto"),
        )
        build_emojicap(data, config=cfg, progress=False)
    print(f"[{time.perf_counter() - t_start:5.0f}s] data {data}", flush=True)

    # ---- targets and evaluation texts: Gemma-3-270M layer 16, every concept, every language
    train = load_emojicap(data, "train", langs=LANGS)
    sets = {
        "seen-aug/openmoji": emojicap_eval_set(data, "seen-aug", views=1, langs=LANGS),
        "seen-style/twemoji": emojicap_eval_set(data, "seen-style", style="twemoji", langs=LANGS),
        "seen-style/noto": emojicap_eval_set(data, "seen-style", style="noto", langs=LANGS),
        "unseen/openmoji": emojicap_eval_set(data, "unseen", style="openmoji", langs=LANGS),
        "unseen/twemoji": emojicap_eval_set(data, "unseen", style="twemoji", langs=LANGS),
        "unseen/noto": emojicap_eval_set(data, "unseen", style="noto", langs=LANGS),
    }
    names: dict[str, dict[str, str]] = {ex.key: dict(ex.names) for ex in train}
    for s in sets.values():
        for ex in s.examples:
            names.setdefault(str(ex.meta["concept"]), dict(ex.names))
    lm, tok = load_causal_lm("gemma3-270m")
    enc = TransformersEncoder(lm, tok, pooling="mean", progress=False, name="gemma3-270m")
    concepts = sorted(names)
    train_keys = {ex.key for ex in train}
    text: dict[str, dict[str, np.ndarray]] = {}
    for lang in LANGS:
        states = enc.encode([names[c][lang] for c in concepts], layers=[LAYER])[LAYER].float().numpy()
        states = states - states[[i for i, c in enumerate(concepts) if c in train_keys]].mean(0)
        states = states / np.linalg.norm(states, axis=1, keepdims=True)
        text[lang] = dict(zip(concepts, states))
    del lm
    print(
        f"[{time.perf_counter() - t_start:5.0f}s] {len(concepts)} concepts x {len(LANGS)} languages encoded",
        flush=True,
    )

    # ---- training images: each OpenMoji training image clean and as `views` augmented views
    aug = Augmentation()
    train_images, train_concepts = [], []
    for ex in train:
        train_images.append(ex.image)
        train_concepts.append(ex.key)
        for v in range(args.views):
            train_images.append(aug(ex.image, train_seed(ex.key, v)))
            train_concepts.append(ex.key)
    cid = {c: i for i, c in enumerate(concepts)}
    y = torch.tensor([cid[c] for c in train_concepts])
    targets_all = torch.from_numpy(np.stack([text["en"][c] for c in concepts]))
    print(f"[{time.perf_counter() - t_start:5.0f}s] {len(train_images)} training images", flush=True)

    rows: list[dict[str, Any]] = []
    seeds = [int(s) for s in args.seeds.split(",") if s]

    def train_head(feats: torch.Tensor | None, tower: Any, seed: int) -> tuple[torch.nn.Module, float]:
        torch.manual_seed(seed)
        in_dim = feats.shape[1] if feats is not None else tower.pooled_dim
        head = make_head(in_dim)
        params = list(head.parameters()) + ([] if tower is None else list(tower.parameters()))
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
        steps = args.epochs * -(-len(y) // args.batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
        g = torch.Generator().manual_seed(seed)
        t0 = time.process_time()
        if tower is not None:
            tower.train()
            pixels_all = tower.preprocess(train_images)
        for _ in range(args.epochs):
            for idx in torch.randperm(len(y), generator=g).split(args.batch):
                x = feats[idx] if feats is not None else tower.pooled(pixels_all[idx])
                loss = info_nce(head(x), targets_all[y[idx]], y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        if tower is not None:
            tower.eval()
        return head, time.process_time() - t0

    towers: dict[str, Any] = {}
    torch.manual_seed(0)
    towers["efficientnet-lite0 ImageNet (frozen)"] = create_encoder(
        "efficientnet_lite0", checkpoint=zoo_path("efficientnet-lite0"), image_size=args.size
    )
    towers["efficientnet-lite0 random init (frozen)"] = create_encoder(
        "efficientnet_lite0", image_size=args.size
    )
    for name, encoder in towers.items():
        encoder.eval().requires_grad_(False)
        t0 = time.process_time()
        cache = FeatureCache(tmp / "features", encoder, pooled=True, batch_size=128)
        train_feats = cache.features(train_images)
        eval_feats = {k: cache.features([ex.image for ex in s.examples]) for k, s in sets.items()}
        feature_s = time.process_time() - t0
        for seed in seeds:
            head, train_s = train_head(train_feats, None, seed)
            with torch.no_grad():
                for k, s in sets.items():
                    res = evaluate(
                        head(eval_feats[k]).numpy(), [str(e.meta["concept"]) for e in s.examples], text, seed
                    )
                    rows.append({"tower": name, "seed": seed, "set": k, **res,
                                 "feature_cpu_s": round(feature_s, 1), "train_cpu_s": round(train_s, 1)})  # fmt: skip
            print(f"[{time.perf_counter() - t_start:5.0f}s] {name} seed {seed}: "
                  f"{[(r['set'], r['en']['among8']) for r in rows[-len(sets):]]}", flush=True)  # fmt: skip

    name = "vit from scratch (trained)"
    for seed in seeds:
        torch.manual_seed(seed)
        vit = create_encoder(
            "vit_tiny_patch16_224", image_size=args.size, patch_size=8, depth=2, embed_dim=96, num_heads=3
        )
        head, train_s = train_head(None, vit, seed)
        with torch.no_grad():
            for k, s in sets.items():
                z = head(vit.pooled(vit.preprocess([ex.image for ex in s.examples])))
                res = evaluate(z.numpy(), [str(e.meta["concept"]) for e in s.examples], text, seed)
                rows.append({"tower": name, "seed": seed, "set": k, **res, "train_cpu_s": round(train_s, 1)})
        print(f"[{time.perf_counter() - t_start:5.0f}s] {name} seed {seed}: "
              f"{[(r['set'], r['en']['among8']) for r in rows[-len(sets):]]}", flush=True)  # fmt: skip

    # ---- summary: mean over seeds
    summary: dict[str, dict[str, Any]] = {}
    for tower in dict.fromkeys(r["tower"] for r in rows):
        summary[tower] = {}
        for k in sets:
            rs = [r for r in rows if r["tower"] == tower and r["set"] == k]
            summary[tower][k] = {
                "en_among8": round(float(np.mean([r["en"]["among8"] for r in rs])), 3),
                "other7_among8": round(
                    float(np.mean([r[lang]["among8"] for r in rs for lang in LANGS[1:]])), 3
                ),
                "en_among_all": round(float(np.mean([r["en"]["among_all"] for r in rs])), 3),
                "n_images": rs[0]["n_images"],
                "n_concepts": rs[0]["n_concepts"],
            }
    pre, scratch = "efficientnet-lite0 ImageNet (frozen)", "vit from scratch (trained)"
    key = "seen-style/twemoji"
    ratio = summary[pre][key]["en_among8"] / max(summary[scratch][key]["en_among8"], 1e-9)
    out = {
        "command": "python benchmarks/vision/bench_pretrained_backbone.py"
        + "".join(
            f" --{k} {v}"
            for k, v in (
                ("epochs", args.epochs),
                ("seeds", args.seeds),
                ("views", args.views),
                ("limit", args.limit),
            )
            if v != parser.get_default(k)
        ),
        "pivot": f"gemma3-270m layer {LAYER}, mean pooling, centred by the training names' mean",
        "train": {
            "style": "openmoji",
            "split": "train",
            "images": len(train),
            "views": args.views,
            "epochs": args.epochs,
            "batch": args.batch,
            "size": args.size,
        },
        "summary": summary,
        "seen_style_twemoji_en_among8_pretrained_over_scratch": round(ratio, 2),
        "rows": rows,
        "wall_seconds": round(time.perf_counter() - t_start, 1),
        "threads": args.threads,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, ensure_ascii=False))
    for tower, by_set in summary.items():
        print(tower)
        for k, v in by_set.items():
            print(
                f"   {k:20s} en@8 {v['en_among8']:.3f}  others@8 {v['other7_among8']:.3f}  en@all {v['en_among_all']:.3f}  (n={v['n_images']})"
            )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
