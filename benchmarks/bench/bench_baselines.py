"""The EmojiCap leaderboard of the weight-free reference models (chance and ceiling), all 5 tasks,
all 14 languages, plus the language-ID ceiling: how often langid recognises the *true* names.

Run: ``python benchmarks/bench/bench_baselines.py [--data DIR] [--limit N]``; writes
``benchmarks/results/bench_baselines.json`` and the board (Markdown, HTML, PNG plots) under
``benchmarks/results/bench_baselines_board/``. Any real model joins the same board with
``mpm-bench run --model package.module:factory ...`` followed by ``mpm-bench board``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from mpm_bench import (
    EMOJICAP_LANGS,
    Leaderboard,
    OracleBaseline,
    RandomBaseline,
    build_emojicap,
    evaluate,
    load_emojicap,
)

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=None, help="EmojiCap folder (built at 32 px in a temp dir if absent)"
    )
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks/results"))
    args = parser.parse_args()
    data = args.data
    if data is None or not (Path(data) / "manifest.json").is_file():
        data = data or tempfile.mkdtemp(prefix="emojicap-")
        build_emojicap(data, size=32, progress=False)
    dataset = load_emojicap(data, args.split, limit=args.limit)
    langs = list(EMOJICAP_LANGS)
    vocab = {lang: sorted({ex.names[lang] for ex in dataset}) for lang in langs}
    timings = {}
    results = []
    for model in (RandomBaseline(vocabulary=vocab, seed=0), OracleBaseline(dataset)):
        start = time.perf_counter()
        results += evaluate(model, dataset, langs, dataset_name=f"emojicap/{args.split}")
        timings[model.name] = round(time.perf_counter() - start, 1)
        print(f"{model.name}: {timings[model.name]} s")
    out_dir = Path(args.out_dir)
    board = Leaderboard(results)
    paths = board.write(out_dir / "bench_baselines_board")
    print(board.to_markdown())
    summary = {
        "command": "python benchmarks/bench/bench_baselines.py",
        "n": len(dataset), "split": args.split, "seconds": timings,
        "oracle_fidelity_langid": {r.language: r.value for r in results
                                   if r.model == "oracle" and r.task == "captioning" and r.metric == "fidelity"},
        "random_acc@1": {r.language: r.value for r in results
                         if r.model.startswith("random") and r.task == "classification" and r.metric == "acc@1"},
        "files": {k: str(p.relative_to(ROOT)) for k, p in paths.items() if not k.startswith("plot:")},
    }  # fmt: skip
    (out_dir / "bench_baselines.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    print(json.dumps(summary, ensure_ascii=False))


if __name__ == "__main__":
    main()
