"""Per-item ranking metrics over among-all galleries: ``ranking_item_values`` vs a row-by-row loop.

The among-all protocol ranks every image against all N names of the set, so an evaluation holds an
``[n, N]`` score matrix per language. ``mpm_bench.tasks.ranking_item_values`` ranks rows of one length
together; the reference is the row-by-row loop it replaced (``ranking_hits`` / ``reciprocal_ranks`` on
one ``[1, N]`` row at a time). Both run side by side on the same random scores (with ties) for the
galleries of the default (N = 120), ``full`` (N = 1,000) and all training concepts (N = 3,213), with
acc@1, acc@5 and the reciprocal rank, as the board computes them. Prints a table and writes
``benchmarks/results/bench_ranking.json``.

    python benchmarks/bench/bench_ranking.py [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from mpm_bench.metrics import ranking_hits, reciprocal_ranks
from mpm_bench.tasks import ranking_item_values

ROOT = Path(__file__).resolve().parents[2]


def row_by_row(rows: np.ndarray, rel: np.ndarray, ks: list[int]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {f"acc_all@{k}": [] for k in ks}
    out["mrr_all"] = []
    for row, m in zip(rows, rel, strict=True):
        r, mm = row[None, :], m[None, :]
        for k in ks:
            out[f"acc_all@{k}"].append(float(ranking_hits(r, mm, k)[0]))
        out["mrr_all"].append(float(reciprocal_ranks(r, mm)[0]))
    return out


def best_of(fn, reps: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_ranking.json"))
    args = ap.parse_args()
    ks = [1, 5]
    rng = np.random.default_rng(0)
    rows = []
    for n in (120, 1000, 3213):
        scores = np.round(rng.normal(size=(n, n)), 2)  # rounded: ties occur, as with cosine scores in fp32
        rel = np.zeros((n, n), dtype=bool)
        rel[np.arange(n), rng.integers(0, n, size=n)] = True
        ref = row_by_row(scores, rel, ks)
        ours = ranking_item_values(scores, rel, ks, prefix="acc_all", mrr_name="mrr_all")
        diff = max(abs(a - b) for name in ref for a, b in zip(ref[name], ours[name], strict=True))
        t_ref = best_of(lambda: row_by_row(scores, rel, ks), args.reps)  # noqa: B023
        t_ours = best_of(
            lambda: ranking_item_values(scores, rel, ks, prefix="acc_all", mrr_name="mrr_all"),  # noqa: B023
            args.reps,
        )
        rows.append({"n_items": n, "gallery": n, "row_by_row_s": t_ref, "ranking_item_values_s": t_ours,
                     "speedup": t_ref / t_ours, "max_abs_diff": diff})  # fmt: skip
        print(f"N = {n:5d}: row by row {t_ref:8.3f} s, ranking_item_values {t_ours:7.3f} s, "
              f"x{t_ref / t_ours:6.1f}, max |diff| {diff:.1e}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": "python benchmarks/bench/bench_ranking.py" + f" --reps {args.reps}",
                "metrics": ["acc_all@1", "acc_all@5", "mrr_all"],
                "threads_env": os.environ.get("OMP_NUM_THREADS"),
                "platform": platform.platform(),
                "rows": rows,
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
