"""The real alignment report: Gemma-3-270M, multilingual-e5-small and all-MiniLM-L6-v2 on CLDR + emoji names.

English paired with zh, de, fr, es, ja, ru, ar. Real packaged weights through the ``mpm`` zoo (offline),
real parallel phrases (CLDR territory names through Babel + CLDR emoji names), every hidden layer, and for
Gemma a template x pooling sweep. Writes, per model, ``benchmarks/align/real/<model>/`` (report.md,
report.json, heatmaps, curves) and a summary ``benchmarks/results/align_real_report.json`` +
``benchmarks/align/real/SUMMARY.md``.

    python benchmarks/align/run_real_report.py --max-pairs 120

(see benchmarks/align/README.md for the exact command behind the committed results).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from mpm.zoo import load_causal_lm, load_encoder, load_sentence_transformer
from mpm_align import (
    TEMPLATES,
    AlignmentReport,
    SentenceTransformerEncoder,
    TransformersEncoder,
    align_report,
    load_corpora,
)

ROOT = Path(__file__).resolve().parents[2]
LANGS = ["en", "zh", "de", "fr", "es", "ja", "ru", "ar"]


def gemma_variants(model: Any, tok: Any) -> dict[str, Any]:
    base = TransformersEncoder(model, tok, name="gemma3-270m", skip_special_tokens=True)
    v: dict[str, Any] = {}
    v.update(base.variants(templates=["plain"], poolings=["mean", "last"]))
    v.update(base.variants(templates=["translate-en"], poolings=["mean", "last"]))
    v.update(base.variants(templates=["prompteol"], poolings=["last"]))
    return v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-pairs", type=int, default=120, help="pairs per language pair (subsampled, seed 0)")
    ap.add_argument("--data", default="cldr:territories,emoji")
    ap.add_argument("--models", default="gemma3-270m,multilingual-e5-small,all-minilm-l6-v2")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "align" / "real"))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1 is fastest on a shared 2-core machine: OpenMP threads spin-wait)",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t_start = time.perf_counter()
    corpora = load_corpora(args.data, LANGS, merge=True, max_pairs=args.max_pairs, seed=0)
    out = Path(args.out)
    summary: dict[str, Any] = {
        "command": "python benchmarks/align/run_real_report.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "data": args.data,
        "languages": LANGS,
        "corpus_stats": [{"corpus": c.name, "pair": c.pair, **c.stats, "used": len(c)} for c in corpora],
        "models": {},
    }
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        t0 = time.perf_counter()
        if name == "gemma3-270m":
            model, tok = load_causal_lm(name)
            encoders: dict[str, Any] = gemma_variants(model, tok)
        else:
            model, tok = load_encoder(name)
            template = TEMPLATES["e5-query"] if name == "multilingual-e5-small" else None
            base = TransformersEncoder(model, tok, name=name, template=template, pooling="mean")
            tname = "query" if template else "plain"
            encoders = {f"{tname}/mean": base}
            encoders["sentence-transformers"] = SentenceTransformerEncoder(
                load_sentence_transformer(name), name=name, template=template
            )
        load_s = time.perf_counter() - t0
        print(f"== {name}: {len(encoders)} variants, loaded in {load_s:.1f} s", flush=True)
        report: AlignmentReport = align_report(encoders, corpora, batch_size=args.batch_size, model_name=name)
        report.timings["load"] = load_s
        files = report.save(out / name)
        best = report.best_layers(
            ["retrieval_csls", "retrieval_cosine", "retrieval_margin", "xsim_error", "cosine_gap", "cka"]
        )
        summary["models"][name] = {
            "variants": report.variants,
            "layers": report.layers,
            "best": best,
            "timings": report.timings,
            "files": {k: os.path.relpath(p, ROOT) for k, p in files.items()},
        }
        print(f"   done in {time.perf_counter() - t0:.0f} s -> {files['markdown']}", flush=True)
        del model, encoders, report
    summary["total_seconds"] = time.perf_counter() - t_start
    res = ROOT / "benchmarks" / "results" / "align_real_report.json"
    res.parent.mkdir(parents=True, exist_ok=True)
    res.write_text(json.dumps(summary, ensure_ascii=False, indent=1), encoding="utf-8")
    (out / "SUMMARY.md").write_text(_summary_md(summary), encoding="utf-8")
    print(f"total {summary['total_seconds']:.0f} s; summary -> {res}")


def _summary_md(s: dict[str, Any]) -> str:
    lines = [
        "# Real alignment report: summary",
        "",
        f"Command: `{s['command']}`",
        "",
        f"Data: {s['data']} (merged per pair), languages {', '.join(s['languages'])}; "
        f"total run time {s['total_seconds']:.0f} s on {s['machine']['cpu_threads']} CPU threads.",
        "",
        "Best setting per pair (top-1 retrieval with CSLS, mean of both directions): value (variant, layer).",
        "",
        "| pair | " + " | ".join(s["models"]) + " |",
        "|---|" + "---|" * len(s["models"]),
    ]
    pairs = list(next(iter(s["models"].values()))["best"]) if s["models"] else []
    for p in pairs:
        cells = []
        for m in s["models"].values():
            b = m["best"].get(p, {}).get("retrieval_csls")
            cells.append(f"{b['value']:.3f} ({b['variant']}, L{b['layer']})" if b else "")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    lines += ["", "Per-model reports: " + ", ".join(f"[{m}]({m}/report.md)" for m in s["models"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
