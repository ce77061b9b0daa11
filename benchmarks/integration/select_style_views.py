"""Style-aimed training views for stage 1a, chosen on VAL concepts only (never on an evaluation set).

    python benchmarks/integration/select_style_views.py [--data DIR] [--pivot gemma3-270m]

The English head of stage 1a learns from OpenMoji renders and is asked about Twemoji and Noto drawings,
which have no black outlines and flatter colours. This script adds training views that remove what only
OpenMoji has (:class:`mpm.contrastive.StyleView`): the usual augmented view followed by a *max filter*
(``MaxFilter(k)`` in PIL thins dark outlines away; ``k`` = 3 or 5 px at 96 px) and/or a random hue rotation. Each
variant keeps the chosen head settings of ``select_contrastive.py`` (MLP 1024, 400 steps, not centred,
no CSLS), trains on the OpenMoji renders of the train + val concepts, and is scored among 8 on the
Twemoji and Noto drawings of the **val** concepts, in English and in the other 13 languages (the
protocol of ``select_contrastive.py``). Writes ``benchmarks/results/reproduction/select_style_views.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pivot", default="gemma3-270m")
    ap.add_argument("--data", default="/tmp/mpm-select-emojicap")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/reproduction/select_style_views.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mpm.builders import build_lm
    from mpm.config import load_config
    from mpm.contrastive import (
        ContrastiveScorer,
        PivotStates,
        StyleView,
        _feature_cache,
        choose_pivot_space,
    )
    from mpm.recipe import build_data
    from mpm_bench import Augmentation, load_emojicap, run_classification
    from mpm_bench.augment import train_seed
    from mpm_vision.contrastive import ContrastiveHead, ContrastiveHeadConfig, fit_contrastive_head

    cfg = load_config(
        "default",
        [
            f"data.root={args.data}",
            f"model.lm.name={args.pivot}",
            f"run.out_dir=/tmp/mpm-select-run-{args.pivot}",
        ],
    )
    c = cfg.contrastive
    langs = list(cfg.run.langs)
    data_root = build_data(cfg)
    lm, tok = build_lm(cfg.model.lm)
    space = choose_pivot_space(lm, tok, cfg, data_root, args.pivot)
    states = PivotStates(lm, tok, space, name=args.pivot)
    cache = _feature_cache(cfg)
    train = load_emojicap(data_root, "train", langs=langs, styles="openmoji") + load_emojicap(
        data_root, "val", langs=langs, styles="openmoji"
    )
    val_sets = {s: load_emojicap(data_root, "val", langs=langs, styles=s) for s in ("twemoji", "noto")}
    images = [ex.image for ex in train]
    aug = Augmentation()

    def views(view: object, first: int, n: int) -> list[torch.Tensor]:
        out = []
        for v in range(first, first + n):
            seeds = [train_seed(f"openmoji/{ex.meta.get('concept', ex.key)}", v) for ex in train]
            out.append(cache.features(images, seeds=seeds, view=view))
        return out

    t0 = time.perf_counter()
    clean = cache.features(images)
    plain = views(aug, 0, c.views)  # the recipe's views 0..3
    variants: dict[str, list[torch.Tensor]] = {
        "base (clean + 4 views)": [clean, *plain],
        "+ 4 views max3": [clean, *plain, *views(StyleView(aug, hue=False), c.views, 4)],
        "+ 4 views max5": [clean, *plain, *views(StyleView(aug, max_filter=5, hue=False), c.views, 4)],
        "+ 4 views max3 + hue": [clean, *plain, *views(StyleView(aug), c.views, 4)],
        "4 views, 2 of them max3": [clean, *plain[:2], *views(StyleView(aug, hue=False), 2, 2)],
        "+ 4 views hue": [clean, *plain, *views(StyleView(aug, max_filter=1), c.views, 4)],
        "+ 4 views max3 + hue, seeds 8-11": [clean, *plain, *views(StyleView(aug), 8, 4)],
        "+ 8 views max3 + hue": [clean, *plain, *views(StyleView(aug), c.views, 8)],
        "+ 4 views hue, seeds 8-11": [clean, *plain, *views(StyleView(aug, max_filter=1), 8, 4)],
    }
    for es in val_sets.values():
        cache.features([ex.image for ex in es])
    t_feat = time.perf_counter() - t0
    targets = states.encode([ex.names["en"] for ex in train])
    print(f"features {t_feat:.0f} s; space {space.template!r}/{space.pooling}/L{space.layer}", flush=True)

    rows = []
    for name, chunks in variants.items():
        feats = torch.cat(chunks)
        idx = torch.arange(len(train)).repeat(len(chunks))
        torch.manual_seed(0)
        head = ContrastiveHead(ContrastiveHeadConfig(feats.shape[1], targets.shape[1], hidden=c.hidden))
        fit_contrastive_head(head, feats, idx, targets, steps=c.steps, lr=c.lr, centre=c.centre, seed=0)
        acc: dict[str, dict[str, float]] = {}
        for style, es in val_sets.items():
            sc = ContrastiveScorer(head, cache, states)
            r = run_classification(sc, es, langs, num_candidates=8, seed=0, all_candidates=False, n_boot=0)
            acc[style] = {x.language: x.value for x in r if x.metric == "acc@1"}
        en = sum(acc[s]["en"] for s in acc) / len(acc)
        others = sum(acc[s][x] for s in acc for x in langs if x != "en") / (len(acc) * (len(langs) - 1))
        row = {"variant": name, "rows": int(feats.shape[0]), "en8": en, "others8": others, "acc": acc}
        rows.append(row)
        print(
            f"{name:34s}: en {en:.3f} (twemoji {acc['twemoji']['en']:.3f}, noto {acc['noto']['en']:.3f}) "
            f"others {others:.3f}",
            flush=True,
        )
    n = {s: len(es) for s, es in val_sets.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "pivot": args.pivot,
                "n_val_images": n,
                "head": {"hidden": c.hidden, "steps": c.steps},
                "seconds_features": t_feat,
                "rows": rows,
            },
            indent=1,
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
