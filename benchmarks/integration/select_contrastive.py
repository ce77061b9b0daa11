"""Choose stage 1a's settings on VAL concepts only (never on an evaluation set).

    python benchmarks/integration/select_contrastive.py [--pivot gemma3-270m] [--data /tmp/ec] [--quick]

The head trains on the OpenMoji renders of the train + val concepts; each setting is scored on the
*Twemoji and Noto* drawings of the val concepts (a seen concept in an unseen style, the protocol of
the `seen-style` target) among 8 names, in English and in the other languages of the default preset.
The train concepts' own Twemoji/Noto drawings and the test concepts are never looked at. Prints a
table and writes ``benchmarks/results/reproduction/select_contrastive.json``.
"""

from __future__ import annotations

import argparse
import itertools
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
    ap.add_argument("--quick", action="store_true", help="fewer settings")
    ap.add_argument("--grid", default="", help="JSON overriding the grid, e.g. '{\"views\": [4, 8]}'")
    ap.add_argument(
        "overrides", nargs="*", help="config key=value (the encoder and data of the preset to select for)"
    )
    ap.add_argument("--out", default="benchmarks/results/reproduction/select_contrastive.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mpm.builders import build_lm
    from mpm.config import load_config
    from mpm.contrastive import ContrastiveScorer, PivotStates, _feature_cache, choose_pivot_space
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
            *args.overrides,
        ],
    )
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
    t0 = time.perf_counter()
    aug = Augmentation()
    feats_by_view = [cache.features([ex.image for ex in train])]
    max_views = 8
    for v in range(max_views):
        seeds = [train_seed(f"openmoji/{ex.meta.get('concept', ex.key)}", v) for ex in train]
        feats_by_view.append(cache.features([ex.image for ex in train], seeds=seeds, view=aug))
    for es in val_sets.values():
        cache.features([ex.image for ex in es])
    t_feat = time.perf_counter() - t0
    t0 = time.perf_counter()
    targets = states.encode([ex.names["en"] for ex in train])
    for lang in langs:
        for es in val_sets.values():
            states.encode([ex.names[lang] for ex in es])
    t_states = time.perf_counter() - t0
    print(
        f"features {t_feat:.0f} s, states {t_states:.0f} s, space {space.template!r}/{space.pooling}/L{space.layer}"
    )

    grid = {
        "views": [1, 4] if args.quick else [0, 2, 4],
        "steps": [400] if args.quick else [200, 400, 800],
        "hidden": [0, 1024],
        "lr": [2e-3],
        "centre": [True, False],
        "csls_k": [0, 10],
    }
    grid.update(json.loads(args.grid or "{}"))
    rows = []
    for views, steps, hidden, lr in itertools.product(
        grid["views"], grid["steps"], grid["hidden"], grid["lr"]
    ):
        feats = torch.cat(feats_by_view[: views + 1])
        idx = torch.arange(len(train)).repeat(views + 1)
        for centre in grid["centre"]:
            torch.manual_seed(0)
            head = ContrastiveHead(ContrastiveHeadConfig(feats.shape[1], targets.shape[1], hidden=hidden))
            fit_contrastive_head(head, feats, idx, targets, steps=steps, lr=lr, centre=centre, seed=0)
            with torch.inference_mode():
                ref = head(feats_by_view[0])
            for csls_k in grid["csls_k"]:
                acc: dict[str, dict[str, float]] = {}
                for style, es in val_sets.items():
                    acc[style] = {}
                    for lang in langs:
                        gallery = list(dict.fromkeys(ex.names[lang] for ex in es))
                        mean = states.encode(gallery).mean(0) if centre else None
                        sc = ContrastiveScorer(
                            head, cache, states, lang_mean=mean, reference=ref, csls_k=csls_k
                        )
                        r = run_classification(
                            sc, es, [lang], num_candidates=8, seed=0, all_candidates=False, n_boot=0
                        )
                        acc[style][lang] = next(x.value for x in r if x.metric == "acc@1")
                en = sum(acc[s]["en"] for s in acc) / len(acc)
                others = sum(acc[s][x] for s in acc for x in langs if x != "en") / (
                    len(acc) * (len(langs) - 1)
                )
                row = {"views": views, "steps": steps, "hidden": hidden, "lr": lr, "centre": centre,
                       "csls_k": csls_k, "en8": en, "others8": others, "score": en + others, "acc": acc}  # fmt: skip
                rows.append(row)
                print(
                    f"views {views} steps {steps} hidden {hidden} centre {centre!s:5} csls {csls_k:2}: "
                    f"en {en:.3f} others {others:.3f}",
                    flush=True,
                )
    best = max(rows, key=lambda r: r["score"])
    print(
        "best:",
        {k: best[k] for k in ("views", "steps", "hidden", "lr", "centre", "csls_k", "en8", "others8")},
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "pivot": args.pivot,
                "space": {"template": space.template, "pooling": space.pooling, "layer": space.layer},
                "n_val_concepts": {s: len(es) for s, es in val_sets.items()},
                "seconds": {"features": t_feat, "states": t_states},
                "rows": rows,
                "best": best,
            },
            indent=1,
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
