"""Paint in every language from the pivot states of English-only training: judged accuracy with intervals.

The default preset's paint stage (``integration/configs/default.toml``: a pixel UNet conditioned on
Gemma-3-270M's cached state of each **English** name) is trained through the recipe
(``mpm.painting.train_paint``, mpm-train's ``run_plan``), then paints each concept from the pivot
state of its name in each of the 14 EmojiCap languages (zero-shot for the 13 non-English ones). A
painting is *recognised* when, among 8 candidate concepts, the clean OpenMoji render nearest to it in
frozen EfficientNet-Lite0 features is its own (``mpm.painting.RenderJudge``; chance 1/8).

Two sets: ``val`` (concepts never trained on: does painting generalise to new concepts?) and
``seen`` (the first training concepts: is a trained concept painted from its name in X?). Numbers are
mpm-bench ``judge_acc@1`` with 95 % cluster-bootstrap intervals. Writes
``benchmarks/results/paint_transfer.json`` and the language-labelled grids
``benchmarks/results/paint_grid.png`` (seen concepts) and ``paint_grid_val.png``.

    python benchmarks/integration/bench_paint_transfer.py                 # the default preset
    python benchmarks/integration/bench_paint_transfer.py stages.paint.steps=3000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the default preset")
    ap.add_argument("--work", default="/tmp/mpm-bench-paint", help="run directory (data, states, stages)")
    ap.add_argument("--items", type=int, default=59, help="concepts per set (val has 59 at data.limit=600)")
    ap.add_argument("--guidance", type=float, default=None, help="default: eval.guidance_scale")
    ap.add_argument(
        "--steps", type=int, default=None, help="sampling steps (default: eval.paint_inference_steps)"
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="resume the stages in --work instead of retraining")
    ap.add_argument("--tag", default="", help="suffix of the output file names")
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(args.threads)

    from mpm.builders import build_lm
    from mpm.config import load_config
    from mpm.painting import RenderJudge, efficientnet_embedder, recipe_painter, train_paint
    from mpm.recipe import TrainedRun, build_data, save_paint_grid
    from mpm_bench import EMOJICAP_LANGS, load_emojicap, run_text_to_image

    work = Path(args.work)
    if work.exists() and not args.keep:
        shutil.rmtree(work / "stages", ignore_errors=True)
    langs = list(EMOJICAP_LANGS)
    cfg = load_config(
        "default",
        [f"run.out_dir={work}", f"data.root={work / 'emojicap'}", "run.progress=false", *args.overrides],
    )
    data_root = build_data(cfg)
    lm, tok = build_lm(cfg.model.lm, seed=cfg.run.seed)
    t0 = time.perf_counter()
    model, states, stages = train_paint(cfg, lm, tok, stages_dir=work / "stages", if_changed="rerun")
    wall = time.perf_counter() - t0
    train_s = sum(r.elapsed_s for r in stages)
    print(f"paint stages: {train_s:.0f} s training ({wall:.0f} s with the pivot states), "
          + ", ".join(f"{r.stage} {r.final_step} steps, loss {r.losses[0]:.3f} -> {r.final_loss:.3f}" for r in stages))  # fmt: skip

    run = TrainedRun(config=cfg, out_dir=work, lm=lm, tokenizer=tok, paint=model, paint_states=states)
    ev = cfg.eval
    steps = args.steps or ev.paint_inference_steps
    guidance = ev.guidance_scale if args.guidance is None else args.guidance
    painter = recipe_painter(run, num_inference_steps=steps, guidance_scale=guidance)
    embed = efficientnet_embedder()
    out: dict[str, Any] = {
        "command": "python benchmarks/integration/bench_paint_transfer.py " + " ".join(args.overrides),
        "preset": "default",
        "overrides": args.overrides,
        "paint": cfg.paint.to_dict(),
        "stage": cfg.stages["paint"].to_dict(),
        "train_s": round(train_s, 1),
        "train_wall_s_with_states": round(wall, 1),
        "steps": [r.final_step for r in stages],
        "final_loss": [round(r.final_loss, 4) for r in stages],
        "sampling": {"steps": steps, "guidance_scale": guidance},
        "judge": "nearest clean OpenMoji render among 8 candidates, EfficientNet-Lite0 pooled features",
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared: other processes may run)",
        "sets": {},
    }
    sets = {
        "seen": load_emojicap(data_root, "train", langs=langs, limit=args.items, styles="openmoji"),
        "val": load_emojicap(data_root, "val", langs=langs, limit=args.items, styles="openmoji"),
    }
    for name, items in sets.items():
        t1 = time.perf_counter()
        judge = RenderJudge(embed, {ex.names["en"]: ex.image for ex in items})
        painted: dict[str, list[Any]] = {}
        results = run_text_to_image(
            painter, items, langs, judge=judge, judge_lang="en", num_candidates=8, seed=cfg.run.seed,
            model_name="mpm-gemma3-270m-paint", dataset_name=f"emojicap/{name}", images_out=painted,
        )  # fmt: skip
        rows = {}
        for r in results:
            if r.metric != "judge_acc@1":
                continue
            lo, hi = (r.interval.low, r.interval.high) if r.interval else (float("nan"), float("nan"))
            rows[r.language] = {"acc": r.value, "low": lo, "high": hi, "n": r.n, "chance": r.chance}
        above = [lang for lang, v in rows.items() if lang != "en" and v["low"] > v["chance"]]
        out["sets"][name] = {
            "n": len(items),
            "judge_acc@1": rows,
            "above_chance_non_en": above,
            "above_chance_count": f"{len(above)} of {len(rows) - 1}",
            "eval_s": round(time.perf_counter() - t1, 1),
        }
        grid = RESULTS / (f"paint_grid{args.tag}.png" if name == "seen" else f"paint_grid_val{args.tag}.png")
        save_paint_grid(
            items, painted, grid, title=f"painted from the pivot state of the name ({name} concepts)"
        )
        print(f"\n{name} concepts (n={len(items)}, among 8, chance 0.125):")
        for lang, v in rows.items():
            mark = "*" if v["low"] > v["chance"] else " "
            print(f"  {lang}: {v['acc']:.3f} [{v['low']:.3f}, {v['high']:.3f}] {mark}")
        print(
            f"  interval above chance in {len(above)} of {len(rows) - 1} non-English languages; grid {grid}"
        )
    path = RESULTS / f"paint_transfer{args.tag}.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
