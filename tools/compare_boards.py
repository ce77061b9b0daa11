"""Does a board reproduce a committed one? Every row of REFERENCE against the same row of OTHER.

A row is (model, task, dataset, language, metric). It *reproduces* when OTHER's value lies inside
REFERENCE's 95 % interval or equals its value to 1e-9 (rows without an interval must be equal). Prints the rows that do
not, the largest absolute difference, and a one-line verdict; exits 1 when a row is missing or
outside.

    python tools/compare_boards.py benchmarks/results/reproduction/default/board outputs/demo/board
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

Key = tuple[str, str, str, str, str]


def load_rows(path: Path) -> dict[Key, dict[str, Any]]:
    """``{(model, task, dataset, language, metric): row}`` of a board directory or its ``results.json``."""
    file = path / "results.json" if path.is_dir() else path
    data = json.loads(file.read_text(encoding="utf-8"))
    rows = data["results"] if isinstance(data, dict) else data
    return {(r["model"], r["task"], r.get("dataset", ""), r["language"], r["metric"]): r for r in rows}


def compare(reference: dict[Key, dict[str, Any]], other: dict[Key, dict[str, Any]]) -> dict[str, Any]:
    """Counts of rows inside / outside the reference's intervals, equal rows, missing rows, max difference."""
    missing = [k for k in reference if k not in other]
    outside: list[tuple[Key, float, float, tuple[float, float] | None]] = []
    inside = equal = 0
    max_diff = 0.0
    for key, ref in reference.items():
        if key not in other:
            continue
        a, b = float(ref["value"]), float(other[key]["value"])
        max_diff = max(max_diff, abs(a - b))
        equal += abs(a - b) <= 1e-9
        iv = ref.get("interval")
        if abs(a - b) <= 1e-9:
            inside += bool(iv)  # an equal value reproduces even where a biased bootstrap (FD) misses it
        elif iv:
            ok = iv["low"] - 1e-9 <= b <= iv["high"] + 1e-9
            (outside.append((key, a, b, (iv["low"], iv["high"]))) if not ok else None)
            inside += ok
        else:
            outside.append((key, a, b, None))
    return {
        "rows": len(reference),
        "with_interval_inside": inside,
        "equal": equal,
        "outside": outside,
        "missing": missing,
        "max_abs_diff": max_diff,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reference", type=Path, help="the committed board (directory or results.json)")
    ap.add_argument("other", type=Path, help="the board of a new run")
    args = ap.parse_args(argv)
    got = compare(load_rows(args.reference), load_rows(args.other))
    for key, a, b, iv in got["outside"]:
        where = f"[{iv[0]:.3f}, {iv[1]:.3f}]" if iv else "(no interval)"
        print(f"outside: {' / '.join(key)}: {b:.4f} vs {a:.4f} {where}")
    for key in got["missing"]:
        print(f"missing: {' / '.join(key)}")
    print(
        f"{got['rows']} rows: {got['equal']} equal, {got['with_interval_inside']} inside the reference's "
        f"interval, {len(got['outside'])} outside, {len(got['missing'])} missing; "
        f"largest difference {got['max_abs_diff']:.4f}"
    )
    return 1 if got["outside"] or got["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
