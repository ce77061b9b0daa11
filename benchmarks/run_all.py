"""Run every benchmark script in ``benchmarks/`` one after another (``hatch run bench``).

Each script compares ours vs the reference library side by side and saves JSON under
``benchmarks/results/``; this runner only sequences them (never two at once: timings on a 2-core
machine are only meaningful alone) and prints a one-line status per script.

Usage::

    python benchmarks/run_all.py                 # the full runs recorded in the package READMEs
    python benchmarks/run_all.py --quick         # a fast check of every script (smaller sizes)
    python benchmarks/run_all.py --only paint vision

Full runs rewrite the JSON under ``benchmarks/results/``. Quick runs leave it as it was (it is
snapshotted and restored) and put their own output in ``$TMPDIR/mpm-benchmarks-quick-results``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (group, script, quick arguments, full arguments)
BENCHMARKS: list[tuple[str, str, list[str], list[str]]] = [
    ("bench", "bench/bench_metrics.py", [], []),
    ("bench", "bench/bench_emojicap.py", ["--sizes", "32"], []),
    ("bench", "bench/bench_baselines.py", ["--limit", "100"], []),
    (
        "align",
        "align/bench_speed.py",
        ["--retrieval-n", "5000", "--big-rows", "500", "--encode-texts", "200", "--repeats", "1"],
        [],
    ),
    ("align", "align/exact_retrieval_bounds.py", ["--pairs", "1000"], []),
    (
        "align",
        "align/run_real_report.py",
        ["--max-pairs", "40", "--models", "all-minilm-l6-v2", "--out", "/tmp/mpm-align-quick"],
        ["--max-pairs", "120"],
    ),
    ("paint", "paint/bench_paint.py", ["--quick"], []),
    ("train", "train/bench_loop_overhead.py", ["--repeats", "2"], ["--repeats", "5"]),
    ("train", "train/bench_shard_reading.py", ["--repeats", "2"], []),
    ("vision", "vision/bench_vision.py", ["--quick"], []),
    ("vision", "vision/bench_real_lm.py", ["--reps", "1"], []),
    ("vision", "vision/bench_efficientnet_preprocessing.py", [], []),
    ("vision", "vision/bench_feature_cache.py", ["--reps", "1", "--images", "32"], ["--reps", "7"]),
    (
        "vision",
        "vision/bench_pretrained_backbone.py",
        ["--limit", "120", "--epochs", "2", "--seeds", "0"],
        [],
    ),
    ("integration", "integration/bench_scorer.py", ["--images", "2", "--names", "3", "--repeats", "1"], []),
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes: a check that every script runs")
    ap.add_argument("--only", nargs="*", help="groups to run: bench align paint train vision integration")
    args = ap.parse_args(argv)
    results = HERE / "results"
    if args.quick:  # quick numbers must not replace the committed full-size results: snapshot, restore
        with tempfile.TemporaryDirectory() as tmp:
            snapshot = Path(tmp) / "results"
            shutil.copytree(results, snapshot)
            try:
                return _run(args)
            finally:
                quick_out = Path(tempfile.gettempdir()) / "mpm-benchmarks-quick-results"
                shutil.rmtree(quick_out, ignore_errors=True)
                shutil.copytree(results, quick_out)
                shutil.rmtree(results)
                shutil.copytree(snapshot, results)
                print(f"quick results left in {quick_out}; {results} restored")
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    failed: list[str] = []
    for group, script, quick, full in BENCHMARKS:
        if args.only and group not in args.only:
            continue
        cmd = [sys.executable, str(HERE / script), *(quick if args.quick else full)]
        print(f"==> {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd, cwd=HERE.parent)
        status = "ok" if rc == 0 else f"FAILED (exit {rc})"
        print(f"<== {script}: {status} in {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(script)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
