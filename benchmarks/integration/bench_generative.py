"""The recipe's chat (VisCPM-Chat) path at the default preset's size: warm start, stage 1b, stage 2 at 5 %
and its 0 % branch, the generative head and answer-language fidelity.

Runs exactly what ``mpm demo`` runs for the chat model (``mpm.recipe.train`` + ``mpm.generative``),
without the paint stage and the pivot-alignment measurement, and reports:

- time: feature caching + warm start, each chat stage (s/step), each evaluation;
- the generative head (mean log-probability per token of each candidate name, the question in
  English) on ``seen-aug`` in every ``eval.chat_langs`` language: acc@1 among ``eval.num_candidates``
  and among all names of ``eval.chat_all`` images, each with its 95 % cluster-bootstrap interval and n,
  and whether the interval's lower bound is above chance;
- answer-language fidelity (the question "what is this emoji called?" asked in X, greedy answers,
  langid) at 5 % (main chain) and 0 % (the ``instruct_en`` branch), beside the oracle (the true names:
  the detector's ceiling), with a few answers per language.

    python benchmarks/integration/bench_generative.py                       # the default preset
    python benchmarks/integration/bench_generative.py --val                 # choose settings: val concepts
    python benchmarks/integration/bench_generative.py stages.align.steps=80 # any recipe key=value

Writes ``benchmarks/results/generative.json`` (``--val``: ``generative_val.json``). Settings are chosen
with ``--val`` (the ``val`` split: concepts never trained on, never an evaluation set).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]


def _row(r: Any) -> dict[str, Any]:
    iv = r.interval
    return {
        "value": round(float(r.value), 4),
        "low": None if iv is None else round(float(iv.low), 4),
        "high": None if iv is None else round(float(iv.high), 4),
        "n": int(r.n),
        "chance": r.chance,
        "above_chance": None if iv is None or r.chance is None else bool(iv.low > r.chance),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("overrides", nargs="*", help="recipe key=value overrides (mpm.config)")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--out-dir", default="/tmp/mpm-bench-generative")
    ap.add_argument("--val", action="store_true", help="evaluate on the val split (choosing settings)")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--fresh", action="store_true", help="retrain (the earlier run is kept aside)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mpm.config import load_config
    from mpm.generative import evaluate_chat
    from mpm.recipe import build_data, check_splits, start_run, train

    overrides = [
        f"run.out_dir={args.out_dir}",
        "stages.paint.enabled=false",
        "align.enabled=false",
        *args.overrides,
    ]
    if args.val:
        overrides += ["eval.chat_set=", "eval.split=val"]
    cfg = start_run(load_config(args.preset, overrides), fresh=args.fresh, if_changed="rerun")
    t0 = time.perf_counter()
    data_root = build_data(cfg)
    check_splits(cfg, data_root)
    t_data = time.perf_counter() - t0
    t0 = time.perf_counter()
    run = train(cfg, data_root=data_root, if_changed="rerun")
    t_train = time.perf_counter() - t0
    predictions: dict[str, dict[str, list[str]]] = {}
    t0 = time.perf_counter()
    results = evaluate_chat(run, data_root, predictions=predictions)
    t_eval = time.perf_counter() - t0

    ws_path = Path(cfg.run.out_dir) / "stages" / "warm-start" / "record.json"
    warm = json.loads(ws_path.read_text()) if ws_path.is_file() else None
    if warm:
        warm.pop("settings", None)
    stages = {
        name: {
            "steps": r.final_step,
            "batch_size": int(cfg.stages[name].train.get("batch_size", 8)),
            "elapsed_s": round(r.elapsed_s, 1),
            "s_per_step": round(r.elapsed_s / max(1, r.final_step - (r.resumed_from or 0)), 3),
            "first_loss": round(r.losses[0], 3),
            "final_loss": round(r.final_loss, 3),
            "samples_by_source": dict(r.data.samples_by_source),
        }
        for name, r in run.stage_results.items()
    }
    gen: dict[str, dict[str, Any]] = {}
    fid: dict[str, dict[str, dict[str, Any]]] = {}
    chrf: dict[str, dict[str, float]] = {}
    for r in results:
        if r.task == "classification" and r.metric in ("acc@1", "acc_all@1"):
            gen.setdefault(r.metric, {})[r.language] = _row(r)
        elif r.task == "captioning" and r.metric in ("fidelity", "en_share"):
            fid.setdefault(f"{r.model}:{r.metric}", {})[r.language] = _row(r)
        elif r.task == "captioning" and r.metric == "chrf":
            chrf.setdefault(r.model, {})[r.language] = round(float(r.value), 1)
    above = {
        m: sum(1 for lang, v in rows.items() if lang != "en" and v["above_chance"]) for m, rows in gen.items()
    }
    report = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "preset": args.preset,
        "overrides": overrides,
        "threads": args.threads,
        "platform": platform.platform(),
        "load_average_at_end": os.getloadavg(),
        "eval_set": "val" if args.val else cfg.eval.chat_set or cfg.eval.split,
        "time_s": {
            "data": round(t_data, 1),
            "train_total": round(t_train, 1),
            "eval_total": round(t_eval, 1),
            **{k: round(v, 1) for k, v in run.timings.items()},
        },
        "warm_start": warm,
        "stages": stages,
        "generative_head": gen,
        "generative_head_langs_above_chance_of_13": above,
        "fidelity": fid,
        "chrf": chrf,
        "sample_answers": {m: {lang: a[:4] for lang, a in p.items()} for m, p in predictions.items()},
    }
    name = args.json or ("generative_val.json" if args.val else "generative.json")
    out = ROOT / "benchmarks" / "results" / name
    out.write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")

    print(f"\ntimes (s): {report['time_s']}")
    for n, st in stages.items():
        print(
            f"  stage {n}: {st['steps']} steps x {st['batch_size']}, {st['s_per_step']} s/step, loss {st['first_loss']} -> {st['final_loss']}"
        )
    for metric, rows in gen.items():
        print(
            f"\ngenerative head {metric} (n={next(iter(rows.values()))['n']}, chance {next(iter(rows.values()))['chance']:.3f}); above chance in {above[metric]} of {len(rows) - 1}:"
        )
        print(
            "  "
            + "  ".join(
                f"{lang} {v['value']:.2f} [{v['low']:.2f},{v['high']:.2f}]" for lang, v in rows.items()
            )
        )
    print("\nanswer-language fidelity (share of answers in the asked language):")
    for key, rows in fid.items():
        if key.endswith(":fidelity"):
            print(
                f"  {key.removesuffix(':fidelity'):32s} "
                + "  ".join(f"{lang} {v['value']:.2f}" for lang, v in rows.items())
            )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
