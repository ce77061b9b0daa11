"""mpm-align speed, side by side with sentence-transformers, in one run; ratios saved as JSON.

1. (run third) Encoding throughput: ``TransformersEncoder`` (mean pooling, last layer) vs ``SentenceTransformer.encode``
   on the same model (all-MiniLM-L6-v2 from the zoo), the same real phrases, the same batch size.
2. (run second) Bitext retrieval at N=20,000: ``mpm_align.retrieval_accuracy`` (cosine) vs sentence-transformers'
   ``TranslationEvaluator`` on the same embeddings (a stub model hands it the precomputed vectors), with
   the accuracies checked identical.
3. (run first, before the parent process allocates much) Peak memory of the 200,000 x 200,000 (D=640) retrieval, measured in a child process (``ru_maxrss``).
   ``--big-rows`` limits how many of the 200,000 query rows are scored (the memory peak is reached in the
   first chunk: inputs, their unit copies, one similarity chunk and the per-column top-k state, none of
   which grows with more rows); the full-run time is extrapolated linearly and labelled as such.

    python benchmarks/align/bench_speed.py
"""

from __future__ import annotations

import argparse
import json
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


def bench_translation_evaluator(n: int, dim: int, seed: int = 0) -> dict[str, Any]:
    try:
        from sentence_transformers.sentence_transformer.evaluation import TranslationEvaluator
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.evaluation import TranslationEvaluator
    from mpm_align import retrieval_accuracy

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
    st_acc = {
        "x2y": res[next(k for k in res if k.endswith("src2trg_accuracy"))],
        "y2x": res[next(k for k in res if k.endswith("trg2src_accuracy"))],
    }
    return {
        "n": n,
        "dim": dim,
        "accuracy_translation_evaluator": st_acc,
        "accuracy_mpm_align": ours,
        "identical": st_acc == ours,
        "seconds_translation_evaluator": t_st,
        "seconds_mpm_align": t_ours,
        "speedup": t_st / t_ours,
        "extra_peak_rss_gib_mpm_align": (hwm1 - hwm0) / 2**20,
        "extra_peak_rss_gib_translation_evaluator": (hwm2 - hwm1) / 2**20,
    }


def _peak_rss_kib() -> int:
    """This process's peak resident set (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _child_big(n: int, dim: int, rows: int, method: str) -> None:
    """Runs in a fresh process: allocate, retrieve, print JSON with the peak RSS."""
    from mpm_align.metrics import DEFAULT_K, _neighbours, _unit

    base = _peak_rss_kib()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g)
    y = x + 0.5 * torch.randn(n, dim, generator=g)
    inputs = _peak_rss_kib()
    t0 = time.perf_counter()
    with torch.inference_mode():
        yu = _unit(y)  # as _retrieve does: x is normalised chunk by chunk inside the pass
        k = DEFAULT_K[method]
        nb = _neighbours(x[:rows], yu, k, None)  # the first pass, over `rows` of the n queries
    secs = time.perf_counter() - t0
    hits = int((nb.row_idx[:, 0] == torch.arange(rows)).sum())
    peak = _peak_rss_kib()
    print(
        json.dumps(
            {
                "n": n,
                "dim": dim,
                "rows_scored": rows,
                "method_first_pass_k": k,
                "seconds": secs,
                "extrapolated_full_seconds": secs * n / rows,
                "cosine_top1_on_scored_rows": hits / rows,
                "peak_rss_gib": peak / 2**20,
                "rss_after_inputs_gib": inputs / 2**20,
                "rss_at_start_gib": base / 2**20,
            }
        )
    )


def bench_big(n: int, dim: int, rows: int, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child-big", str(n), str(dim), str(rows), "--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    res["under_4_gib"] = res["peak_rss_gib"] < 4.0
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--encode-texts", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--retrieval-n", type=int, default=20000)
    ap.add_argument("--big-n", type=int, default=200000)
    ap.add_argument("--big-dim", type=int, default=640)
    ap.add_argument("--big-rows", type=int, default=4000)
    ap.add_argument("--child-big", nargs=3, type=int, metavar=("N", "DIM", "ROWS"), help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "align_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_big:
        _child_big(*args.child_big, method="margin")
        return
    result: dict[str, Any] = {
        "command": "python benchmarks/align/bench_speed.py " + " ".join(sys.argv[1:]),
        "machine": {
            "torch_threads": args.threads,
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
    }
    t0 = time.perf_counter()
    print(
        f"[1/3] {args.big_n} x {args.big_n} retrieval memory (D={args.big_dim}), in a child process ...",
        flush=True,
    )
    result["retrieval_200k"] = bench_big(args.big_n, args.big_dim, args.big_rows, args.threads)
    print(json.dumps(result["retrieval_200k"], indent=1), flush=True)
    print(f"[2/3] retrieval N={args.retrieval_n} vs TranslationEvaluator ...", flush=True)
    result["retrieval"] = bench_translation_evaluator(args.retrieval_n, 384)
    print(json.dumps(result["retrieval"], indent=1), flush=True)
    print("[3/3] encoding throughput vs sentence-transformers ...", flush=True)
    result["encode"] = bench_encode(args.encode_texts, args.batch_size, args.repeats)
    print(json.dumps(result["encode"], indent=1), flush=True)
    result["ratios"] = {
        "encode_speedup_vs_sentence_transformers": result["encode"]["speedup"],
        "retrieval_speedup_vs_translation_evaluator": result["retrieval"]["speedup"],
        "retrieval_accuracies_identical": result["retrieval"]["identical"],
        "retrieval_200k_peak_rss_gib": result["retrieval_200k"]["peak_rss_gib"],
    }
    result["total_seconds"] = time.perf_counter() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps(result["ratios"], indent=1))
    print(f"wrote {out} in {result['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
