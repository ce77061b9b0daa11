"""How fast can *exact* bitext retrieval be on this machine? The evidence behind the speed-up ceiling.

Exact top-1 retrieval over N x N pairs must know every similarity well enough to rank it, so its cost is
bounded below by the N x N product, unless a cheaper computation can certify most pairs as losers. This
script measures the three ways to be cheaper, side by side, and saves JSON:

1. Lower-precision products (candidates to rescore exactly in fp32): bf16, fp16, int8 ``torch._int_mm``
   and FBGEMM's dynamic int8 ``Linear``, against the fp32 product, for a [2048, D] x [D, 20000] block.
2. Pruning with a certified bound: rotate both sides into the principal axes of their union (an exact
   orthogonal change of basis), score on the first r axes only, bound the rest by Cauchy-Schwarz
   (``|x_rest . y_rest| <= |x_rest| |y_rest|``), and count the candidates no bound can rule out. Real
   embeddings: multilingual-e5-small (zoo) on real parallel names (CLDR + emoji + pycountry, en-fr and
   de-it), as well as the isotropic random vectors of ``bench_speed.py``.

    python benchmarks/align/exact_retrieval_bounds.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]


def _best_of(fn: Any, repeats: int = 2) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_precisions(rows: int, n: int, dim: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(rows, dim, generator=g)
    b = torch.randn(dim, n, generator=g)
    out: dict[str, Any] = {"shape": [rows, dim, n]}
    out["fp32_mm_s"] = _best_of(lambda: a @ b)
    for name, dt in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        a2, b2 = a.to(dt), b.to(dt)
        out[f"{name}_mm_s"] = _best_of(lambda a2=a2, b2=b2: a2 @ b2, repeats=1)
    ai = torch.randint(-127, 128, (rows, dim), dtype=torch.int8, generator=g)
    bi = torch.randint(-127, 128, (n, dim), dtype=torch.int8, generator=g).T  # column-major B
    out["int8_int_mm_s"] = _best_of(lambda: torch._int_mm(ai, bi), repeats=1)
    try:
        from torch.ao.quantization import quantize_dynamic

        lin = torch.nn.Linear(dim, n, bias=False)
        lin.weight.data = b.T.contiguous()
        q = quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)
        with torch.inference_mode():
            out["int8_fbgemm_dynamic_linear_s"] = _best_of(lambda: q(a))
    except Exception as e:  # quantized engines differ between builds
        out["int8_fbgemm_dynamic_linear_s"] = None
        out["int8_fbgemm_error"] = f"{type(e).__name__}: {e}"
    out["speed_vs_fp32"] = {
        k[:-2]: out["fp32_mm_s"] / v for k, v in out.items() if k.endswith("_s") and isinstance(v, float)
    }
    return out


def pruning_rate(x: torch.Tensor, y: torch.Tensor, ranks: list[int]) -> list[dict[str, float]]:
    """For each r: the share of (i, j) pairs that survive the certified bound for x -> y top-1."""
    x = torch.nn.functional.normalize(x.double(), dim=1)
    y = torch.nn.functional.normalize(y.double(), dim=1)
    z = torch.cat([x, y])
    _, vecs = torch.linalg.eigh(z.T @ z)
    vecs = vecs.flip(1)  # principal axes, largest first
    xr, yr = x @ vecs, y @ vecs
    out = []
    for r in ranks:
        a = xr[:, r:].norm(dim=1)
        b = yr[:, r:].norm(dim=1)
        part = xr[:, :r] @ yr[:, :r].T
        bound = a[:, None] * b[None, :]
        lower_best = (part - bound).amax(1)  # some y_j certainly scores at least this
        survivors = (part + bound >= lower_best[:, None]).double().mean().item()
        out.append({"r": r, "share_of_dims": r / x.shape[1], "share_of_pairs_left_to_score": survivors})
    return out


def real_embeddings(max_pairs: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    from mpm.zoo import load_encoder
    from mpm_align import TransformersEncoder, load_corpora

    model, tok = load_encoder("multilingual-e5-small")
    enc = TransformersEncoder(model, tok, pooling="mean", progress=False)
    last = enc.num_layers - 1
    xs, ys = [], []
    for a, b in (("en", "fr"), ("de", "it")):
        cs = load_corpora("cldr,emoji,pycountry", [a, b], drop_identical=True)
        src = [t for c in cs for t in c.src][: max_pairs // 2]
        tgt = [t for c in cs for t in c.tgt][: max_pairs // 2]
        xs.append(enc.encode(src, layers=[last], batch_size=64)[last])
        ys.append(enc.encode(tgt, layers=[last], batch_size=64)[last])
    x, y = torch.cat(xs), torch.cat(ys)
    return x, y, x.shape[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pairs", type=int, default=8000, help="real pairs for the pruning check")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "align_exact_bounds.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res: dict[str, Any] = {
        "command": "python benchmarks/align/exact_retrieval_bounds.py " + " ".join(sys.argv[1:]),
        "machine": {
            "torch_threads": args.threads,
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
    }
    print("[1/2] products in other precisions ...", flush=True)
    res["precisions"] = bench_precisions(2048, 20000, 384)
    print(json.dumps(res["precisions"], indent=1), flush=True)
    print("[2/2] certified pruning after a principal-axes rotation ...", flush=True)
    ranks = [32, 64, 128, 192, 256]
    x, y, n = real_embeddings(args.pairs)
    res["pruning_real_e5"] = {"pairs": n, "dim": x.shape[1], "by_rank": pruning_rate(x, y, ranks)}
    g = torch.Generator().manual_seed(0)
    xr = torch.randn(n, 384, generator=g)
    yr = xr + 4.5 * torch.randn(n, 384, generator=g)
    res["pruning_random"] = {"pairs": n, "dim": 384, "by_rank": pruning_rate(xr, yr, ranks)}
    print(json.dumps({k: res[k] for k in ("pruning_real_e5", "pruning_random")}, indent=1), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
