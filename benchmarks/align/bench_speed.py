"""mpm-align speed, side by side with sentence-transformers, in one run; ratios saved as JSON.

1. (run first, in a child process, before the parent allocates much) The 200,000 x 200,000 (D=640)
   bitext retrieval, all three methods in both directions, to completion: time and peak resident memory
   (``VmHWM``). ``--big-rows R`` runs only the first neighbour pass over R queries (a quick memory check).
2. Bitext retrieval at N=20,000: ``mpm_align.retrieval_accuracy`` (cosine) vs sentence-transformers'
   ``TranslationEvaluator`` on the same embeddings (a stub model hands it the precomputed vectors), with
   the accuracies checked identical, at 1 thread and at ``--threads``. Also timed: the one N x N fp32
   product that any exact method must compute (the "GEMM floor"); evaluator time / floor is the largest
   speed-up an exact fp32 method can reach on this machine.
3. Encoding throughput: ``TransformersEncoder`` (mean pooling, last layer) vs ``SentenceTransformer.encode``
   on the same model (all-MiniLM-L6-v2 from the zoo), the same real phrases, the same batch size.

    python benchmarks/align/bench_speed.py             # full: about 25 min on 2 cores
    python benchmarks/align/bench_speed.py --big-rows 2000 --retrieval-n 5000 --encode-texts 200"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[2]


def _phrases(n: int) -> list[str]:
    from mpm_align import load_corpora

    out: list[str] = []
    for c in load_corpora(
        "cldr:territories,cldr:languages,emoji", ["en", "zh", "de", "fr", "es", "ja", "ru"]
    ):
        for t in (*c.src, *c.tgt):
            out.append(t)
    uniq = list(dict.fromkeys(out))
    return uniq[:n]


def bench_encode(n: int, batch_size: int, repeats: int) -> dict[str, Any]:
    from mpm.zoo import load_sentence_transformer
    from mpm_align import TransformersEncoder

    st = load_sentence_transformer("all-minilm-l6-v2")
    texts = _phrases(n)
    tr = st[0]
    ours = TransformersEncoder(
        tr.auto_model, tr.tokenizer, pooling="mean", max_length=tr.max_seq_length, progress=False
    )
    last = ours.num_layers - 1
    # warm up both
    st.encode(texts[:64], batch_size=batch_size)
    ours.encode(texts[:64], layers=[last], batch_size=batch_size)
    t_st: list[float] = []
    t_ours: list[float] = []

    def run_st() -> torch.Tensor:
        t0 = time.perf_counter()
        out = st.encode(texts, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
        t_st.append(time.perf_counter() - t0)
        return out

    def run_ours() -> torch.Tensor:
        t0 = time.perf_counter()
        out = ours.encode(texts, layers=[last], batch_size=batch_size)[last]
        t_ours.append(time.perf_counter() - t0)
        return out

    for r in range(repeats):  # interleaved, alternating order, best of `repeats` (the machine is shared)
        if r % 2 == 0:
            ref, got = run_st(), run_ours()
        else:
            got, ref = run_ours(), run_st()
    cos = torch.nn.functional.cosine_similarity(torch.nn.functional.normalize(got, dim=1), ref.cpu(), dim=1)
    return {
        "model": "all-minilm-l6-v2",
        "texts": len(texts),
        "batch_size": batch_size,
        "seconds_sentence_transformers": min(t_st),
        "seconds_mpm_align": min(t_ours),
        "texts_per_s_sentence_transformers": len(texts) / min(t_st),
        "texts_per_s_mpm_align": len(texts) / min(t_ours),
        "speedup": min(t_st) / min(t_ours),
        "min_cosine_to_st_embeddings": float(cos.min()),
        "all_runs": {"sentence_transformers": t_st, "mpm_align": t_ours},
    }


class _NoCard:
    def set_evaluation_metrics(self, *args: Any, **kw: Any) -> None:
        pass


class _StubModel:
    """Hands TranslationEvaluator precomputed embeddings, as ``encode(convert_to_numpy=False)`` would."""

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        self.table = table
        self.model_card_data = _NoCard()

    def encode(self, sentences: list[str], **kw: Any) -> list[torch.Tensor]:
        return list(self.table[sentences[0][0]])


def _gemm_floor(x: torch.Tensor, y: torch.Tensor, repeats: int = 2) -> float:
    """Seconds for the one ``N x N`` fp32 product that exact cosine retrieval cannot avoid (best of
    ``repeats``, in 2,048-row chunks written into one buffer, so it is neither method's overhead)."""
    xu = torch.nn.functional.normalize(x, dim=1)
    yt = torch.nn.functional.normalize(y, dim=1).T
    buf = torch.empty(2048, y.shape[0])
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in range(0, x.shape[0], 2048):
            c = min(2048, x.shape[0] - s)
            torch.mm(xu[s : s + c], yt, out=buf[:c])
        best = min(best, time.perf_counter() - t0)
    return best


def bench_translation_evaluator(n: int, dim: int, threads: int, seed: int = 0) -> dict[str, Any]:
    try:
        from sentence_transformers.sentence_transformer.evaluation import TranslationEvaluator
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.evaluation import TranslationEvaluator
    from mpm_align import retrieval_accuracy

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = x + 4.5 * torch.randn(n, dim, generator=g)  # noisy translations: accuracy well below 1
    src = [f"s{i}" for i in range(n)]
    tgt = [f"t{i}" for i in range(n)]
    ev = TranslationEvaluator(src, tgt, write_csv=False, batch_size=256)
    stub = _StubModel({"s": x, "t": y})
    # ours first: the peak-RSS high-water mark only grows, so each delta is measured from the mark before
    hwm0 = _peak_rss_kib()
    t0 = time.perf_counter()
    ours = retrieval_accuracy(x, y, method="cosine")
    t_ours = time.perf_counter() - t0
    hwm1 = _peak_rss_kib()
    t0 = time.perf_counter()
    res = ev(stub)  # type: ignore[arg-type]
    t_st = time.perf_counter() - t0
    hwm2 = _peak_rss_kib()
    t0 = time.perf_counter()
    ours_again = retrieval_accuracy(x, y, method="cosine")  # second run: the order cannot favour us
    t_ours = min(t_ours, time.perf_counter() - t0)
    floor = _gemm_floor(x, y)
    st_acc = {
        "x2y": res[next(k for k in res if k.endswith("src2trg_accuracy"))],
        "y2x": res[next(k for k in res if k.endswith("trg2src_accuracy"))],
    }
    return {
        "n": n,
        "dim": dim,
        "torch_threads": threads,
        "accuracy_translation_evaluator": st_acc,
        "accuracy_mpm_align": ours,
        "identical": st_acc == ours == ours_again,
        "seconds_translation_evaluator": t_st,
        "seconds_mpm_align": t_ours,
        "speedup": t_st / t_ours,
        "seconds_gemm_floor": floor,
        "max_speedup_of_any_exact_fp32_method": t_st / floor,
        "mpm_align_overhead_over_gemm_floor": t_ours / floor - 1.0,
        "extra_peak_rss_gib_mpm_align": (hwm1 - hwm0) / 2**20,
        "extra_peak_rss_gib_translation_evaluator": (hwm2 - hwm1) / 2**20,
    }


def _peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _child_big(n: int, dim: int, rows: int) -> None:
    """Runs in a fresh process: allocate, retrieve, print JSON with the peak RSS.

    ``rows == n``: the whole ``bitext_retrieval`` (cosine, CSLS k=10 and margin k=4, both directions).
    ``rows < n``: only the first neighbour pass over ``rows`` queries (a quick check of the memory peak).
    """
    from mpm_align import bitext_retrieval
    from mpm_align.metrics import _neighbours, _unit

    base = _peak_rss_kib()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g)
    y = x + 4.0 * torch.randn(n, dim, generator=g)  # noisy: accuracy well below 1 at N=200,000
    inputs = _peak_rss_kib()
    t0 = time.perf_counter()
    res: dict[str, Any] = {"n": n, "dim": dim, "rows_scored": rows}
    if rows >= n:
        res["accuracy"] = bitext_retrieval(x, y)
        res["methods"] = "cosine, csls (k=10), margin (k=4); two passes over the similarity chunks"
    else:
        with torch.inference_mode():
            nb = _neighbours(x[:rows], _unit(y), 10, None)
        res["cosine_x2y_on_scored_rows"] = float((nb.row_idx[:, 0] == torch.arange(rows)).float().mean())
        res["methods"] = "first neighbour pass only (k=10)"
    secs = time.perf_counter() - t0
    res.update(
        seconds=secs,
        full_run=rows >= n,
        peak_rss_gib=_peak_rss_kib() / 2**20,
        rss_after_inputs_gib=inputs / 2**20,
        rss_at_start_gib=base / 2**20,
        torch_threads=torch.get_num_threads(),
    )
    print(json.dumps(res))


def bench_big(n: int, dim: int, rows: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child-big", str(n), str(dim), str(rows), "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    res["under_4_gib"] = res["peak_rss_gib"] < 4.0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all)")
    ap.add_argument("--encode-texts", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--retrieval-n", type=int, default=20000)
    ap.add_argument("--big-n", type=int, default=200000)
    ap.add_argument("--big-dim", type=int, default=640)
    ap.add_argument("--big-rows", type=int, default=None, help="score only this many rows (default: all)")
    ap.add_argument("--child-big", nargs=3, type=int, metavar=("N", "DIM", "ROWS"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "align_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_big:
        _child_big(*args.child_big)
        return
    result: dict[str, Any] = {
        "command": "python benchmarks/align/bench_speed.py " + " ".join(sys.argv[1:]),
        "machine": {
            "torch_threads": args.threads,
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": _cpu_name(),
            "torch": torch.__version__,
        },
    }
    t0 = time.perf_counter()
    big_rows = args.big_n if args.big_rows is None else args.big_rows
    print(
        f"[1/3] {args.big_n} x {args.big_n} retrieval (D={args.big_dim}, {big_rows} rows scored), "
        "in a child process ...",
        flush=True,
    )
    result["retrieval_200k"] = bench_big(args.big_n, args.big_dim, big_rows, args.threads)
    print(json.dumps(result["retrieval_200k"], indent=1), flush=True)
    result["retrieval"] = []
    for threads in sorted({1, args.threads}):
        print(
            f"[2/3] retrieval N={args.retrieval_n} vs TranslationEvaluator, {threads} thread(s) ...",
            flush=True,
        )
        result["retrieval"].append(bench_translation_evaluator(args.retrieval_n, 384, threads))
        print(json.dumps(result["retrieval"][-1], indent=1), flush=True)
    torch.set_num_threads(args.threads)
    print("[3/3] encoding throughput vs sentence-transformers ...", flush=True)
    result["encode"] = bench_encode(args.encode_texts, args.batch_size, args.repeats)
    print(json.dumps(result["encode"], indent=1), flush=True)
    result["ratios"] = {
        "encode_speedup_vs_sentence_transformers": result["encode"]["speedup"],
        **{
            f"retrieval_speedup_vs_translation_evaluator_{r['torch_threads']}_threads": r["speedup"]
            for r in result["retrieval"]
        },
        **{
            f"retrieval_max_exact_speedup_{r['torch_threads']}_threads": r[
                "max_speedup_of_any_exact_fp32_method"
            ]
            for r in result["retrieval"]
        },
        "retrieval_accuracies_identical": all(r["identical"] for r in result["retrieval"]),
        "retrieval_200k_full_run": result["retrieval_200k"]["full_run"],
        "retrieval_200k_peak_rss_gib": result["retrieval_200k"]["peak_rss_gib"],
    }
    result["total_seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
    tmp.replace(out)
    print(json.dumps(result["ratios"], indent=1))
    print(f"wrote {out} in {result['total_seconds']:.0f} s")


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
